"""constraints.txt pins what scripts/setup.sh and the Dockerfile install: it must agree with pyproject.toml,
and the environment the tests run in must be the pinned one, or a passing run says nothing about what CI and
a site install."""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def pins() -> dict[str, Version]:
    pinned: dict[str, Version] = {}
    for number, raw in enumerate((ROOT / "constraints.txt").read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        requirement = Requirement(line)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", (
            f"constraints.txt line {number} must pin one exact version (name==version): {line!r}"
        )
        name = canonicalize_name(requirement.name)
        assert name not in pinned, f"constraints.txt pins {name} twice"
        pinned[name] = Version(specifiers[0].version)
    return pinned


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = [*project["dependencies"], *(line for extra in project["optional-dependencies"].values() for line in extra)]
    return [Requirement(line) for line in lines]


def test_every_declared_requirement_is_pinned_to_a_version_it_accepts() -> None:
    pinned = pins()
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement} in pyproject.toml is not pinned: run scripts/freeze_constraints.sh"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"pyproject.toml asks for {requirement} but constraints.txt pins {pinned[name]}: "
            "run scripts/freeze_constraints.sh, then the tests"
        )


def test_torch_is_pinned_without_a_local_label() -> None:
    # a CUDA build (2.13.0+cu126) and the CPU build (2.13.0+cpu) must both satisfy the pin
    assert pins()["torch"] == Version("2.13.0")


def test_the_tests_run_on_the_pinned_versions() -> None:
    pinned = pins()
    differing = []
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        try:
            installed = Version(version(name))
        except PackageNotFoundError:
            differing.append(f"{name} not installed (pinned {pinned[name]})")
            continue
        if Version(installed.public) != pinned[name]:
            differing.append(f"{name} {installed} (pinned {pinned[name]})")
    assert not differing, "installed versions differ from constraints.txt; run scripts/setup.sh: " + "; ".join(
        differing
    )
