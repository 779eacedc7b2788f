#!/usr/bin/env bash
# Sets up scintnode on a fresh Debian machine: the Debian tools it uses (DCMTK as the modality, Orthanc as
# the PACS, dicom3tools' dciodvfy as the validator, Chromium for the ops-page test), a virtual environment
# with torch 2.13.0 (CPU) and the package itself, every Python package at the version constraints.txt pins
# (the versions the tests last passed with). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in storescu dciodvfy Orthanc chromium; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "Installing Debian packages (dcmtk, dicom3tools, orthanc, chromium) for: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    dcmtk dicom3tools orthanc chromium >/dev/null
fi

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null 2>&1 || python=python3
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
# torch first and pinned: an unpinned torch pulls gigabytes of CUDA packages
.venv/bin/pip install -q --disable-pip-version-check -c constraints.txt "torch==2.13.0"
.venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
echo "scintnode is set up: .venv/bin/scintnode --help"
