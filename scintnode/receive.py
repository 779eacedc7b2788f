"""Receive: the pynetdicom Storage SCP. Each instance goes to the spool and the index before success is answered.

It never decodes pixel data and never runs a network; bad input gets a DICOM failure status and a log
line, and the handler never raises (a raising handler would answer 0xC211 with no explanation)."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from scintnode.config import NodeSettings
from scintnode.db import Database, Instance, Series, utcnow
from scintnode.metrics import Metrics
from scintnode.spool import Spool, SpoolFull

log = logging.getLogger(__name__)

# C-STORE failure statuses (PS3.4 Annex B.2.3) and what we use them for
OUT_OF_RESOURCES = 0xA700  # spool full or the index cannot be written: the sender may retry later
DATASET_MISMATCH = 0xA900  # dataset does not match the SOP class / the request (wrong or missing UIDs)
CANNOT_UNDERSTAND = 0xC210  # not a decodable DICOM dataset
INVALID_UID = 0xC220  # a UID that is not a valid DICOM UID (e.g. holding path characters)

NM_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
NM_IMAGE_STORAGE_RETIRED = "1.2.840.10008.5.1.4.1.1.5"


class Rejected(Exception):
    """An instance the node will not store, with the status to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class _AssociationLog:
    association_id: str
    calling_ae: str
    address: str
    series: set[str] = field(default_factory=set)
    stored: int = 0
    rejected: int = 0


@dataclass(frozen=True)
class Header:
    """The identifying attributes read from an instance's header."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    patient_id: str
    modality: str
    transfer_syntax: str


def is_nm_object(sop_class_uid: str, modality: str) -> bool:
    return sop_class_uid in (NM_IMAGE_STORAGE, NM_IMAGE_STORAGE_RETIRED) or modality == "NM"


def read_header(data: bytes, requested_sop_class: str, requested_sop_instance: str) -> Header:
    """Parse and check the header of a received Part-10 byte stream; raise Rejected with the status."""
    try:
        ds: Dataset = dcmread(BytesIO(data), stop_before_pixels=True)
        values = {
            "sop_class_uid": str(ds.get("SOPClassUID", "") or ""),
            "sop_instance_uid": str(ds.get("SOPInstanceUID", "") or ""),
            "study_uid": str(ds.get("StudyInstanceUID", "") or ""),
            "series_uid": str(ds.get("SeriesInstanceUID", "") or ""),
            "patient_id": str(ds.get("PatientID", "") or ""),
            "modality": str(ds.get("Modality", "") or "").strip().upper(),
        }
        transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    except (InvalidDicomError, ValueError, TypeError, KeyError, EOFError, OSError, AttributeError) as exc:
        raise Rejected(CANNOT_UNDERSTAND, f"header cannot be decoded: {exc}") from exc
    for name in ("sop_class_uid", "sop_instance_uid", "study_uid", "series_uid"):
        if not values[name]:
            raise Rejected(DATASET_MISMATCH, f"required attribute {name} is missing or empty")
        if not UID(values[name]).is_valid:
            raise Rejected(INVALID_UID, f"{name} is not a valid DICOM UID: {values[name][:80]!r}")
    if values["sop_class_uid"] != requested_sop_class:
        raise Rejected(
            DATASET_MISMATCH,
            f"SOP Class UID {values['sop_class_uid']} does not match the request ({requested_sop_class})",
        )
    if values["sop_instance_uid"] != requested_sop_instance:
        raise Rejected(DATASET_MISMATCH, "SOP Instance UID does not match the C-STORE request")
    return Header(transfer_syntax=transfer_syntax, **values)


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
        self._associations: dict[int, _AssociationLog] = {}
        self._lock = threading.Lock()  # serialises index writes (SQLite has one writer anyway)
        self._server: ThreadedAssociationServer | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("receiver not started")
        return int(self._server.server_address[1])

    def build_ae(self) -> AE:
        ae = AE(ae_title=self.settings.ae_title)
        ae.maximum_pdu_size = self.settings.max_pdu
        ae.network_timeout = self.settings.network_timeout_seconds
        ae.acse_timeout = self.settings.network_timeout_seconds
        ae.dimse_timeout = self.settings.network_timeout_seconds
        ae.maximum_associations = 32
        if self.settings.allowed_callers is not None:
            ae.require_calling_aet = list(self.settings.allowed_callers)
        ae.add_supported_context(Verification)
        # compressed syntaxes too: the receive path never decodes pixel data, the networks do later
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        return ae

    def start(self) -> None:
        ae = self.build_ae()
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        self._server = ae.start_server(
            (self.settings.bind_address, self.settings.port), block=False, evt_handlers=handlers
        )
        if self.settings.allowed_callers is None:
            log.warning("no calling-AE allow-list configured: any modality may store to this node")
        log.info("listening as %s on %s:%d", self.settings.ae_title, self.settings.bind_address, self.port)

    def stop(self) -> None:
        """Stop accepting associations; lets those in progress finish their current instance."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    # -- association bookkeeping -------------------------------------------------------------------
    def _on_established(self, event: evt.Event) -> None:
        requestor = event.assoc.requestor
        entry = _AssociationLog(uuid.uuid4().hex, str(requestor.ae_title), str(requestor.address))
        with self._lock:
            self._associations[id(event.assoc)] = entry
        log.info("association %s from %s at %s", entry.association_id[:8], entry.calling_ae, entry.address)

    def _on_rejected(self, event: evt.Event) -> None:
        requestor = event.assoc.requestor
        log.warning(
            "association from %r at %s rejected (calling AE not allowed or no acceptable context)",
            requestor.ae_title,
            requestor.address,
        )

    def _finish(self, event: evt.Event, released: bool) -> None:
        with self._lock:
            entry = self._associations.pop(id(event.assoc), None)
        if entry is None:
            return
        log.info(
            "association %s %s: %d stored, %d rejected",
            entry.association_id[:8],
            "released" if released else "aborted",
            entry.stored,
            entry.rejected,
        )
        if released and entry.series:
            try:
                with self._lock, self.db.session() as session:
                    now = utcnow()
                    for series in session.scalars(
                        select(Series).where(Series.series_uid.in_(entry.series), Series.completed_at.is_(None))
                    ):
                        series.released_at = now
            except SQLAlchemyError:
                log.exception("could not record the release of association %s", entry.association_id[:8])
        self.on_change()

    def _on_released(self, event: evt.Event) -> None:
        self._finish(event, released=True)

    def _on_aborted(self, event: evt.Event) -> None:
        self._finish(event, released=False)

    # -- C-STORE -------------------------------------------------------------------------------------
    def _on_store(self, event: evt.Event) -> int:
        with self._lock:
            entry = self._associations.get(id(event.assoc))
        try:
            status = self._store(event, entry)
        except Exception:  # the handler must answer, whatever happened
            log.exception("unexpected error storing an instance; answered 0xA701")
            status = 0xA701
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
        return status

    def _store(self, event: evt.Event, entry: _AssociationLog | None) -> int:
        request = event.request
        sop_class = str(request.AffectedSOPClassUID)
        sop_instance = str(request.AffectedSOPInstanceUID)
        try:
            data = event.encoded_dataset(include_meta=True)
            header = read_header(data, sop_class, sop_instance)
        except Rejected as exc:
            log.warning(
                "rejected instance %s from %s: %s (status 0x%04X)",
                sop_instance[:64],
                entry.calling_ae if entry else "?",
                exc.reason,
                exc.status,
            )
            return exc.status
        try:
            stored = self.spool.store_input(data, header.study_uid, header.series_uid, header.sop_instance_uid)
        except SpoolFull as exc:
            log.error("refused instance %s: %s (status 0xA700)", sop_instance, exc)
            return OUT_OF_RESOURCES
        except OSError as exc:
            log.error("could not write instance %s to the spool: %s (status 0xA700)", sop_instance, exc)
            return OUT_OF_RESOURCES
        try:
            self._index(header, stored.path, stored.sha256, stored.size, entry)
        except SQLAlchemyError as exc:
            log.error("could not index instance %s: %s (status 0xA700)", sop_instance, exc)
            return OUT_OF_RESOURCES
        self.on_change()
        return 0x0000

    def _index(self, header: Header, path: str, sha256: str, size: int, entry: _AssociationLog | None) -> None:
        now = utcnow()
        with self._lock, self.db.session() as session:
            existing = session.get(Instance, header.sop_instance_uid)
            if existing is not None:
                if existing.sha256 == sha256:
                    log.info("duplicate of instance %s ignored (identical content)", header.sop_instance_uid)
                    return
                log.warning(
                    "instance %s re-sent with different content; keeping both files, indexing the new one",
                    header.sop_instance_uid,
                )
                self.db.record_event(
                    session,
                    header.study_uid,
                    "replaced",
                    sop_instance_uid=header.sop_instance_uid,
                    old_sha256=existing.sha256,
                    new_sha256=sha256,
                )
                existing.path, existing.sha256, existing.size = path, sha256, size
                existing.received_at, existing.routed_at = now, None
            else:
                session.add(
                    Instance(
                        sop_instance_uid=header.sop_instance_uid,
                        sop_class_uid=header.sop_class_uid,
                        study_uid=header.study_uid,
                        series_uid=header.series_uid,
                        patient_id=header.patient_id,
                        modality=header.modality,
                        transfer_syntax=header.transfer_syntax,
                        path=path,
                        sha256=sha256,
                        size=size,
                        calling_ae=entry.calling_ae if entry else "",
                        peer_address=entry.address if entry else "",
                        association_id=entry.association_id if entry else "",
                        received_at=now,
                    )
                )
            series = session.get(Series, header.series_uid)
            if series is None:
                series = Series(
                    series_uid=header.series_uid,
                    study_uid=header.study_uid,
                    modality=header.modality,
                    instance_count=0,
                    first_received_at=now,
                )
                session.add(series)
            series.instance_count = (series.instance_count or 0) + 1
            series.last_received_at = now
            series.released_at = None  # new data: the quiet period starts again
            if series.completed_at is not None and not is_nm_object(header.sop_class_uid, header.modality):
                series.completed_at, series.completed_by = None, ""  # late data reopens a series
            self.db.record_event(
                session,
                header.study_uid,
                "received",
                sop_instance_uid=header.sop_instance_uid,
                series_uid=header.series_uid,
                calling_ae=entry.calling_ae if entry else "",
                address=entry.address if entry else "",
            )
        if entry is not None:
            entry.series.add(header.series_uid)
