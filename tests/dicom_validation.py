"""Test helper: runs the real validators (dicom3tools dciodvfy, DCMTK dsrdump) on an emitted object.

Imported by every test that checks something scintnode writes or builds; never used by the node itself."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeAlias

import pytest
from pydicom.dataset import Dataset

# dciodvfy cannot evaluate "required if the body part is paired" and reports this on every Secondary
# Capture and Parametric Map (dicom-conventions.md §2.b); allow exactly this line, nothing broader.
LATERALITY_2C_LIMITATION = "Error - Missing attribute Type 2C Conditional Element=<Laterality> Module=<GeneralSeries>"

Target: TypeAlias = "Dataset | Path | str"


def dciodvfy_messages(target: Target) -> list[str]:
    """Every 'Error' and 'Warning' line dciodvfy prints for the object."""
    with _as_file(target) as path:
        result = subprocess.run(
            [_tool("dciodvfy", "dicom3tools"), str(path)], capture_output=True, text=True, check=False
        )
    output = result.stdout + result.stderr
    if "Abort" in output:
        pytest.fail(f"dciodvfy could not read {path}:\n{output}")
    return [line.strip() for line in output.splitlines() if line.startswith(("Error", "Warning"))]


def dciodvfy_errors(target: Target, *, allowed: Collection[str] = ()) -> list[str]:
    """The 'Error' lines of dciodvfy, minus those listed verbatim in ``allowed``."""
    return [m for m in dciodvfy_messages(target) if m.startswith("Error") and m not in allowed]


def assert_dciodvfy_clean(target: Target, *, allowed_errors: Collection[str] = ()) -> None:
    """Fail with dciodvfy's own words if it reports any error not listed verbatim in ``allowed_errors``."""
    errors = dciodvfy_errors(target, allowed=allowed_errors)
    assert not errors, "dciodvfy errors:\n" + "\n".join(errors)


def assert_dsrdump_parses(target: Target) -> str:
    """Fail unless DCMTK dsrdump reads the SR tree with no warning or error; returns the dump."""
    with _as_file(target) as path:
        result = subprocess.run(
            [_tool("dsrdump", "dcmtk"), "+Pt", "+Pu", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
    problems = [line for line in result.stderr.splitlines() if line.startswith(("W:", "E:", "F:"))]
    assert result.returncode == 0 and not problems, f"dsrdump rc={result.returncode}:\n" + "\n".join(
        problems or [result.stderr]
    )
    return result.stdout


def _tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (Debian package {package}); the validation tests need it")
    return found


@contextmanager
def _as_file(target: Target) -> Iterator[Path]:
    if not isinstance(target, Dataset):
        yield Path(target)
        return
    with tempfile.TemporaryDirectory(prefix="scintnode-validate-") as folder:
        path = Path(folder) / "object.dcm"
        target.save_as(path, enforce_file_format=True)
        yield path
