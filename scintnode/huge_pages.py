"""numpy's transparent huge pages, turned off in the node's process unless the operator chose otherwise.

numpy asks the kernel for huge pages (`madvise(MADV_HUGEPAGE)`) for every array of 4 MB or more. A CT job
makes and frees arrays of 40 to 200 MB many times over: the decoded phases, the network's grid, the
probability back on 200 slices of 512x512. On the development machine, a VM where touching fresh memory
is slow, every fresh huge page cost more in the kernel than it saved: with huge pages, a clinical-size CT
job in the node took 4.5-5.0 s, without them 3.8-4.2 s (benchmarks/RESULTS.md); the kernel counted no
compaction stall, so the cost was in getting fresh memory. Latency-bound services often turn transparent
huge pages off too, since a huge page fault can also stall on compaction.
numpy's own switch is the environment variable NUMPY_MADVISE_HUGEPAGE; when it is set, the operator's
choice stands."""

from __future__ import annotations

import os

from numpy._core import multiarray


def avoid_numpy_huge_pages() -> bool:
    """Stop numpy asking for huge pages, unless NUMPY_MADVISE_HUGEPAGE is set; True when this turned them off."""
    if "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        return False
    multiarray._set_madvise_hugepage(False)  # type: ignore[attr-defined]  # what numpy's import calls for the variable
    return True
