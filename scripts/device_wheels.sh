#!/usr/bin/env bash
# Fetches, into .whl/ (ignored), the wheels the GPU checks need that the device machine's image lacks: its python3
# is 3.12 with a CUDA torch, numpy, OpenCV, Pillow, PyYAML, pytest, pytest-timeout and hypothesis, but no DICOM libraries,
# pydantic or SQLAlchemy (.library/device/KINDS.md). Versions are this project's; the decoders of compressed
# pixel data stay behind (the checks' synthetic studies are uncompressed). Run here, then scripts/device_check.sh
# there with `.whl` carried.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
rm -rf .whl && mkdir .whl
packages=(
  pydicom==3.0.2 pynetdicom==3.0.4 highdicom==0.28.2 pyjpegls==1.5.1
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  sqlalchemy==2.1.9 greenlet==3.5.6
)
"$python" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl "${packages[@]}"
du -sh .whl
