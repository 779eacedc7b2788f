"""The receive path's fast mechanisms: the group commit, the Core index writes, the File Meta encoder and
the supported contexts every association shares. Each test fails if its mechanism breaks the receive guarantee."""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, build_context
from pynetdicom.dsutils import create_file_meta, encode_file_meta
from pynetdicom.presentation import negotiate_as_acceptor
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError

from scintnode import receive
from scintnode.config import NodeSettings, Settings
from scintnode.db import Database, Event, GroupCommit, Instance, Series
from scintnode.implementation import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from scintnode.pipeline import Pipeline
from scintnode.receive import OUT_OF_RESOURCES, Receiver, part10, storage_contexts
from scintnode.receive_index import NM_IMAGE_STORAGE_RETIRED
from scintnode.route import RuleSet
from scintnode.spool import Spool
from tests.conftest import NMFactory

ROWS = Table("rows", MetaData(), Column("id", Integer, primary_key=True), Column("name", String(16)))


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    ROWS.create(db.engine)
    yield db
    db.dispose()


def _names(db: Database) -> list[str]:
    with db.engine.connect() as connection:
        return sorted(connection.scalars(select(ROWS.c.name)))


def test_a_submit_returns_only_once_its_row_is_committed(database: Database) -> None:
    def write(connection: Connection, names: list[str]) -> None:
        connection.execute(insert(ROWS), [{"name": name} for name in names])

    commit: GroupCommit[str] = GroupCommit(database.engine, write)
    for name in ("a", "b"):
        commit.submit(name)
        assert name in _names(database)  # visible to another connection: committed, not just written
    commit.close()


def test_waiting_submitters_share_one_transaction(database: Database) -> None:
    inside, release = threading.Event(), threading.Event()
    batches: list[list[str]] = []

    def write(connection: Connection, names: list[str]) -> None:
        batches.append(list(names))
        if names == ["first"]:
            inside.set()
            release.wait(10)
        connection.execute(insert(ROWS), [{"name": name} for name in names])

    commit: GroupCommit[str] = GroupCommit(database.engine, write)
    first = threading.Thread(target=commit.submit, args=("first",))
    first.start()
    assert inside.wait(10)
    others = [threading.Thread(target=commit.submit, args=(f"n{i}",)) for i in range(5)]
    for thread in others:
        thread.start()
    while len(commit._pending) < 5:  # all five queued behind the commit under way
        threading.Event().wait(0.01)
    release.set()
    for thread in [first, *others]:
        thread.join(10)
    assert len(batches) == 2 and commit.batches == 2
    assert batches[0] == ["first"] and sorted(batches[1]) == [f"n{i}" for i in range(5)]
    assert _names(database) == ["first", *(f"n{i}" for i in range(5))]


def test_a_failed_commit_fails_every_submitter_of_its_batch_and_commits_none_of_them(database: Database) -> None:
    inside, release = threading.Event(), threading.Event()

    def write(connection: Connection, names: list[str]) -> None:
        connection.execute(insert(ROWS), [{"name": name} for name in names])
        if names == ["first"]:
            inside.set()
            release.wait(10)
        elif "bad" in names:
            raise OperationalError("INSERT", {}, Exception("disk I/O error"))

    commit: GroupCommit[str] = GroupCommit(database.engine, write)
    errors: dict[str, BaseException | None] = {}

    def submit(name: str) -> None:
        try:
            commit.submit(name)
            errors[name] = None
        except OperationalError as exc:
            errors[name] = exc

    first = threading.Thread(target=submit, args=("first",))
    first.start()
    assert inside.wait(10)
    others = [threading.Thread(target=submit, args=(name,)) for name in ("good", "bad")]
    for thread in others:
        thread.start()
    while len(commit._pending) < 2:
        threading.Event().wait(0.01)
    release.set()
    for thread in [first, *others]:
        thread.join(10)
    assert errors["first"] is None
    assert isinstance(errors["good"], OperationalError) and isinstance(errors["bad"], OperationalError)
    assert _names(database) == ["first"]  # the failed batch left nothing behind
    commit.submit("after")  # and the next batch works on a fresh connection
    assert _names(database) == ["after", "first"]


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    db.create_schema()
    rx = Receiver(db, Spool(tmp_path / "spool"), NodeSettings(ae_title="SCINTNODE", bind_address="127.0.0.1", port=0))
    rx.start()
    yield rx
    rx.stop()
    db.dispose()


def _send(port: int, paths: list[Path]) -> list[int]:
    ae = AE(ae_title="CAM")
    for syntax in {str(dcmread(p, stop_before_pixels=True).SOPClassUID) for p in paths}:
        ae.add_requested_context(syntax, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="SCINTNODE")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(path).Status) for path in paths]
    finally:
        assoc.release()


def test_concurrent_associations_are_all_indexed_with_their_series_counts_and_events(
    receiver: Receiver, nm_file: NMFactory
) -> None:
    series = ["1.2.826.0.1.3680043.10.999.1", "1.2.826.0.1.3680043.10.999.2"]
    batches = [[nm_file(series_uid=series[(a + i) % 2]) for i in range(6)] for a in range(4)]
    statuses: list[list[int]] = [[] for _ in batches]
    threads = [
        threading.Thread(target=lambda a=a: statuses[a].extend(_send(receiver.port, batches[a]))) for a in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert statuses == [[0] * 6] * 4
    with receiver.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 24
        counts = {s.series_uid: s.instance_count for s in session.scalars(select(Series))}
        assert counts == {series[0]: 12, series[1]: 12}
        received = session.scalars(select(Event.kind).where(Event.kind == "received")).all()
        assert len(received) == 24
        released = session.scalars(select(Series.released_at)).all()
        assert all(at is not None for at in released)  # each association's release reached its series
        for row in session.scalars(select(Instance)):
            assert receiver.spool.absolute(row.path).exists()


def test_an_index_that_cannot_be_written_answers_0xA700_and_indexes_nothing(
    receiver: Receiver, nm_file: NMFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> None:
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(receive, "write_index_batch", broken)
    assert _send(receiver.port, [nm_file(), nm_file()]) == [OUT_OF_RESOURCES] * 2
    monkeypatch.undo()
    with receiver.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 0
    assert _send(receiver.port, [nm_file()]) == [0]  # the writer recovers once the index can be written


def test_a_changed_nm_object_is_counted_and_audited_and_does_not_reopen_its_series(
    receiver: Receiver, nm_file: NMFactory
) -> None:
    path = nm_file()
    assert _send(receiver.port, [path]) == [0]
    ds = dcmread(path)
    with receiver.db.session() as session:
        series = session.get(Series, ds.SeriesInstanceUID)
        assert series is not None
        series.completed_at, series.completed_by = series.first_received_at, "nm-object"
    ds.SeriesDescription = "changed (synthetic)"
    ds.save_as(path, enforce_file_format=True)
    assert _send(receiver.port, [path]) == [0]
    with receiver.db.session() as session:
        series = session.get(Series, ds.SeriesInstanceUID)
        assert series is not None and series.instance_count == 2
        assert series.completed_by == "nm-object"  # an NM object is complete by itself: late data does not reopen
        kinds = session.scalars(select(Event.kind).order_by(Event.id)).all()
        assert kinds == ["received", "replaced", "received"]


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("instance", ["1.2.3.4", "1.2.3.44"])  # even and odd lengths (padding)
def test_part10_writes_the_same_file_meta_as_pynetdicom(syntax: str, instance: str) -> None:
    """Byte for byte what pynetdicom writes, with scintnode's own implementation UID and (odd-length) name."""
    nm_class = "1.2.840.10008.5.1.4.1.1.20"
    meta = create_file_meta(
        sop_class_uid=UID(nm_class),
        sop_instance_uid=UID(instance),
        transfer_syntax=UID(syntax),
        implementation_uid=UID(IMPLEMENTATION_CLASS_UID),
        implementation_version=IMPLEMENTATION_VERSION_NAME,
    )
    expected = b"\x00" * 128 + b"DICM" + encode_file_meta(meta) + b"DATA"
    assert part10([b"DA", memoryview(b"TA")], nm_class, instance, syntax) == expected  # as it arrived: fragments


def test_the_supported_contexts_are_shared_and_negotiation_leaves_them_as_they_were() -> None:
    supported = storage_contexts()
    before = copy.deepcopy([vars(c) for c in supported])
    assert {str(c.abstract_syntax) for c in supported} == {
        str(c.abstract_syntax) for c in AllStoragePresentationContexts
    } | {"1.2.840.10008.1.1", NM_IMAGE_STORAGE_RETIRED}
    requested = build_context(AllStoragePresentationContexts[0].abstract_syntax, [ExplicitVRLittleEndian])
    requested.context_id = 1
    results, _ = negotiate_as_acceptor([requested], supported)
    assert [(r.result, r.transfer_syntax) for r in results] == [(0x00, [ExplicitVRLittleEndian])]
    results[0].transfer_syntax.append(UID("1.2.3"))
    assert [vars(c) for c in supported] == before
    assert all(c.transfer_syntax == ALL_TRANSFER_SYNTAXES for c in supported[1:])


def test_one_routing_pass_routes_every_nm_object_received_and_audits_each_in_order(
    receiver: Receiver, nm_file: NMFactory, tmp_path: Path
) -> None:
    series_uid = "1.2.826.0.1.3680043.10.999.3"
    assert _send(receiver.port, [nm_file(series_uid=series_uid) for _ in range(5)]) == [0] * 5
    settings = Settings.model_validate({"storage": {"root": str(tmp_path / "spool")}})
    empty = RuleSet("0" * 64, (), tmp_path)
    pipeline = Pipeline(receiver.db, receiver.spool, settings, lambda: empty, None, None)  # type: ignore[arg-type]
    assert pipeline.route_ready() == 0
    with receiver.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Instance).where(Instance.routed_at.is_(None))) == 0
        series = session.get(Series, series_uid)
        assert series is not None and series.completed_by == "nm-object"
        kinds = session.scalars(select(Event.kind).where(Event.kind != "received").order_by(Event.id)).all()
        assert kinds == ["complete", "unmatched"] * 5
    assert pipeline.route_ready() == 0  # routed once only
    with receiver.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Event).where(Event.kind == "complete")) == 5
