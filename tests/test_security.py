"""Nobody unknown gets in, nothing in the rules runs, nothing leaks: allow-list with addresses, DICOM TLS with
client certificates (a throwaway CA made here), inert rules, owner-only spool files, names kept out of logs."""

from __future__ import annotations

import datetime as dt
import os
import re
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE
from sqlalchemy import func, select

from scintnode.config import ConfigError, NodeSettings, load_settings
from scintnode.db import Database, Instance
from scintnode.phantoms import nm
from scintnode.receive import Receiver
from scintnode.receive_header import DATASET_MISMATCH
from scintnode.requestor import associate
from scintnode.route import RuleError, load_rule_set
from scintnode.security import CallerPolicy
from scintnode.spool import Spool
from tests.test_reliability_input import send_raw, synthetic_nm, truncated

NM_STORAGE = "1.2.840.10008.5.1.4.1.1.20"


def nm_image(folder: Path, name: str = "SYNTHETIC^SECURITY", patient_id: str = "SYNSEC0001") -> Path:
    patient = nm.Patient(patient_id, name, dt.date(1970, 1, 1), "F")
    start = dt.datetime(2026, 3, 2, 9, 0)
    study = nm.StudyInfo(generate_uid(), start, accession="SYNSEC", description="security (synthetic)")
    ds = nm.build_nm_image(
        np.random.default_rng(3).poisson(30, size=(1, 32, 32)).astype(np.uint16),
        patient=patient,
        study=study,
        series_uid=generate_uid(),
        series_number=1,
        series_description="THYROID ANT (synthetic)",
        agent="pertechnetate",
        views=("anterior",),
        acquired=start + dt.timedelta(minutes=20),
        injected=start,
        dose_mbq=80.0,
        pixel_spacing_mm=(2.0, 2.0),
        body_part="THYROID",
    )
    return nm.save(ds, folder / f"{generate_uid()}.dcm")


def start_receiver(tmp_path: Path, settings: NodeSettings) -> Receiver:
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    db.create_schema()
    receiver = Receiver(db, Spool(tmp_path / "spool"), settings)
    receiver.start()
    return receiver


def store(port: int, path: Path, calling: str, tls: tuple[ssl.SSLContext, str] | None = None) -> int | str:
    """The C-STORE status, or why no association was established."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.network_timeout = 10
    ae.add_requested_context(NM_STORAGE)
    assoc, rejection = associate(ae, "127.0.0.1", port, ae_title="SCINTNODE", tls_args=tls)
    if rejection is not None:
        return "rejected"
    if not assoc.is_established:
        return "no association"
    try:
        return int(assoc.send_c_store(dcmread(path)).Status)
    finally:
        assoc.release()


# -- allow-list with addresses ---------------------------------------------------------------------


def test_caller_policy_matches_title_and_address() -> None:
    settings = NodeSettings(
        allowed_callers=[
            "ANYWHERE",
            {"ae_title": "LOCALCAM", "address": "127.0.0.0/8"},
            {"ae_title": "WARDCAM", "address": "10.1.2.0/24"},
            {"ae_title": "V6CAM", "address": "fd00::/64"},
        ]
    )
    policy = CallerPolicy(settings.allowed_callers)
    assert policy.permits("ANYWHERE", "192.0.2.1")
    assert policy.permits("LOCALCAM ", "127.0.0.1") and policy.permits("LOCALCAM", "::ffff:127.0.0.5")
    assert not policy.permits("LOCALCAM", "10.1.2.3")
    assert policy.permits("WARDCAM", "10.1.2.200") and not policy.permits("WARDCAM", "10.1.3.1")
    assert policy.permits("V6CAM", "fd00::7") and not policy.permits("V6CAM", "10.1.2.3")
    assert not policy.permits("STRANGER", "127.0.0.1")
    assert CallerPolicy(None).permits("ANYONE", "192.0.2.1")
    only_ward = CallerPolicy(
        NodeSettings(allowed_callers=[{"ae_title": "W", "address": "10.1.2.0/24"}]).allowed_callers
    )
    assert not only_ward.permits_address("127.0.0.1") and only_ward.permits_address("10.1.2.9")


def test_bad_allow_list_entries_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="not an IP address or network"):
        NodeSettings(allowed_callers=[{"ae_title": "CAM", "address": "10.0.0.0/33"}])
    config = tmp_path / "node.yaml"
    config.write_text("node:\n  allowed_callers:\n    - {ae_title: CAM, adress: 10.0.0.1}\n")
    with pytest.raises(ConfigError, match="adress"):
        load_settings(config)


def test_allow_list_with_addresses_is_enforced_at_association_request(tmp_path: Path) -> None:
    settings = NodeSettings(
        bind_address="127.0.0.1",
        port=0,
        allowed_callers=[
            "PLAINCAM",
            {"ae_title": "LOCALCAM", "address": "127.0.0.1"},
            {"ae_title": "FARCAM", "address": "10.9.8.0/24"},
        ],
    )
    receiver = start_receiver(tmp_path, settings)
    try:
        image = nm_image(tmp_path)
        assert store(receiver.port, image, "PLAINCAM") == 0x0000
        assert store(receiver.port, nm_image(tmp_path), "LOCALCAM") == 0x0000
        assert store(receiver.port, nm_image(tmp_path), "FARCAM") == "rejected"  # right title, wrong network
        assert store(receiver.port, nm_image(tmp_path), "STRANGER") == "rejected"
        with receiver.db.session() as session:
            assert session.scalar(select(func.count()).select_from(Instance)) == 2
    finally:
        receiver.stop()


# -- DICOM TLS -------------------------------------------------------------------------------------


class Pki:
    """A throwaway CA with a server certificate and client certificates, made with the openssl tool."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._ca("ca", "scintnode test CA")
        self._ca("other-ca", "an unknown CA")

    def _openssl(self, *args: str) -> None:
        subprocess.run(["openssl", *args], cwd=self.folder, capture_output=True, timeout=60, check=True)

    def _ca(self, name: str, subject: str) -> None:
        self._openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
            "-subj", f"/CN={subject}", "-keyout", f"{name}.key", "-out", f"{name}.pem",
        )  # fmt: skip

    def issue(self, name: str, *, by_unknown_ca: bool = False, server: bool = False) -> tuple[Path, Path]:
        ca = "other-ca" if by_unknown_ca else "ca"
        self._openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr",
        )  # fmt: skip
        extensions = self.folder / f"{name}.ext"
        extensions.write_text("subjectAltName=DNS:localhost\n" if server else "basicConstraints=CA:FALSE\n")
        self._openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "1", "-extfile", extensions.name, "-out", f"{name}.crt",
        )  # fmt: skip
        return self.folder / f"{name}.crt", self.folder / f"{name}.key"

    def client_context(self, cert: tuple[Path, Path] | None) -> tuple[ssl.SSLContext, str]:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.folder / "ca.pem"))
        if cert is not None:
            context.load_cert_chain(*map(str, cert))
        return context, "localhost"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    folder = tmp_path / "pki"
    folder.mkdir()
    return Pki(folder)


@pytest.fixture
def tls_receiver(tmp_path: Path, pki: Pki) -> Iterator[Receiver]:
    certificate, key = pki.issue("scintnode", server=True)
    settings = NodeSettings(
        bind_address="127.0.0.1",
        port=0,
        allowed_callers=["TLSCAM"],
        network_timeout_seconds=10,
        tls={
            "certificate": certificate,
            "key": key,
            "client_ca": pki.folder / "ca.pem",
            "handshake_timeout_seconds": 2,
        },
    )
    receiver = start_receiver(tmp_path, settings)
    yield receiver
    receiver.stop()


def test_tls_with_a_client_certificate_from_the_ca_is_served(tls_receiver: Receiver, pki: Pki, tmp_path: Path) -> None:
    context = pki.client_context(pki.issue("gammacam1"))
    assert store(tls_receiver.port, nm_image(tmp_path), "TLSCAM", tls=context) == 0x0000


def test_tls_refuses_an_unknown_ca_no_certificate_and_plain_dicom(
    tls_receiver: Receiver, pki: Pki, tmp_path: Path
) -> None:
    image = nm_image(tmp_path)
    assert (
        store(tls_receiver.port, image, "TLSCAM", tls=pki.client_context(pki.issue("rogue", by_unknown_ca=True))) != 0
    )
    assert store(tls_receiver.port, image, "TLSCAM", tls=pki.client_context(None)) != 0
    assert store(tls_receiver.port, image, "TLSCAM") != 0  # plain DICOM on the TLS port
    with tls_receiver.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 0
    # and after all that the node still serves a good client
    assert store(tls_receiver.port, image, "TLSCAM", tls=pki.client_context(pki.issue("gammacam2"))) == 0x0000


def test_a_silent_tls_client_does_not_block_others(tls_receiver: Receiver, pki: Pki, tmp_path: Path) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", tls_receiver.port)):  # connects, never says hello
        context = pki.client_context(pki.issue("gammacam3"))
        assert store(tls_receiver.port, nm_image(tmp_path), "TLSCAM", tls=context) == 0x0000


def test_tls_paths_in_a_config_file_are_relative_to_it(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(
        yaml.safe_dump({"node": {"tls": {"certificate": "c.pem", "key": "k.pem", "client_ca": "ca.pem"}}})
    )
    tls = load_settings(config).node.tls
    assert tls is not None and tls.certificate == tmp_path / "c.pem" and tls.client_ca == tmp_path / "ca.pem"


# -- rules are data --------------------------------------------------------------------------------


def test_yaml_tags_that_would_run_code_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "evil.yaml").write_text(
        "rules:\n"
        "  - name: evil\n"
        "    network: input-check\n"
        "    outputs: [sr]\n"
        "    destinations: [pacs]\n"
        f"    when: !!python/object/apply:os.system ['touch {marker}']\n"
    )
    with pytest.raises(RuleError):
        load_rule_set(rules)
    config = tmp_path / "node.yaml"
    config.write_text(f"node: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError):
        load_settings(config)
    assert not marker.exists()


def test_expression_looking_strings_are_compared_as_text(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    rules = tmp_path / "rules"
    rules.mkdir()
    payload = f"__import__('os').system('touch {marker}')"
    (rules / "inert.yaml").write_text(
        yaml.safe_dump(
            {
                "rules": [
                    {
                        "name": "inert",
                        "network": "input-check",
                        "outputs": ["sr"],
                        "destinations": ["pacs"],
                        "when": {
                            "any": [
                                {"attribute": "SeriesDescription", "equals": payload},
                                {"attribute": "SeriesDescription", "matches": "{{ 7*7 }}|${jndi:x}|`id`"},
                                {"attribute": "SeriesDescription", "contains": "$(touch " + str(marker) + ")"},
                            ]
                        },
                    }
                ]
            }
        )
    )
    rule_set = load_rule_set(rules)
    header = dcmread(nm_image(tmp_path), stop_before_pixels=True)
    header.SeriesDescription = payload
    assert [d.rule.name for d in rule_set.evaluate(header) if d.fires] == ["inert"]  # equal as text, no more
    header.SeriesDescription = "49"
    assert not any(d.fires for d in rule_set.evaluate(header))
    assert not marker.exists()


# -- files and logs --------------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="reading as another user needs root to switch users")
def test_spool_and_index_cannot_be_read_by_another_user(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    receiver = start_receiver(tmp_path, NodeSettings(bind_address="127.0.0.1", port=0))
    try:
        assert store(receiver.port, nm_image(tmp_path), "ANYCAM") == 0x0000
    finally:
        receiver.stop()
    files = list((tmp_path / "spool" / "inputs").rglob("*.dcm"))  # the instance, and the free slots (empty)
    stored = [p for p in files if p.stat().st_size]
    assert len(stored) == 1 and all(p.stat().st_mode & 0o077 == 0 for p in files)
    for path in (stored[0], tmp_path / "spool" / "inputs"):
        result = subprocess.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "cat" if path.is_file() else "ls",
                str(path),
            ],
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert result.returncode != 0 and b"Permission denied" in result.stderr, path


def test_no_patient_names_or_ids_in_the_log_at_info(tmp_path: Path) -> None:
    names = ["SYNTHETIC^LEAKCHECK^ALPHA", "SÝNTHETIC^ŁEAKCHECK", "SYNTHETIC^" + "LONGNAME" * 12]
    ids = ["SYNLEAK00017", "SYNLEAK00042", "SYNLEAK\\BACKSLASH"]
    folder = tmp_path / "studies"
    folder.mkdir()
    files = [nm_image(folder, name, pid) for name, pid in zip(names, ids, strict=True)]
    broken = truncated(synthetic_nm(names[0]))  # a refused instance, logged
    config = tmp_path / "node.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "node": {"port": 0, "bind_address": "127.0.0.1"},
                "storage": {"root": "spool"},
                "http": {"enabled": False},
                "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 9, "timeout_seconds": 1}},
                "dispatch": {"poll_seconds": 0.2, "base_delay_seconds": 0.2},
            }
        )
    )
    node = subprocess.Popen(
        [sys.executable, "-m", "scintnode", "serve", "--config", str(config), "--log-level", "INFO"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert node.stdout is not None
        port = next(int(m.group(1)) for line in node.stdout if (m := re.search(r"on port (\d+)", line)))
        for path in [*files, files[0]]:  # a duplicate too
            assert store(port, path, "LEAKCAM") == 0x0000
        assert send_raw(port, broken, folder) == DATASET_MISMATCH
        db = Database(f"sqlite:///{tmp_path / 'spool' / 'index.db'}")
        deadline = dt.datetime.now() + dt.timedelta(seconds=60)
        while dt.datetime.now() < deadline:
            with db.session() as session:
                if session.scalar(select(func.count()).where(Instance.routed_at.is_not(None))) == len(files):
                    break
            time.sleep(0.1)
        db.dispose()
    finally:
        node.terminate()
        output, _ = node.communicate(timeout=60)
    assert "rejected instance" in output and "association" in output  # the log did say things
    for secret in [*names, *ids, "LEAKCHECK", "SYNLEAK"]:
        assert secret not in output, secret
