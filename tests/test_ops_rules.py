"""Ops on rules while the node runs: reload (folder change, SIGHUP via `rules reload`), refusal of an invalid
set, twenty reloads under four streaming senders, fixtures, replay, and the audit trail."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pydicom import dcmread
from sqlalchemy import func, select

from scintnode.audit_cli import main as audit
from scintnode.config import DEFAULT_RULES_DIR, Settings
from scintnode.db import Database, Event, Instance, Job, RuleSetRecord, utcnow
from scintnode.node import Node
from scintnode.orthanc import free_port
from scintnode.route.cli import main as rules_cli
from scintnode.storescu import send_files
from tests.harness import planar_scan, start_node_process, wait_for


def copy_rules(tmp_path: Path) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(DEFAULT_RULES_DIR, target)
    return target


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    settings = Settings.model_validate(
        {
            "node": {"port": 0, "bind_address": "127.0.0.1"},
            "storage": {"root": str(tmp_path / "spool")},
            "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": free_port()}},
            "dispatch": {"poll_seconds": 60},
            "rules_dir": str(copy_rules(tmp_path)),
        }
    )
    running = Node(settings)
    running.start()
    yield running
    running.stop()


def kinds(node: Node, kind: str) -> list[Event]:
    with node.db.session() as session:
        return list(session.scalars(select(Event).where(Event.kind == kind).order_by(Event.id)))


def test_an_edit_in_the_rules_folder_is_picked_up_and_recorded(node: Node) -> None:
    before = node.rule_set.version
    thyroid = node.settings.rules_dir / "thyroid.yaml"
    thyroid.write_text(thyroid.read_text().replace("description: 99mTc", "description: edited 99mTc"))
    # the keeper swaps the active set, then records the reload: wait for the record, not only the swap
    wait_for(lambda: node.rule_set.version != before and bool(kinds(node, "rules-reloaded")), timeout=20)
    reloaded = kinds(node, "rules-reloaded")[-1].detail
    assert (reloaded["old"], reloaded["new"]) == (before, node.rule_set.version)
    with node.db.session() as session:
        assert session.scalar(select(func.count()).select_from(RuleSetRecord)) == 2  # history kept


def test_an_invalid_rule_set_is_refused_and_the_running_one_stays(node: Node) -> None:
    before = node.rule_set.version
    thyroid = node.settings.rules_dir / "thyroid.yaml"
    thyroid.write_text(thyroid.read_text().replace("equals: pertechnetate", "equalz: pertechnetate"))
    outcome = node.rules.reload("test")
    assert not outcome.accepted and node.rule_set.version == before
    problem = kinds(node, "rules-refused")[-1].detail["errors"][0]
    assert "thyroid.yaml" in problem and "thyroid-pertechnetate-planar" in problem and "equalz" in problem


def test_twenty_reloads_while_four_senders_stream_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    rules = copy_rules(tmp_path)
    config = tmp_path / "node.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "node": {"port": 0, "bind_address": "127.0.0.1"},
                "storage": {"root": "spool"},
                "rules_dir": str(rules),
                "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": free_port()}},
                "dispatch": {"poll_seconds": 60},
            }
        )
    )
    studies = tmp_path / "studies"
    studies.mkdir()
    per_sender = 6
    batches = [[planar_scan(studies, f"SYNOPS{s}{n:03d}") for n in range(per_sender)] for s in range(4)]
    process, port = start_node_process(config, tmp_path / "node.log")
    try:
        failures: list[BaseException] = []

        def stream(files: list[Path]) -> None:
            try:
                for path in files:  # one association per study, as a camera sends them
                    send_files([path], "127.0.0.1", port, "SCINTNODE")
            except BaseException as exc:  # reported by the main thread
                failures.append(exc)

        senders = [threading.Thread(target=stream, args=(batch,)) for batch in batches]
        for sender in senders:
            sender.start()
        thyroid = rules / "thyroid.yaml"
        original = thyroid.read_text()
        for n in range(20):
            thyroid.write_text(original.replace("description: 99mTc", f"description: reload {n} 99mTc"))
            result = subprocess.run(
                [sys.executable, "-m", "scintnode", "rules", "reload", "--config", str(config)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert result.returncode == 0 and re.search(r"reloaded|unchanged", result.stdout), result.stderr
        for sender in senders:
            sender.join()
        assert not failures, failures
        db = Database(f"sqlite:///{tmp_path / 'spool' / 'index.db'}")
        sent = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for batch in batches for p in batch}

        def all_routed() -> bool:
            with db.session() as session:
                routed = session.scalar(select(func.count()).where(Instance.routed_at.is_not(None)))
                return routed == len(sent)

        wait_for(all_routed, timeout=120)
        with db.session() as session:
            stored = [i.sop_instance_uid for i in session.scalars(select(Instance))]
            jobs = session.scalars(select(Job).where(Job.network == "thyroid-resnet34")).all()
            versions = set(session.scalars(select(RuleSetRecord.version)))
            reloads = session.scalar(select(func.count()).where(Event.kind == "rules-reloaded"))
        db.dispose()
        assert sorted(stored) == sorted(sent)  # every instance once
        assert sorted(uid for job in jobs for uid in job.inputs) == sorted(sent)  # each routed to one job, once
        assert {job.ruleset_version for job in jobs} <= versions
        assert reloads == 20
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert process.returncode == 0, (tmp_path / "node.log").read_text()[-3000:]


def test_rules_reload_without_a_running_node_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(f"storage:\n  root: {tmp_path}\n")
    assert rules_cli(["reload", "--config", str(config)]) == 2
    assert "is `scintnode serve` running?" in capsys.readouterr().err


def test_check_fails_when_a_fixture_would_route_differently(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = copy_rules(tmp_path)
    assert rules_cli(["check", str(rules)]) == 0
    thyroid = rules / "thyroid.yaml"
    thyroid.write_text(
        thyroid.read_text()
        .replace("enabled: true", "")
        .replace("    network: thyroid-resnet34", "    enabled: false\n    network: thyroid-resnet34")
    )
    capsys.readouterr()
    assert rules_cli(["check", str(rules)]) == 1
    shown = capsys.readouterr().out
    assert "fixture nm-thyroid-tc99m-pertechnetate.json: FAILED" in shown
    assert "fixture ct-neck-native.json: ok" in shown


def test_fixture_command_strips_patient_data(tmp_path: Path) -> None:
    scan = planar_scan(tmp_path, "SYNFIXTURE")
    assert rules_cli(["fixture", str(scan), "--out", str(tmp_path / "fx")]) == 0
    [written] = (tmp_path / "fx").glob("*.json")
    text = written.read_text()
    assert "SYNTHETIC^SCAN" not in text and "SYNFIXTURE" not in text
    assert '"thyroid-pertechnetate-planar"' in text


def test_replay_shows_what_a_candidate_rule_set_would_change(
    node: Node, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scan = planar_scan(tmp_path, "SYNREPLAY")
    send_files([scan], "127.0.0.1", node.port, "SCINTNODE")
    wait_for(lambda: bool(kinds(node, "matched")))
    candidate = tmp_path / "candidate"
    shutil.copytree(node.settings.rules_dir, candidate)
    (candidate / "thyroid.yaml").unlink()
    config = tmp_path / "node.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "storage": {"root": str(tmp_path / "spool")},
                "rules_dir": str(node.settings.rules_dir),
                "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 104}},
            }
        )
    )
    capsys.readouterr()
    assert rules_cli(["replay", "--since", "1d", "--config", str(config)]) == 0
    assert "0 of 1 series would route differently" in capsys.readouterr().out
    assert rules_cli(["replay", "--since", "1d", "--rules", str(candidate), "--config", str(config)]) == 0
    shown = capsys.readouterr().out
    assert "1 of 1 series would route differently" in shown
    assert "was ['parathyroid-mibi-episode', 'thyroid-pertechnetate-planar']" in shown


def test_audit_prints_the_study_timeline_without_patient_names(
    node: Node, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scan = planar_scan(tmp_path, "SYNAUDIT")
    send_files([scan], "127.0.0.1", node.port, "SCINTNODE", calling_ae="AUDITCAM")
    study = str(dcmread(scan).StudyInstanceUID)
    wait_for(lambda: any(e.kind in ("written", "failed") for e in kinds(node, "written") + kinds(node, "failed")))
    config = tmp_path / "node.yaml"
    config.write_text(f"storage:\n  root: {tmp_path / 'spool'}\n")
    capsys.readouterr()
    assert audit([study, "--config", str(config)]) == 0
    shown = capsys.readouterr().out
    for kind in ("received", "complete", "matched"):
        assert kind in shown
    assert "calling_ae=AUDITCAM" in shown and "address=127.0.0.1" in shown and "layer=nm-object" in shown
    assert "SYNTHETIC^SCAN" not in shown


def test_replay_reads_only_its_window_and_skips_a_header_it_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A week's replay beside older history: the older series are not read at all, and an unreadable header
    is named and skipped while the others are still replayed."""
    spool = tmp_path / "spool"
    (spool / "inputs").mkdir(parents=True)
    db = Database(f"sqlite:///{spool / 'index.db'}")
    db.create_schema()
    now = utcnow()
    series: dict[str, tuple[Path, dt.datetime]] = {}
    for name, routed in (("recent", now), ("unreadable", now), ("old", now - dt.timedelta(days=10))):
        scan = planar_scan(spool / "inputs", f"SYNREPLAY{name.upper()}")
        if name == "unreadable":
            scan.write_bytes(b"not DICOM")
        series[name] = (scan, routed)
    with db.session() as session:
        for number, (name, (scan, routed)) in enumerate(series.items()):
            uid = f"1.2.826.0.1.3680043.8.498.{number}"
            session.add(
                Instance(
                    sop_instance_uid=uid + ".1",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.20",
                    study_uid=uid + ".2",
                    series_uid=f"series-{name}",
                    path=str(scan.relative_to(spool)),
                    sha256="0" * 64,
                    size=1,
                    received_at=routed,
                    routed_at=routed,
                )
            )
            db.record_event(session, uid + ".2", "matched", series_uid=f"series-{name}", rule="some-old-rule")
    db.dispose()
    config = tmp_path / "node.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "storage": {"root": str(spool)},
                "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 104}},
            }
        )
    )
    capsys.readouterr()

    assert rules_cli(["replay", "--since", "7d", "--config", str(config)]) == 0

    shown = capsys.readouterr().out
    assert "replaying 2 input series since 7d" in shown
    assert f"series series-unreadable: header unreadable ({series['unreadable'][0]}" in shown
    assert "series series-recent (study" in shown and "was ['some-old-rule']" in shown
    assert "series-old" not in shown
    assert "1 of 1 series would route differently" in shown
