#!/usr/bin/env bash
# Fetches, into .whl/ (ignored), the wheels the GPU checks need that the device machine's image lacks: its python3
# is 3.12 with a CUDA torch, numpy, OpenCV, Pillow, PyYAML, pytest, pytest-timeout and hypothesis, but no DICOM libraries,
# pydantic or SQLAlchemy (.library/device/KINDS.md). Versions are constraints.txt's; the decoders of compressed
# pixel data stay behind (the checks' synthetic studies are uncompressed). Run here, then scripts/device_check.sh
# there with `.whl` carried.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
rm -rf .whl && mkdir .whl
packages=(
  pydicom pynetdicom highdicom pyjpegls
  pydantic pydantic-core annotated-types typing-inspection
  sqlalchemy greenlet
)
"$python" -m pip download -q --disable-pip-version-check -c constraints.txt --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl "${packages[@]}"
du -sh .whl
