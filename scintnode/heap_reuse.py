"""glibc's malloc told to keep freed memory for the next job in the node's process, unless the operator chose
otherwise.

The node's jobs run on its pipeline thread, not the main thread. glibc gives such a thread an arena of its own
made of 64 MB heaps, and hands an emptied heap's pages back to the kernel at once, so each job's arrays touch
fresh pages again. On the demo CT job on a worker thread that cost 45,000-59,000 minor page faults and
86-104 ms of kernel time a job with glibc's defaults, against 1,500-3,700 faults and 10-12 ms with the
settings below: the job went 457-468 to 391-397 ms, what the same job takes on the main thread
(benchmarks/RESULTS.md). The settings are glibc's own ceilings for the thresholds it otherwise slides itself:
blocks of 32 MB or more are still mapped and unmapped one by one, and an arena keeps at most 64 MB of free
memory at its top. Fixing them keeps what a job freed for the next job, so an idle node holds about its
largest job's working memory under 32 MB a block.

glibc's own switches are GLIBC_TUNABLES (glibc.malloc.mmap_threshold, glibc.malloc.trim_threshold) and
MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_; when the operator set any of them, their choice stands."""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
TRIM_THRESHOLD_BYTES = 64 << 20  # twice that, glibc's ceiling for the trim threshold it slides

_OPERATOR_SWITCHES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_OPERATOR_TUNABLES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold")


def keep_freed_memory_for_reuse() -> bool:
    """Fix glibc's mmap and trim thresholds at their ceilings, unless the operator set either or the C library is
    not glibc; True when this set them."""
    if any(name in os.environ for name in _OPERATOR_SWITCHES):
        return False
    if any(tunable in os.environ.get("GLIBC_TUNABLES", "") for tunable in _OPERATOR_TUNABLES):
        return False
    if not _running_on_glibc():
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )


def _running_on_glibc() -> bool:
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError):  # the name is unknown to this C library (musl, for one)
        return False
