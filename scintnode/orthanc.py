"""A local Orthanc PACS (the Debian package) started on free ports, for `scintnode demo` and the tests.

Orthanc is the PACS stand-in: the node's results are C-STOREd to it and read back through its REST API."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ORTHANC_CANDIDATES = ("Orthanc", "/usr/sbin/Orthanc")


class OrthancUnavailable(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_orthanc() -> str:
    for candidate in ORTHANC_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    raise OrthancUnavailable(
        "Orthanc not found: install the Debian package (`apt-get install orthanc`) — the quick start does this"
    )


@dataclass(frozen=True)
class SeriesInPacs:
    orthanc_id: str
    modality: str
    series_uid: str
    description: str
    instance_ids: tuple[str, ...]


class OrthancServer:
    """An Orthanc process with its own storage under `workdir`; use as a context manager."""

    def __init__(self, workdir: Path, ae_title: str = "ORTHANC", stable_age_seconds: int | None = None) -> None:
        """`stable_age_seconds`: Orthanc's StableAge, the quiet period after which it calls a study stable
        (None: Orthanc's default, 60 s)."""
        self.workdir = workdir
        self.ae_title = ae_title
        self.stable_age_seconds = stable_age_seconds
        self.dicom_port = free_port()
        self.http_port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 60.0) -> None:
        binary = find_orthanc()
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "scintnode-test-pacs",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowStore": True,
            "StorageCompression": False,
            "Plugins": [],
        }
        if self.stable_age_seconds is not None:
            config["StableAge"] = self.stable_age_seconds
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        log_path = self.workdir / "orthanc.log"
        env = {**os.environ, "TCP_NODELAY": "1"}  # without it DCMTK-based peers stall ~40 ms per instance
        with log_path.open("wb") as log_file:
            self._process = subprocess.Popen(
                [binary, str(config_path)], stdout=log_file, stderr=subprocess.STDOUT, env=env
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise OrthancUnavailable(f"Orthanc exited at start; see {log_path}:\n{log_path.read_text()[-2000:]}")
            try:
                self.get("/system")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)
        self.stop()
        raise OrthancUnavailable(f"Orthanc did not answer on {self.url} within {timeout} s; see {log_path}")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def __enter__(self) -> OrthancServer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- REST ----------------------------------------------------------------------------------------
    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())

    def post(self, path: str, body: Any) -> Any:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def contributing_model(self, instance_id: str, manufacturer: str) -> str:
        """Manufacturer's Model Name of the instance's Contributing Equipment item from `manufacturer`, ""
        without one.

        A result names the algorithm that made it there (IHE AIR), beside the camera's and highdicom's items,
        so results of two networks in one study can be told apart."""
        items = f"/instances/{instance_id}/content/0018-a001"
        listing = self._text(items)  # the items' indices, as JSON
        for index in range(len(json.loads(listing)) if listing is not None else 0):
            if self._text(f"{items}/{index}/0008-0070") == manufacturer:
                return self._text(f"{items}/{index}/0008-1090") or ""
        return ""

    def _text(self, path: str) -> str | None:
        """The content at `path`, without DICOM padding; None where Orthanc has none (404)."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as response:
                return bytes(response.read()).decode("ascii", "replace").strip(" \0")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def instance_file(self, orthanc_id: str) -> bytes:
        with urllib.request.urlopen(f"{self.url}/instances/{orthanc_id}/file", timeout=10) as response:
            data: bytes = response.read()
            return data

    def series_of_study(self, study_uid: str) -> list[SeriesInPacs]:
        found = self.post("/tools/find", {"Level": "Series", "Query": {"StudyInstanceUID": study_uid}, "Expand": True})
        return [
            SeriesInPacs(
                orthanc_id=item["ID"],
                modality=item["MainDicomTags"].get("Modality", ""),
                series_uid=item["MainDicomTags"].get("SeriesInstanceUID", ""),
                description=item["MainDicomTags"].get("SeriesDescription", ""),
                instance_ids=tuple(item.get("Instances", [])),
            )
            for item in found
        ]
