"""numpy's transparent huge pages are off in the node's process unless the operator set numpy's variable
(scintnode/huge_pages.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from numpy._core import multiarray

from scintnode.huge_pages import avoid_numpy_huge_pages
from tests.harness import serve_without_rules_log

OFF_LINE = "numpy's transparent huge pages are off in this process"


@pytest.fixture
def numpy_setting_restored() -> object:
    previous = multiarray._set_madvise_hugepage(True)  # type: ignore[attr-defined]
    yield
    multiarray._set_madvise_hugepage(previous)  # type: ignore[attr-defined]


@pytest.mark.usefixtures("numpy_setting_restored")
def test_huge_pages_are_turned_off_unless_the_variable_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NUMPY_MADVISE_HUGEPAGE", raising=False)
    assert avoid_numpy_huge_pages()
    assert multiarray._set_madvise_hugepage(True) is False, "numpy was told not to ask for huge pages"  # type: ignore[attr-defined]
    monkeypatch.setenv("NUMPY_MADVISE_HUGEPAGE", "1")
    assert not avoid_numpy_huge_pages()
    assert multiarray._set_madvise_hugepage(True) is True, "the operator's choice stands"  # type: ignore[attr-defined]


@pytest.mark.parametrize("variable", [None, "1"])
def test_scintnode_serve_turns_them_off_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str | None
) -> None:
    if variable is None:
        monkeypatch.delenv("NUMPY_MADVISE_HUGEPAGE", raising=False)
    else:
        monkeypatch.setenv("NUMPY_MADVISE_HUGEPAGE", variable)
    assert (OFF_LINE in serve_without_rules_log(tmp_path)) is (variable is None)
