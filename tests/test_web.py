"""The node's HTTP side: health, Prometheus counters that move, and the ops page in a real headless Chromium."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from scintnode.config import DEFAULT_RULES_DIR, Settings
from scintnode.db import Delivery, Event, Job, Output
from scintnode.node import Node
from scintnode.orthanc import free_port
from scintnode.storescu import send_files
from tests.harness import planar_scan, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    active = tmp_path / "rules"
    shutil.copytree(DEFAULT_RULES_DIR, active)
    candidate = tmp_path / "candidate"
    shutil.copytree(DEFAULT_RULES_DIR, candidate)
    (candidate / "thyroid.yaml").unlink()  # the candidate would stop routing thyroid scans
    settings = Settings.model_validate(
        {
            "node": {"port": 0, "bind_address": "127.0.0.1"},
            "storage": {"root": str(tmp_path / "spool")},
            "http": {"port": 0},
            "rules_dir": str(active),
            "shadow_rules_dir": str(candidate),
            "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": free_port()}},
            "dispatch": {"poll_seconds": 60},
        }
    )
    running = Node(settings)
    running.start()
    yield running
    running.stop()


def get(node: Node, path: str) -> tuple[int, str]:
    assert node.web is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{node.web.port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}}") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def events(node: Node, kind: str) -> list[Event]:
    with node.db.session() as session:
        return list(session.scalars(select(Event).where(Event.kind == kind)))


def test_health_reports_ok_with_its_checks(node: Node) -> None:
    status, body = get(node, "/healthz")
    health = json.loads(body)
    assert status == 200 and health["status"] == "ok" and health["database"] == "ok"
    assert health["rule_set"] == node.rule_set.version and "listening" in health["dicom"]


def test_counters_move_with_traffic(node: Node, tmp_path: Path) -> None:
    _, before = get(node, "/metrics")
    good = planar_scan(tmp_path, "SYNMETRIC")
    send_files([good], "127.0.0.1", node.port, "SCINTNODE", calling_ae="METRICCAM")
    bad = tmp_path / "bad.dcm"
    ds = dcmread(good)
    ds.StudyInstanceUID = "1.2.3/../x"
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(bad, enforce_file_format=True)
    with pytest.raises(Exception, match=r"0xC220|C220|exited"):
        send_files([bad], "127.0.0.1", node.port, "SCINTNODE", calling_ae="METRICCAM")
    wait_for(lambda: bool(events(node, "matched")))
    _, after = get(node, "/metrics")
    assert metric(after, "scintnode_instances_received_total", calling_ae="METRICCAM") == 1
    assert metric(after, "scintnode_instances_rejected_total", status="0xC220") == 1
    assert metric(after, "scintnode_inputs_completed_total", layer="nm-object") == 1
    assert metric(before, "scintnode_instances_received_total", calling_ae="METRICCAM") == 0
    assert 'scintnode_queue_depth{queue="open_episodes"}' in after


def test_shadow_mode_reports_decisions_that_would_differ(node: Node, tmp_path: Path) -> None:
    send_files([planar_scan(tmp_path, "SYNSHADOW")], "127.0.0.1", node.port, "SCINTNODE")
    wait_for(lambda: bool(events(node, "shadow-differs")))
    differs = events(node, "shadow-differs")[0].detail
    assert "thyroid-pertechnetate-planar" in differs["active"]["fires"]
    assert "thyroid-pertechnetate-planar" not in differs["candidate"]["fires"]
    with node.db.session() as session:  # acting on nothing: only the active rules made jobs
        assert {j.rule_name for j in session.scalars(select(Job))} <= {"thyroid-pertechnetate-planar"}


def test_ops_page_in_a_real_browser(node: Node, tmp_path: Path) -> None:
    assert node.web is not None
    study_file = planar_scan(tmp_path, "SYNPAGE")
    send_files([study_file], "127.0.0.1", node.port, "SCINTNODE")
    wait_for(lambda: bool(events(node, "matched")))
    with node.db.session() as session:  # a dead letter to resubmit (an output the PACS refused for good)
        job = session.scalars(select(Job)).first()
        assert job is not None
        session.add(
            Output(
                sop_instance_uid=generate_uid(),
                job_id=job.id,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
                kind="sc",
                study_uid=job.study_uid,
                path="outputs/none.dcm",
            )
        )
        session.flush()
        uid = session.scalars(select(Output.sop_instance_uid)).all()[-1]
        session.add(
            Delivery(
                sop_instance_uid=uid,
                destination="pacs",
                state="dead",
                attempts=1,
                last_status="0xA900",
                last_error="dataset does not match SOP class",
            )
        )
    base = f"http://127.0.0.1:{node.web.port}"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        page = browser.new_page()
        page.goto(base + "/")
        assert "Rule sets" in page.text_content("h2#rules")  # type: ignore[operator]
        body = page.text_content("body") or ""
        assert "thyroid-pertechnetate-planar" in body and "Candidate (shadow mode" in body
        assert "Open episodes (1)" in body and "SYNPAGE" in body  # the pertechnetate scan opened one
        assert "Dead letters (1)" in body
        page.click("h2#dead + form button")  # Resubmit all
        assert "1 dead letter(s) resubmitted" in (page.text_content("body") or "")
        page.goto(base + "/")
        page.set_input_files("input[name=file]", str(study_file))
        page.click("form[action='/explain'] button")
        explanation = page.text_content("pre#explanation") or ""
        assert (
            "radiopharmaceutical" in explanation and "fires" in explanation and "episode: slot thyroid" in explanation
        )
        assert "SYNTHETIC^SCAN" not in explanation  # never patient names
        page.goto(base + "/")
        page.fill("input[name=uid]", str(dcmread(study_file).StudyInstanceUID))
        page.click("form[action='/study'] button")
        timeline = page.text_content("table#timeline") or ""
        for kind in ("received", "complete", "matched", "shadow-differs"):
            assert kind in timeline
        old_version = node.rule_set.version
        thyroid = node.settings.rules_dir / "thyroid.yaml"
        thyroid.write_text(thyroid.read_text().replace("description: 99mTc", "description: edited 99mTc"))
        node.rules.reload("test")
        # applied by this reload, or by the folder watch (every 2 s) a moment before it
        assert node.rule_set.version != old_version
        page.goto(base + "/")
        page.click(f"a[href='/?diff={old_version}#rules']")
        diff = page.text_content("pre#diff") or ""
        assert "+    description: edited 99mTc" in diff and "-    description: 99mTc" in diff
        browser.close()
    # resubmitted, then tried again at once (and dead again: its file never existed)
    assert events(node, "resubmitted")
