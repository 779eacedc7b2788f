"""glibc keeps what a job on a worker thread freed for the next job in the node's process, unless the operator
set glibc's own switches (scintnode/heap_reuse.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from scintnode.heap_reuse import keep_freed_memory_for_reuse
from tests.harness import serve_without_rules_log

# A worker thread makes and frees a job's worth of arrays (1-20 MB, 42 MB in all) six times over and prints
# the minor page faults of each round: each one is a fresh page the kernel had to hand over.
ROUNDS_ON_A_WORKER_THREAD = textwrap.dedent(
    """
    import resource, sys, threading
    import numpy as np
    from scintnode.heap_reuse import keep_freed_memory_for_reuse
    from scintnode.huge_pages import avoid_numpy_huge_pages

    avoid_numpy_huge_pages()
    print(keep_freed_memory_for_reuse() if sys.argv[1] == "tuned" else "untuned")
    faults = []

    def job():
        for _ in range(6):
            before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
            arrays = [np.ones(megabytes << 17) for megabytes in (1, 3, 6, 12, 20)]
            del arrays
            faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)

    worker = threading.Thread(target=job)
    worker.start()
    worker.join()
    print(*faults)
    """
)
PAGES_PER_ROUND = (42 << 20) // 4096


def _rounds(mode: str) -> tuple[str, list[int]]:
    result = subprocess.run(
        [sys.executable, "-c", ROUNDS_ON_A_WORKER_THREAD, mode], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    said, faults = result.stdout.splitlines()
    return said, [int(count) for count in faults.split()]


def test_a_worker_thread_reuses_what_it_freed() -> None:
    said, faults = _rounds("tuned")
    assert said == "True"
    assert faults[0] >= PAGES_PER_ROUND * 0.9, "the first round touches fresh memory"
    assert max(faults[1:]) < PAGES_PER_ROUND * 0.05, faults


def test_without_it_every_round_faults_its_pages_in_again() -> None:
    """The control: glibc's defaults hand a worker thread's freed heap back, which is why the node sets this."""
    _, faults = _rounds("untuned")
    assert min(faults[1:]) > PAGES_PER_ROUND * 0.9, faults


@pytest.mark.parametrize(
    "variable", [("MALLOC_TRIM_THRESHOLD_", "1048576"), ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")]
)
def test_the_operators_choice_stands(monkeypatch: pytest.MonkeyPatch, variable: tuple[str, str]) -> None:
    monkeypatch.setenv(*variable)
    assert not keep_freed_memory_for_reuse()


def test_scintnode_serve_sets_it_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    assert "malloc keeps freed memory for the next job" in serve_without_rules_log(tmp_path)
