"""Receive: the Storage SCP. Each instance goes to the spool and the index before success is answered.

It never decodes pixel data and never runs a network; bad input gets a DICOM failure status and a log
line, and the handler never raises (a raising handler would answer 0xC211 with no explanation)."""

from __future__ import annotations

import logging
import struct
import threading
import uuid
from collections.abc import Callable, Sequence
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pynetdicom import (
    ALL_TRANSFER_SYNTAXES,
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    AllStoragePresentationContexts,
    build_context,
)
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification
from sqlalchemy.exc import SQLAlchemyError

from scintnode.config import NodeSettings
from scintnode.db import Database, GroupCommit
from scintnode.dimse_command import Command
from scintnode.metrics import Metrics
from scintnode.receive_index import (
    AssociationLog,
    Header,
    ReleaseWrite,
    StoreWrite,
    write_index_batch,
)
from scintnode.security import CallerPolicy, server_tls_context
from scintnode.spool import Spool, SpoolFull
from scintnode.upper_layer import AcceptorServer, AcceptorSettings, Association

log = logging.getLogger(__name__)

# C-STORE failure statuses (PS3.4 Annex B.2.3) and what we use them for
OUT_OF_RESOURCES = 0xA700  # spool full or the index cannot be written: the sender may retry later
DATASET_MISMATCH = 0xA900  # dataset does not match the SOP class / the request (wrong or missing UIDs)
CANNOT_UNDERSTAND = 0xC210  # not a decodable DICOM dataset
INVALID_UID = 0xC220  # a UID that is not a valid DICOM UID (e.g. holding path characters)

PIXEL_DATA_TAG = (0x7FE0, 0x0010)
UNDEFINED_LENGTH = 0xFFFFFFFF
# explicit VR elements whose length is 4 bytes after 2 reserved ones (PS3.5 7.1.2)
_LONG_LENGTH_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)


class Rejected(Exception):
    """An instance the node will not store, with the status to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def read_header(data: bytes, requested_sop_class: str, requested_sop_instance: str) -> Header:
    """Parse and check the header of a received Part-10 byte stream; raise Rejected with the status.

    Pixel data are never decoded: their declared size is only compared with the bytes that arrived."""
    stream = BytesIO(data)
    meta = _meta_transfer_syntax(data)
    try:
        if meta is not None and meta[0].is_transfer_syntax and not meta[0].is_deflated:
            # the data set straight after the File Meta: re-reading the meta through dcmread costs a third of
            # the header parse, and `part10` wrote it moments ago
            check_encoding(data, meta[1], meta[0])
            stream.seek(meta[1])
            ds: Dataset = read_dataset(
                stream, meta[0].is_implicit_VR, meta[0].is_little_endian, stop_when=_before_pixel_data
            )
            transfer_syntax = str(meta[0])
        else:
            ds = dcmread(stream, stop_before_pixels=True)
            transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
        pixel_offset = stream.tell()
        values = {
            "sop_class_uid": str(ds.get("SOPClassUID", "") or ""),
            "sop_instance_uid": str(ds.get("SOPInstanceUID", "") or ""),
            "study_uid": str(ds.get("StudyInstanceUID", "") or ""),
            "series_uid": str(ds.get("SeriesInstanceUID", "") or ""),
            "patient_id": str(ds.get("PatientID", "") or "")[:64],
            "modality": str(ds.get("Modality", "") or "").strip().upper()[:16],
        }
        for keyword in _IMAGE_SIZE_KEYWORDS:
            ds.get(keyword)  # pydicom converts values on first access: a damaged one must fail here, as undecodable
    except Rejected:
        raise
    except RecursionError as exc:
        raise Rejected(CANNOT_UNDERSTAND, "header cannot be decoded: sequences nested too deeply") from exc
    except MemoryError as exc:
        raise Rejected(CANNOT_UNDERSTAND, "header cannot be decoded: a declared length exceeds memory") from exc
    except Exception as exc:  # pydicom raises many types for damaged data (ValueError, zlib.error, struct.error...)
        raise Rejected(CANNOT_UNDERSTAND, f"header cannot be decoded: {type(exc).__name__}: {exc}"[:300]) from exc
    identifying = ("sop_class_uid", "sop_instance_uid", "study_uid", "series_uid")
    if not any(values[name] for name in identifying):
        raise Rejected(
            CANNOT_UNDERSTAND,
            f"none of the identifying attributes were found: the data is not a DICOM data set in {transfer_syntax}",
        )
    for name in identifying:
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
    check_pixel_data(ds, data, pixel_offset, transfer_syntax)
    return Header(transfer_syntax=transfer_syntax, **values)


_IMAGE_SIZE_KEYWORDS = ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "NumberOfFrames")


def _before_pixel_data(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag in (0x7FE00010, 0x7FE00009, 0x7FE00008)  # Pixel, Double Float and Float Pixel Data


def _meta_transfer_syntax(data: bytes) -> tuple[UID, int] | None:
    """The transfer syntax and the data set's offset in a Part-10 stream whose File Meta starts with its group
    length, as `part10` and pydicom write it; None for anything else (dcmread then reads it as it is)."""
    if data[128:132] != b"DICM" or data[132:138] != b"\x02\x00\x00\x00UL" or len(data) < 144:
        return None
    end = 144 + struct.unpack_from("<I", data, 140)[0]
    offset = 144
    while offset + 8 <= min(end, len(data)):
        group, element = struct.unpack_from("<HH", data, offset)
        if data[offset + 4 : offset + 6] in _LONG_LENGTH_VRS:
            value = offset + 12
            length = struct.unpack_from("<I", data, offset + 8)[0] if value <= len(data) else 0
        else:
            value, length = offset + 8, struct.unpack_from("<H", data, offset + 6)[0]
        if (group, element) == (0x0002, 0x0010):
            return UID(data[value : value + length].rstrip(b"\x00 ").decode("ascii", "replace")), end
        offset = value + length
    return None


def _meta_element(group_element: bytes, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return group_element + vr + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return group_element + vr + struct.pack("<H", len(value)) + value


def _ui(value: str) -> bytes:
    raw = value.encode("latin-1", "replace")
    return raw + b"\x00" if len(raw) % 2 else raw


_META_VERSION = _meta_element(b"\x02\x00\x01\x00", b"OB", b"\x00\x01")
_META_IMPLEMENTATION = _meta_element(b"\x02\x00\x12\x00", b"UI", _ui(PYNETDICOM_IMPLEMENTATION_UID)) + _meta_element(
    b"\x02\x00\x13\x00",
    b"SH",
    PYNETDICOM_IMPLEMENTATION_VERSION.encode() + b" " * (len(PYNETDICOM_IMPLEMENTATION_VERSION) % 2),
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


def check_encoding(data: bytes, start: int, syntax: UID) -> None:
    """Refuse a data set (at `start`) whose first element is implicit VR under an explicit VR syntax, or the
    other way round. pydicom would switch silently and read it, but the stored file would then lie about
    its encoding."""
    vr = data[start + 4 : start + 6]
    if len(vr) < 2:
        return
    looks_explicit = vr.isalpha() and vr.isupper()
    if looks_explicit == syntax.is_implicit_VR:
        found = "explicit" if looks_explicit else "implicit"
        raise Rejected(CANNOT_UNDERSTAND, f"the data is encoded in {found} VR, not in {syntax.name} as negotiated")


def _as_int(ds: Dataset, keyword: str, default: int | None = None) -> int:
    value: Any = ds.get(keyword, default)
    try:
        number = int(value)
    except (TypeError, ValueError) as exc:
        raise Rejected(DATASET_MISMATCH, f"{keyword} is missing or not a number ({str(value)[:20]!r})") from exc
    return number


def check_pixel_data(ds: Dataset, data: bytes, offset: int, transfer_syntax: str) -> None:
    """Cheap consistency checks of an image's declared size against the Pixel Data element that arrived.

    `offset` is where dcmread stopped, before the Pixel Data element (or at the end when there is none)."""
    syntax = UID(transfer_syntax)
    if not syntax.is_transfer_syntax or syntax.is_deflated:
        return  # offsets refer to the inflated stream; the header was read, that is as far as cheap goes
    header = data[offset : offset + 12]
    present = len(header) >= 8 and _tag(header, syntax.is_little_endian) == PIXEL_DATA_TAG
    is_image = "Rows" in ds or "Columns" in ds
    if not present:
        if is_image:
            raise Rejected(DATASET_MISMATCH, "image has Rows/Columns but no Pixel Data")
        return
    if not is_image:
        raise Rejected(DATASET_MISMATCH, "Pixel Data without Rows and Columns")
    endian = "<" if syntax.is_little_endian else ">"
    if syntax.is_implicit_VR:
        length, start = struct.unpack(endian + "I", header[4:8])[0], offset + 8
    elif header[4:6] in _LONG_LENGTH_VRS:
        if len(header) < 12:
            raise Rejected(DATASET_MISMATCH, "Pixel Data element is cut off")
        length, start = struct.unpack(endian + "I", header[8:12])[0], offset + 12
    else:
        length, start = struct.unpack(endian + "H", header[6:8])[0], offset + 8
    if syntax.is_encapsulated:
        if length != UNDEFINED_LENGTH:
            raise Rejected(
                CANNOT_UNDERSTAND,
                f"transfer syntax {syntax.name} needs encapsulated Pixel Data, but it has a defined length",
            )
        return
    if length == UNDEFINED_LENGTH:
        raise Rejected(
            CANNOT_UNDERSTAND, f"encapsulated (compressed) Pixel Data in the uncompressed transfer syntax {syntax.name}"
        )
    rows, columns = _as_int(ds, "Rows"), _as_int(ds, "Columns")
    bits, samples = _as_int(ds, "BitsAllocated"), _as_int(ds, "SamplesPerPixel", 1)
    frames = _as_int(ds, "NumberOfFrames", 1) if ds.get("NumberOfFrames") not in (None, "") else 1
    if rows <= 0 or columns <= 0 or frames <= 0 or samples not in (1, 3, 4) or bits not in (1, 8, 16, 32, 64):
        raise Rejected(
            DATASET_MISMATCH,
            f"inconsistent image size: Rows {rows}, Columns {columns}, Number of Frames {frames}, "
            f"Samples per Pixel {samples}, Bits Allocated {bits}",
        )
    expected = (rows * columns * frames * samples * bits + 7) // 8
    available = len(data) - start
    if length > available:
        raise Rejected(
            DATASET_MISMATCH, f"Pixel Data declares {length} bytes but only {max(available, 0)} arrived (truncated)"
        )
    if length < expected:
        raise Rejected(
            DATASET_MISMATCH,
            f"Pixel Data holds {length} bytes; {frames} frame(s) of {rows}x{columns}, {samples}x{bits} bits, "
            f"need {expected}",
        )


def _tag(header: bytes, little_endian: bool) -> tuple[int, int]:
    group, element = struct.unpack("<HH" if little_endian else ">HH", header[:4])
    return int(group), int(element)


def storage_contexts() -> list[PresentationContext]:
    """Verification and every storage class, in every transfer syntax: the receive path never decodes pixel
    data (the networks do, later), so compressed syntaxes are as welcome as uncompressed ones."""
    contexts = [build_context(Verification)]
    contexts += [build_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES) for cx in AllStoragePresentationContexts]
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
            db.engine, lambda connection, items: write_index_batch(connection, spool, items)
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
        settings = self.settings
        acceptor = AcceptorSettings(
            max_pdu=settings.max_pdu,
            network_timeout=settings.network_timeout_seconds,
            max_associations=settings.max_associations,
            supported_contexts=storage_contexts(),
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

    def stop(self) -> None:
        """Stop accepting associations; lets those in progress finish their current instance."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
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
            stored = self.spool.store_input(
                data, header.study_uid, header.series_uid, header.sop_instance_uid, sync_dir=False
            )
        except SpoolFull as exc:
            log.error("refused instance %s: %s (status 0xA700)", sop_instance, exc)
            return OUT_OF_RESOURCES, "the node's spool is full"
        except OSError as exc:
            log.error("could not write instance %s to the spool: %s (status 0xA700)", sop_instance, exc)
            return OUT_OF_RESOURCES, "the node could not write the instance"
        store = StoreWrite(header, stored, entry)
        try:
            self.index_writer.submit(store)  # returns once the row (and the file's rename) is durable
        except (SQLAlchemyError, OSError) as exc:
            log.error("could not index instance %s: %s (status 0xA700)", sop_instance, exc)
            return OUT_OF_RESOURCES, "the node could not index the instance"
        if not store.duplicate:
            if entry is not None:
                entry.series.add(header.series_uid)
            self.on_change()
        return 0x0000, ""
