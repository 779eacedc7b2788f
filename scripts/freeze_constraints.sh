#!/usr/bin/env bash
# Rewrites constraints.txt: the exact version of every package that `scripts/setup.sh` installs, resolved
# afresh in a throw-away virtual environment. Run it to take newer releases on purpose, then run the tests
# (`.ci/run`) before committing the new file; setup.sh installs only these versions, so a release made
# after the last passing run cannot change what CI or a site installs.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null 2>&1 || python=python3
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"$python" -m venv "$scratch/venv"
"$scratch/venv/bin/pip" install -q --disable-pip-version-check "torch==2.13.0"
"$scratch/venv/bin/pip" install -q --disable-pip-version-check -e ".[dev]"
{
  echo "# The versions scintnode's tests last passed with; scripts/setup.sh and docker/Dockerfile install these."
  echo "# Made by scripts/freeze_constraints.sh (python $("$scratch/venv/bin/python" -c 'import platform; print(platform.python_version())')); refresh only together with a passing .ci/run."
  # torch without its local label (+cpu, +cu126, ...), so the CPU and the CUDA builds both satisfy it
  "$scratch/venv/bin/pip" freeze --exclude-editable --disable-pip-version-check | sed -E 's/^(torch==[^+]+)\+.*/\1/'
} >constraints.txt
echo "constraints.txt: $(grep -c '==' constraints.txt) pinned packages"
