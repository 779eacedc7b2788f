"""What many tests need to drive a node as a site would: synthetic planar scans, polling, a node process,
results posted to a PACS."""

from __future__ import annotations

import datetime as dt
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import numpy as np
import yaml
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from scintnode.orthanc import OrthancServer
from scintnode.phantoms import nm
from scintnode.write.sr_content import MANUFACTURER

DAY0 = dt.datetime(2026, 3, 2, 9, 0)


def wait_for(condition: Callable[[], object], timeout: float = 60, poke: Callable[[], None] | None = None) -> None:
    """Poll `condition` until it is true (calling `poke` between tries, e.g. to wake a node)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if poke is not None:
            poke()
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout} s")


def planar_scan(
    folder: Path,
    patient_id: str,
    *,
    agent: str = "pertechnetate",
    minutes: float = 20,
    description: str = "THYROID ANT",
    body_part: str = "THYROID",
    study: nm.StudyInfo | None = None,
    injected: dt.datetime | None = None,
    size: int = 64,
) -> Path:
    """A synthetic single-frame anterior NM image of `patient_id` (names are SYNTHETIC^...)."""
    patient = nm.Patient(patient_id, f"SYNTHETIC^SCAN^{patient_id}", dt.date(1970, 1, 1), "F")
    study = study or nm.StudyInfo(generate_uid(), DAY0, accession=patient_id[-8:], description="(synthetic)")
    injected = injected or study.start
    seed = sum(map(ord, patient_id + description)) + int(minutes)
    counts = np.random.default_rng(seed).poisson(40, size=(1, size, size)).astype(np.uint16)
    ds = nm.build_nm_image(
        counts,
        patient=patient,
        study=study,
        series_uid=generate_uid(),
        series_number=1 + int(minutes) % 90,
        series_description=f"{description} (synthetic)",
        agent=agent,
        views=("anterior",),
        acquired=injected + dt.timedelta(minutes=minutes),
        injected=injected,
        dose_mbq=100.0,
        pixel_spacing_mm=(2.0, 2.0),
        body_part=body_part,
    )
    return nm.save(ds, folder / f"{patient_id}-{ds.SOPInstanceUID[-12:]}.dcm")


def start_node_process(config: Path, log: Path, timeout: float = 120) -> tuple[subprocess.Popen[bytes], int]:
    """`scintnode serve --config` as its own process, logging to `log` (a pipe nobody reads would fill and
    block the node); returns the process and the DICOM port it reports."""
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "scintnode", "serve", "--config", str(config)], stdout=sink, stderr=subprocess.STDOUT
        )
    match = wait_for_log(process, log, r"scintnode listening as \S+ on port (\d+)", timeout)
    return process, int(match.group(1))


def serve_without_rules_log(root: Path) -> str:
    """The log of `scintnode serve` started over `root` with no rules (the node only stores) and stopped with
    SIGTERM, which it must answer with exit status 0."""
    (root / "rules").mkdir()
    config = root / "scintnode.yaml"
    settings = {
        "node": {"port": 0, "bind_address": "127.0.0.1"},
        "storage": {"root": str(root / "node")},
        "rules_dir": str(root / "rules"),
        "http": {"enabled": False},
    }
    config.write_text(yaml.safe_dump(settings))
    log = root / "node.log"
    process, _port = start_node_process(config, log)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    return log.read_text()


def wait_for_log(process: subprocess.Popen[bytes], log: Path, pattern: str, timeout: float = 120) -> re.Match[str]:
    """The first match of `pattern` in the node's log; AssertionError (the node killed) if the node exits or
    `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, log.read_text(errors="replace"))
        if match:
            return match
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise AssertionError(f"the node exited before its log showed {pattern!r}:\n{tail}")
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"the node's log did not show {pattern!r} in time")


def upload_result(
    pacs: OrthancServer, study_uid: str, modality: str, sop_class: str, model: str = "", camera_maker: str = "Maker"
) -> str:
    """A bare result instance of `modality` in `study_uid`, posted to Orthanc's REST API; its Orthanc id.
    `model` names the network in scintnode's Contributing Equipment item, between a camera's (from
    `camera_maker`; "" leaves the camera's Manufacturer out) and highdicom's, as in the node's results."""
    ds = Dataset()
    ds.PatientID, ds.PatientName = "TTR-WATCH", "Watcher^Test"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study_uid, generate_uid(), generate_uid()
    ds.SOPClassUID, ds.Modality = sop_class, modality
    if model:
        camera, ours, library = Dataset(), Dataset(), Dataset()
        camera.ManufacturerModelName = "camera-model"
        if camera_maker:
            camera.Manufacturer = camera_maker
        ours.Manufacturer, ours.ManufacturerModelName = MANUFACTURER, model
        library.Manufacturer, library.ManufacturerModelName = "Highdicom open-source contributors", "highdicom"
        ds.ContributingEquipmentSequence = [camera, ours, library]
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    request = urllib.request.Request(f"{pacs.url}/instances", data=buffer.getvalue(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        return str(json.loads(response.read())["ID"])
