"""Sending files as a modality does: DCMTK `storescu` when installed, else a pynetdicom SCU.

Used by `scintnode demo`, the end-to-end tests and the benchmarks, never by the node itself."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE

from scintnode.requestor import associate


class SendFailed(RuntimeError):
    pass


def send_files(
    files: Sequence[Path],
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str = "SCINTCAM",
    prefer_dcmtk: bool = True,
) -> None:
    """Send all files over one association; raise SendFailed unless every one was stored."""
    storescu = shutil.which("storescu")
    if prefer_dcmtk and storescu:
        env = {**os.environ, "TCP_NODELAY": "1"}  # DCMTK stalls ~40 ms per instance without it
        result = subprocess.run(
            [storescu, "-R", "-aet", calling_ae, "-aec", called_ae, host, str(port), *map(str, files)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
            check=False,
        )
        if result.returncode != 0:
            raise SendFailed(f"storescu exited {result.returncode}: {result.stderr.strip()[-1000:]}")
        return
    datasets = [dcmread(path) for path in files]
    ae = AE(ae_title=calling_ae)
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class)
    assoc, rejection = associate(ae, host, port, ae_title=called_ae)
    if rejection is not None:
        raise SendFailed(f"{called_ae}@{host}:{port} rejected the association: {rejection.reason_str}")
    if not assoc.is_established:
        raise SendFailed(f"association to {called_ae}@{host}:{port} not established")
    try:
        for path, ds in zip(files, datasets, strict=True):
            status = assoc.send_c_store(ds)
            code = int(getattr(status, "Status", -1))
            if code not in (0x0000, 0xB000, 0xB006, 0xB007):
                raise SendFailed(f"{path}: C-STORE status 0x{code:04X}")
    finally:
        assoc.release()
