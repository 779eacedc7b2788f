"""Receive: the Storage SCP. Each instance goes to the spool and the index before success is answered.

Its header is checked first (`receive_header`). It never decodes pixel data and never runs a network; bad
input gets a DICOM failure status and a log line, and the handler never raises (a raising handler would
answer 0xC211 with no explanation)."""

from __future__ import annotations

import logging
import struct
import threading
import uuid
from collections.abc import Callable, Sequence

from pynetdicom import (
    ALL_TRANSFER_SYNTAXES,
    AllStoragePresentationContexts,
    build_context,
)
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification
from sqlalchemy.exc import SQLAlchemyError

from scintnode.config import NodeSettings
from scintnode.db import Database, GroupCommit
from scintnode.dimse_command import Command
from scintnode.implementation import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from scintnode.metrics import Metrics
from scintnode.receive_header import Rejected, read_header
from scintnode.receive_index import (
    NM_IMAGE_STORAGE_RETIRED,
    AssociationLog,
    ReleaseWrite,
    StoreWrite,
    remove_unindexed_inputs,
    write_index_batch,
)
from scintnode.security import CallerPolicy, server_tls_context
from scintnode.spool import Spool, SpoolFull
from scintnode.upper_layer import AcceptorServer, AcceptorSettings, Association

log = logging.getLogger(__name__)

OUT_OF_RESOURCES = 0xA700  # C-STORE status: spool full or the index cannot be written; the sender may retry


def _meta_element(group_element: bytes, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return group_element + vr + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return group_element + vr + struct.pack("<H", len(value)) + value


def _ui(value: str) -> bytes:
    raw = value.encode("latin-1", "replace")
    return raw + b"\x00" if len(raw) % 2 else raw


_META_VERSION = _meta_element(b"\x02\x00\x01\x00", b"OB", b"\x00\x01")
_META_IMPLEMENTATION = _meta_element(b"\x02\x00\x12\x00", b"UI", _ui(IMPLEMENTATION_CLASS_UID)) + _meta_element(
    b"\x02\x00\x13\x00",
    b"SH",
    IMPLEMENTATION_VERSION_NAME.encode() + b" " * (len(IMPLEMENTATION_VERSION_NAME) % 2),
)


def part10(
    dataset: Sequence[bytes | memoryview], sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str
) -> bytes:
    """The Part-10 file of a received data set, given as the fragments it arrived in (one copy, not two):
    what pynetdicom's Event.encoded_dataset() writes, without building the File Meta through pydicom."""
    elements = b"".join(
        (
            _META_VERSION,
            _meta_element(b"\x02\x00\x02\x00", b"UI", _ui(sop_class_uid)),
            _meta_element(b"\x02\x00\x03\x00", b"UI", _ui(sop_instance_uid)),
            _meta_element(b"\x02\x00\x10\x00", b"UI", _ui(transfer_syntax)),
            _META_IMPLEMENTATION,
        )
    )
    group_length = _meta_element(b"\x02\x00\x00\x00", b"UL", struct.pack("<I", len(elements)))
    return b"".join((b"\x00" * 128, b"DICM", group_length, elements, *dataset))


def storage_contexts() -> list[PresentationContext]:
    """Verification and every storage class, in every transfer syntax: the receive path never decodes pixel
    data (the networks do, later), so compressed syntaxes are as welcome as uncompressed ones. pynetdicom's
    list leaves out retired classes; NM Image Storage (Retired), still sent by older gamma cameras, is added."""
    contexts = [build_context(Verification)]
    contexts += [build_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES) for cx in AllStoragePresentationContexts]
    contexts.append(build_context(NM_IMAGE_STORAGE_RETIRED, ALL_TRANSFER_SYNTAXES))
    return contexts


class Receiver:
    """The Storage SCP: accepts associations, stores instances, tracks which series each association fed."""

    def __init__(
        self,
        db: Database,
        spool: Spool,
        settings: NodeSettings,
        on_change: Callable[[], None] = lambda: None,
        metrics: Metrics | None = None,
    ) -> None:
        self.db = db
        self.spool = spool
        self.settings = settings
        self.on_change = on_change  # wakes the pipeline: new data or a released association
        self.metrics = metrics
        self.policy = CallerPolicy(settings.allowed_callers)
        self._associations: dict[int, AssociationLog] = {}
        self._lock = threading.Lock()  # guards the association table
        # shared by every association: concurrent C-STOREs share a transaction (and its fsync)
        self.index_writer: GroupCommit[StoreWrite | ReleaseWrite] = GroupCommit(
            db.engine,
            lambda connection, items: write_index_batch(connection, items),  # looked up per batch
        )
        self._server: AcceptorServer | None = None

    @property
    def listening(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("receiver not started")
        return self._server.port

    @property
    def open_connections(self) -> int:
        return self._server.open_connections if self._server is not None else 0

    def start(self) -> None:
        remove_unindexed_inputs(self.db, self.spool)
        settings = self.settings
        acceptor = AcceptorSettings(
            max_pdu=settings.max_pdu,
            network_timeout=settings.network_timeout_seconds,
            max_associations=settings.max_associations,
            supported_contexts=storage_contexts(),
            required_called_ae=settings.ae_title if settings.require_called_ae_title else None,
        )
        tls = settings.tls
        server = AcceptorServer(
            (settings.bind_address, settings.port),
            acceptor,
            self,
            max_connections=settings.max_connections,
            tls=server_tls_context(tls) if tls is not None else None,
        )
        threading.Thread(target=server.serve_forever, name="scintnode-scp-accept", daemon=True).start()
        self._server = server
        if self.policy.open:
            log.warning("no calling-AE allow-list configured: any modality may store to this node")
        log.info(
            "listening as %s on %s:%d%s",
            settings.ae_title,
            settings.bind_address,
            self.port,
            " (DICOM TLS, client certificate required)"
            if tls is not None and tls.require_client_cert
            else " (DICOM TLS)"
            if tls is not None
            else "",
        )

    def stop(self, drain_seconds: float = 0.0) -> None:
        """Refuse new connections, then wait up to ``drain_seconds`` for the associations in progress to end.

        They are served as usual meanwhile, so a modality part-way through a study finishes sending it."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            if server.open_connections:
                log.info("waiting up to %g s for %d connection(s) to end", drain_seconds, server.open_connections)
            left = server.wait_until_idle(drain_seconds)
            if left:
                log.warning(
                    "%d connection(s) still open after %g s (node.drain_seconds) are cut; their senders keep "
                    "every instance not yet acknowledged",
                    left,
                    drain_seconds,
                )
        self.index_writer.close()

    # -- association bookkeeping (the Upper Layer's StorageService) -----------------------------------
    def admits_address(self, address: str) -> bool:
        return self.policy.permits_address(address)

    def admits(self, calling_ae: str, address: str) -> bool:
        if self.policy.permits(calling_ae, address):
            return True
        log.warning("association from %r at %s rejected: not on allowed_callers for this address", calling_ae, address)
        return False

    def established(self, association: Association) -> None:
        entry = AssociationLog(uuid.uuid4().hex, association.calling_ae, association.address)
        with self._lock:
            self._associations[id(association)] = entry
        log.info("association %s from %s at %s", entry.association_id[:8], entry.calling_ae, entry.address)

    def release_requested(self, association: Association) -> None:
        # recorded before the A-RELEASE-RP goes out: a sender that saw its release confirmed finds the
        # release in the index
        with self._lock:
            entry = self._associations.get(id(association))
        if entry is not None:
            self._record_release(entry)

    def ended(self, association: Association, released: bool) -> None:
        with self._lock:
            entry = self._associations.pop(id(association), None)
        if entry is None:
            return
        log.info(
            "association %s %s: %d stored, %d rejected",
            entry.association_id[:8],
            "released" if released else "aborted",
            entry.stored,
            entry.rejected,
        )
        if released:
            self._record_release(entry)
        self.on_change()

    def _record_release(self, entry: AssociationLog) -> None:
        if entry.release_recorded or not entry.series:
            return
        entry.release_recorded = True
        try:
            self.index_writer.submit(ReleaseWrite(frozenset(entry.series)))
        except (SQLAlchemyError, OSError):
            log.exception("could not record the release of association %s", entry.association_id[:8])

    # -- C-STORE -------------------------------------------------------------------------------------
    def store(
        self, association: Association, command: Command, transfer_syntax: str, data_set: Sequence[bytes | memoryview]
    ) -> tuple[int, str]:
        with self._lock:
            entry = self._associations.get(id(association))
        try:
            status, reason = self._store(command, transfer_syntax, data_set, entry)
        except Exception:  # the Upper Layer must answer, whatever happened
            log.exception("unexpected error storing an instance; answered 0xA701")
            status, reason = 0xA701, "internal error in the node; see its log"
        if entry is not None:
            if status == 0x0000:
                entry.stored += 1
            else:
                entry.rejected += 1
        if self.metrics is not None:
            if status == 0x0000:
                self.metrics.received.labels(entry.calling_ae if entry else "").inc()
            else:
                self.metrics.rejected.labels(f"0x{status:04X}").inc()
        return status, reason

    def _store(
        self,
        command: Command,
        transfer_syntax: str,
        data_set: Sequence[bytes | memoryview],
        entry: AssociationLog | None,
    ) -> tuple[int, str]:
        sop_class, sop_instance = command.sop_class_uid, command.sop_instance_uid
        try:
            data = part10(data_set, sop_class, sop_instance, transfer_syntax)
            header = read_header(data, sop_class, sop_instance)
        except Rejected as exc:
            log.warning(
                "rejected instance %s from %s: %s (status 0x%04X)",
                sop_instance[:64],
                entry.calling_ae if entry else "?",
                exc.reason,
                exc.status,
            )
            return exc.status, exc.reason
        try:
            stored = self.spool.store_input(data)
        except SpoolFull as exc:
            log.error("refused instance %s: %s (status 0xA700)", sop_instance, exc)
            return OUT_OF_RESOURCES, "the node's spool is full"
        except OSError as exc:
            log.error("could not write instance %s to the spool: %s (status 0xA700)", sop_instance, exc)
            return OUT_OF_RESOURCES, "the node could not write the instance"
        store = StoreWrite(header, stored, entry)
        try:
            self.index_writer.submit(store)  # returns once the row is durable
        except (SQLAlchemyError, OSError) as exc:
            # the file stays: a failed commit may still have reached the disk, and its row would point here
            log.error("could not index instance %s: %s (status 0xA700)", sop_instance, exc)
            return OUT_OF_RESOURCES, "the node could not index the instance"
        if store.duplicate:
            self.spool.remove(stored.path)  # the index points at the first copy
        else:
            if entry is not None:
                entry.series.add(header.series_uid)
            self.on_change()
        return 0x0000, ""
