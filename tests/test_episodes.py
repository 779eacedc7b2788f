"""Episodes through a running node: inputs gathered across series, studies, days, associations and restarts.

DCMTK storescu is the modality; the node runs in-process on the shipped rules (or a copy with short
deadlines); the results are read from the node's spool and index."""

from __future__ import annotations

import datetime as dt
import itertools
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import event, select

from scintnode.config import DEFAULT_RULES_DIR, Settings
from scintnode.db import Database, Episode, Event, Job, Output
from scintnode.episodes import EpisodeKeeper
from scintnode.implementation import IMPLEMENTATION_CLASS_UID
from scintnode.node import Node
from scintnode.orthanc import free_port
from scintnode.phantoms import nm
from scintnode.phantoms.ct import Contrast, build_ct_series
from scintnode.route.loader import check_rule_set
from scintnode.storescu import send_files
from tests import harness
from tests.harness import planar_scan

DAY0 = dt.datetime(2026, 3, 2, 8, 0)
PARATHYROID_NETWORK = "paranet-small"  # the network rules/parathyroid.yaml runs


class Clinic:
    """Writes synthetic NM and CT files for a patient, as the cameras of one site would."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = itertools.count(1)

    def patient(self, pid: str) -> nm.Patient:
        return nm.Patient(pid, f"SYNTHETIC^EPISODE^{pid}", dt.date(1960, 5, 1), "F")

    def study(self, start: dt.datetime) -> nm.StudyInfo:
        return nm.StudyInfo(generate_uid(), start, accession=f"SYN{next(self.count):05d}", description="(synthetic)")

    def planar(self, patient: nm.Patient, study: nm.StudyInfo, agent: str, minutes: float, description: str) -> Path:
        return planar_scan(
            self.folder,
            patient.patient_id,
            agent=agent,
            minutes=minutes,
            description=description,
            body_part="NECK",
            study=study,
        )

    def ct(self, patient: nm.Patient, study: nm.StudyInfo, enhanced: bool, frame_of_reference: str) -> list[Path]:
        acquired = study.start + dt.timedelta(minutes=5 if enhanced else 2)
        contrast = Contrast(start=acquired - dt.timedelta(seconds=70)) if enhanced else None
        series = build_ct_series(
            np.full((4, 16, 16), 40.0),
            patient=patient,
            study=study,
            series_uid=generate_uid(),
            series_number=3 if enhanced else 2,
            series_description=f"NECK {'C+' if enhanced else 'NATIVE'}",
            acquired=acquired,
            frame_of_reference_uid=frame_of_reference,
            contrast=contrast,
        )
        return [nm.save(ds, self.folder / f"ct{next(self.count):05d}.dcm") for ds in series]


@pytest.fixture
def clinic(tmp_path: Path) -> Clinic:
    folder = tmp_path / "sent"
    folder.mkdir()
    return Clinic(folder)


NodeFactory = Callable[..., Node]


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[NodeFactory]:
    started: list[Node] = []

    def start(rules_dir: Path = DEFAULT_RULES_DIR) -> Node:
        settings = Settings.model_validate(
            {
                "node": {"port": 0, "bind_address": "127.0.0.1"},
                "storage": {"root": str(tmp_path / "spool")},
                "completion": {"release_quiet_seconds": 0.3, "long_quiet_seconds": 30},
                # the PACS is never up in these tests: deliveries stay queued, outputs are read from the spool
                "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": free_port()}},
                "dispatch": {"poll_seconds": 60},
                "rules_dir": str(rules_dir),
            }
        )
        node = Node(settings)
        node.start()
        started.append(node)
        return node

    yield start
    for node in started:
        if node.receiver.listening:
            node.stop()


def send(node: Node, *files: Path) -> None:
    send_files(list(files), "127.0.0.1", node.port, "SCINTNODE")


def wait_for(node: Node, condition: Callable[[], bool], timeout: float = 60) -> None:
    harness.wait_for(condition, timeout, poke=node.wake)


def jobs(node: Node) -> list[Job]:
    with node.db.session() as session:
        return list(session.scalars(select(Job).order_by(Job.id)))


def events(node: Node, kind: str) -> list[Event]:
    with node.db.session() as session:
        return list(session.scalars(select(Event).where(Event.kind == kind).order_by(Event.id)))


def done_jobs(node: Node, count: int, network: str = "input-check") -> list[Job]:
    """Wait for `count` finished jobs of `network` (the thyroid classifier also runs on pertechnetate scans)."""

    def finished() -> list[Job]:
        return [j for j in jobs(node) if j.state == "done" and j.network == network]

    wait_for(node, lambda: len(finished()) >= count)
    return finished()


def sr_of(node: Node, job: Job) -> object:
    with node.db.session() as session:
        path = session.scalars(select(Output.path).where(Output.job_id == job.id, Output.kind == "sr")).one()
    return dcmread(node.spool.absolute(path))


def evidence(sr: object, sequence: str) -> set[str]:
    return {
        item.ReferencedSOPInstanceUID
        for study in getattr(sr, sequence, [])
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }


def parathyroid_set(clinic: Clinic, pid: str) -> dict[str, Path]:
    """Early and late MIBI in one study, the pertechnetate thyroid scan two days later in another."""
    patient = clinic.patient(pid)
    mibi = clinic.study(DAY0)
    thyroid = clinic.study(DAY0 + dt.timedelta(days=2))
    return {
        "early": clinic.planar(patient, mibi, "sestamibi", 10, "PARATHYROID EARLY"),
        "late": clinic.planar(patient, mibi, "sestamibi", 120, "PARATHYROID LATE"),
        "thyroid": clinic.planar(patient, thyroid, "pertechnetate", 20, "THYROID"),
    }


def test_parathyroid_episode_in_every_arrival_order(clinic: Clinic, start_node: NodeFactory) -> None:
    node = start_node()
    orders = list(itertools.permutations(("early", "late", "thyroid")))
    cases = {f"SYNEP{n}": (order, parathyroid_set(clinic, f"SYNEP{n}")) for n, order in enumerate(orders)}
    for order, files in cases.values():
        for slot in order:
            send(node, files[slot])  # one association each, as separate acquisitions arrive
    episode_jobs = done_jobs(node, len(orders), PARATHYROID_NETWORK)
    assert len(episode_jobs) == len(orders)  # exactly one run per patient, whatever the order
    for job in episode_jobs:
        files = next(f for _, f in cases.values() if str(dcmread(f["early"]).SOPInstanceUID) in job.inputs)
        uids = {slot: str(dcmread(path).SOPInstanceUID) for slot, path in files.items()}
        assert job.slots == ["early", "late", "thyroid"]
        assert job.inputs == [uids["early"], uids["late"], uids["thyroid"]]
        sr = sr_of(node, job)
        thyroid_study = dcmread(files["thyroid"]).StudyInstanceUID
        assert sr.StudyInstanceUID == thyroid_study == job.study_uid  # the most recent input's study
        assert evidence(sr, "CurrentRequestedProcedureEvidenceSequence") == {uids["thyroid"]}
        assert evidence(sr, "PertinentOtherEvidenceSequence") == {uids["early"], uids["late"]}
        assert sr.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID  # the file is ours, not highdicom's
    # the pertechnetate scans also went to the thyroid classifier: that rule is independent of the episode
    assert sum(j.network == "thyroid-resnet34" for j in jobs(node)) == len(orders)


def test_episode_survives_a_restart_between_slots(clinic: Clinic, start_node: NodeFactory) -> None:
    files = parathyroid_set(clinic, "SYNRESTART")
    node = start_node()
    send(node, files["early"])
    wait_for(node, lambda: bool(events(node, "episode-slot-filled")))
    node.stop()
    node = start_node()
    send(node, files["late"], files["thyroid"])
    episode_jobs = done_jobs(node, 1, PARATHYROID_NETWORK)
    assert len([j for j in jobs(node) if j.network == PARATHYROID_NETWORK]) == 1 and episode_jobs[0].slots == [
        "early",
        "late",
        "thyroid",
    ]
    with node.db.session() as session:
        assert len(session.scalars(select(Episode)).all()) == 1


def test_second_late_image_after_the_result_supersedes_it(clinic: Clinic, start_node: NodeFactory) -> None:
    files = parathyroid_set(clinic, "SYNSUPER")
    node = start_node()
    send(node, files["early"], files["late"], files["thyroid"])
    first = done_jobs(node, 1, PARATHYROID_NETWORK)[0]
    patient, mibi_study = clinic.patient("SYNSUPER"), dcmread(files["early"])
    study = nm.StudyInfo(mibi_study.StudyInstanceUID, DAY0, accession=mibi_study.AccessionNumber, description="")
    repeat = clinic.planar(patient, study, "sestamibi", 150, "PARATHYROID LATE REPEAT")
    send(node, repeat)
    second = next(j for j in done_jobs(node, 2, PARATHYROID_NETWORK) if j.id != first.id)
    assert second.supersedes_job_id == first.id
    assert str(dcmread(repeat).SOPInstanceUID) in second.inputs
    assert str(dcmread(files["late"]).SOPInstanceUID) not in second.inputs
    old_sr, new_sr = sr_of(node, first), sr_of(node, second)
    predecessors = evidence(new_sr, "PredecessorDocumentsSequence")
    assert predecessors == {old_sr.SOPInstanceUID}


def short_deadline_rules(tmp_path: Path, policy: str) -> Path:
    rules = tmp_path / f"rules-{policy}"
    rules.mkdir()
    text = (DEFAULT_RULES_DIR / "parathyroid.yaml").read_text()
    text = text.replace("deadline: 3d", "deadline: 2s").replace("on_deadline: run-partial", f"on_deadline: {policy}")
    (rules / "parathyroid.yaml").write_text(text)
    shutil.copy(DEFAULT_RULES_DIR / "thyroid.yaml", rules / "thyroid.yaml")
    return rules


def test_deadline_runs_with_the_optional_slot_empty(clinic: Clinic, start_node: NodeFactory, tmp_path: Path) -> None:
    files = parathyroid_set(clinic, "SYNPARTIAL")
    node = start_node(short_deadline_rules(tmp_path, "run-partial"))
    send(node, files["early"], files["late"])
    job = done_jobs(node, 1, PARATHYROID_NETWORK)[0]
    assert job.slots == ["early", "late"]
    complete = events(node, "episode-complete")
    assert complete and complete[-1].detail["partial"] is True


def test_deadline_gives_up_with_a_logged_reason(clinic: Clinic, start_node: NodeFactory, tmp_path: Path) -> None:
    files = parathyroid_set(clinic, "SYNGIVEUP")
    node = start_node(short_deadline_rules(tmp_path, "give-up"))
    send(node, files["early"])
    wait_for(node, lambda: bool(events(node, "episode-gave-up")))
    reason = events(node, "episode-gave-up")[0].detail["reason"]
    assert "late" in reason and "thyroid" in reason
    assert jobs(node) == []


def test_look_alike_image_of_another_patient_never_joins(clinic: Clinic, start_node: NodeFactory) -> None:
    mine = parathyroid_set(clinic, "SYNMINE")
    theirs = parathyroid_set(clinic, "SYNTHEIRS")
    node = start_node()
    send(node, mine["early"], theirs["late"], theirs["thyroid"])
    wait_for(node, lambda: len(events(node, "episode-slot-filled")) == 3)
    assert not any(j.network == PARATHYROID_NETWORK for j in jobs(node))
    with node.db.session() as session:
        assert sorted(e.join_key for e in session.scalars(select(Episode))) == ["SYNMINE", "SYNTHEIRS"]


def test_ambiguous_timing_is_reported_not_guessed(clinic: Clinic, start_node: NodeFactory) -> None:
    patient = clinic.patient("SYNAMBIG")
    middle = clinic.planar(patient, clinic.study(DAY0), "sestamibi", 60, "PARATHYROID")
    node = start_node()
    send(node, middle)
    wait_for(node, lambda: bool(events(node, "episode-ambiguous")))
    detail = events(node, "episode-ambiguous")[0].detail
    assert "none of its slots" in detail["reason"] and "60" in detail["facts"]["minutes_after_injection"]


def test_ct_phases_sent_in_two_associations_form_one_episode(clinic: Clinic, start_node: NodeFactory) -> None:
    patient = clinic.patient("SYNCT")
    study = clinic.study(DAY0)
    frame = generate_uid()
    native = clinic.ct(patient, study, enhanced=False, frame_of_reference=frame)
    enhanced = clinic.ct(patient, study, enhanced=True, frame_of_reference=frame)
    node = start_node()
    send(node, *native)
    send(node, *enhanced)
    job = done_jobs(node, 1, network="ct-parathyroid-unet")[0]
    assert job.slots == ["unenhanced"] * 4 + ["enhanced"] * 4
    assert set(job.inputs) == {str(dcmread(p).SOPInstanceUID) for p in native + enhanced}


def test_ct_phases_in_different_frames_of_reference_are_refused(clinic: Clinic, start_node: NodeFactory) -> None:
    patient = clinic.patient("SYNCTFOR")
    study = clinic.study(DAY0)
    node = start_node()
    send(node, *clinic.ct(patient, study, enhanced=False, frame_of_reference=generate_uid()))
    send(node, *clinic.ct(patient, study, enhanced=True, frame_of_reference=generate_uid()))
    wait_for(node, lambda: bool(events(node, "episode-constraint-failed")))
    assert "FrameOfReferenceUID" in events(node, "episode-constraint-failed")[0].detail["reasons"][0]
    assert jobs(node) == []


def test_status_shows_open_episodes_with_their_slots_and_deadline(
    clinic: Clinic, start_node: NodeFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from scintnode.status_cli import main as status

    files = parathyroid_set(clinic, "SYNSTATUS")
    node = start_node()
    send(node, files["early"])
    wait_for(node, lambda: bool(events(node, "episode-slot-filled")))
    config = tmp_path / "node.yaml"
    config.write_text(f"storage:\n  root: {tmp_path / 'spool'}\n")
    assert status(["--config", str(config)]) == 0
    shown = capsys.readouterr().out
    assert "Open episodes: 1" in shown
    assert "parathyroid-mibi-episode" in shown and "SYNSTATUS" in shown and "early (1 inst)" in shown
    assert "deadline" in shown


def test_a_waiting_episode_is_reported_once_and_read_again_only_when_the_rules_change(
    clinic: Clinic, start_node: NodeFactory, tmp_path: Path
) -> None:
    """keep-waiting leaves the episode open past its deadline. The routing passes that follow (five a second
    here) do not read it again: read in every pass, such episodes cost 0.14 ms each, and they add up over
    months. A rule change may change what its deadline means, so a reload reads it once more."""
    files = parathyroid_set(clinic, "SYNWAITING")
    rules = short_deadline_rules(tmp_path, "keep-waiting")
    node = start_node(rules)
    send(node, files["early"])
    wait_for(node, lambda: bool(events(node, "episode-waiting")))
    member_reads: list[str] = []

    def count(conn: object, cursor: object, statement: str, *_: object) -> None:
        if "FROM episode_members" in statement:
            member_reads.append(statement)

    event.listen(node.db.engine, "before_cursor_execute", count)
    passes = node.pipeline._last_pass
    harness.wait_for(lambda: node.pipeline._last_pass > passes + 1.0, timeout=30)
    event.remove(node.db.engine, "before_cursor_execute", count)
    assert member_reads == []
    assert len(events(node, "episode-waiting")) == 1

    policy = rules / "parathyroid.yaml"
    policy.write_text(policy.read_text().replace("on_deadline: keep-waiting", "on_deadline: give-up"))
    wait_for(node, lambda: bool(events(node, "episode-gave-up")))
    assert jobs(node) == []


def test_a_deadline_pass_gives_up_a_bounded_batch_earliest_first(tmp_path: Path) -> None:
    """Each routing pass is one transaction the receiver waits behind: a node back from a long stop applies the
    deadlines of its many due episodes a batch a pass. The reported ones a rule change makes it read again are
    all read in that pass, whatever the batch."""
    rule_set, errors = check_rule_set(short_deadline_rules(tmp_path, "give-up"))
    assert rule_set is not None, errors
    rules = {rule.name: rule for rule in rule_set.rules}
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    db.create_schema()
    now = dt.datetime(2026, 12, 7, 12, 0)
    with db.session() as session:
        for number in range(8):
            session.add(
                Episode(
                    rule_name="parathyroid-mibi-episode",
                    join_key=f"SYNBATCH{number}|",
                    ruleset_version="v",
                    first_acquired_at=now,
                    deadline_at=now - dt.timedelta(hours=8 - number),  # the lower ids are due first
                    deadline_reported=number >= 5,  # three left waiting by an earlier keep-waiting rule
                )
            )
    keeper = EpisodeKeeper(db)

    def gave_up_after_a_pass(include_reported: bool) -> list[int]:
        with db.session() as session:
            keeper.expire(session, rules, now, include_reported=include_reported, batch=2)
        with db.session() as session:
            return sorted(session.scalars(select(Episode.id).where(Episode.state == "gave-up")))

    assert gave_up_after_a_pass(include_reported=False) == [1, 2]
    assert gave_up_after_a_pass(include_reported=True) == [1, 2, 3, 4, 6, 7, 8]
    assert gave_up_after_a_pass(include_reported=False) == [1, 2, 3, 4, 5, 6, 7, 8]
