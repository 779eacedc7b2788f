"""The header check of a received instance: its identifying attributes and its declared image size.

Only the eleven attributes the node needs are decoded; every other element is stepped over unread, and
pixel data are never decoded (their declared size is only compared with the bytes that arrived). Decoding
the whole header through pydicom's Dataset cost a third of the receive path's time under the GIL."""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from io import BytesIO

from pydicom import dcmread
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.dataelem import RawDataElement
from pydicom.filereader import data_element_generator
from pydicom.tag import BaseTag
from pydicom.uid import RE_VALID_UID, UID

from scintnode.receive_index import Header

# C-STORE failure statuses for bad input (PS3.4 Annex B.2.3)
DATASET_MISMATCH = 0xA900  # dataset does not match the SOP class / the request (wrong or missing UIDs)
CANNOT_UNDERSTAND = 0xC210  # not a decodable DICOM dataset
INVALID_UID = 0xC220  # a UID that is not a valid DICOM UID (e.g. holding path characters)

PIXEL_DATA_TAG = (0x7FE0, 0x0010)
UNDEFINED_LENGTH = 0xFFFFFFFF
# explicit VR elements whose length is 4 bytes after 2 reserved ones (PS3.5 7.1.2)
_LONG_LENGTH_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)

_SPECIFIC_CHARACTER_SET = 0x00080005
_UIDS = {  # Header field -> tag
    "sop_class_uid": 0x00080016,
    "sop_instance_uid": 0x00080018,
    "study_uid": 0x0020000D,
    "series_uid": 0x0020000E,
}
_PATIENT_ID, _MODALITY = 0x00100020, 0x00080060
_ROWS, _COLUMNS, _SAMPLES, _BITS, _FRAMES = 0x00280010, 0x00280011, 0x00280002, 0x00280100, 0x00280008
_SIZE_NAMES = {
    _ROWS: "Rows",
    _COLUMNS: "Columns",
    _SAMPLES: "Samples per Pixel",
    _BITS: "Bits Allocated",
    _FRAMES: "Number of Frames",
}
# plain ints: pydicom tests each element's tag against this set, and BaseTag keys compare in Python
_WANTED = [*_UIDS.values(), _PATIENT_ID, _MODALITY, *_SIZE_NAMES]
_VALID_UID = re.compile(RE_VALID_UID)


class Rejected(Exception):
    """An instance the node will not store, with the status to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def read_header(data: bytes, requested_sop_class: str, requested_sop_instance: str) -> Header:
    """Parse and check the header of a received Part-10 byte stream; raise Rejected with the status."""
    stream = BytesIO(data)
    meta = _meta_transfer_syntax(data)
    try:
        if meta is not None and meta[0].is_transfer_syntax and not meta[0].is_deflated:
            # the data set straight after the File Meta: re-reading the meta through dcmread costs a third of
            # the header parse, and `part10` wrote it moments ago
            syntax, start = meta
            check_encoding(data, start, syntax)
            stream.seek(start)
            elements: dict[int, RawDataElement] = {}
            for element in data_element_generator(
                stream,
                syntax.is_implicit_VR,
                syntax.is_little_endian,
                stop_when=_before_pixel_data,
                specific_tags=_WANTED,
            ):
                if isinstance(element, RawDataElement):  # an undefined-length sequence comes as a DataElement
                    elements[int(element.tag)] = element
            transfer_syntax, explicit = str(syntax), not syntax.is_implicit_VR
        else:
            ds = dcmread(stream, stop_before_pixels=True)
            transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
            explicit = not ds.original_encoding[0]  # as read: the declared syntax may be damaged or unknown
            elements = {
                tag: raw
                for tag in (_SPECIFIC_CHARACTER_SET, *_WANTED)
                if tag in ds and isinstance(raw := ds.get_item(tag), RawDataElement)
            }
        pixel_offset = stream.tell()
    except Rejected:
        raise
    except RecursionError as exc:
        raise Rejected(CANNOT_UNDERSTAND, "header cannot be decoded: sequences nested too deeply") from exc
    except MemoryError as exc:
        raise Rejected(CANNOT_UNDERSTAND, "header cannot be decoded: a declared length exceeds memory") from exc
    except Exception as exc:  # pydicom raises many types for damaged data (ValueError, zlib.error, struct.error...)
        raise Rejected(CANNOT_UNDERSTAND, f"header cannot be decoded: {type(exc).__name__}: {exc}"[:300]) from exc
    uids = {name: _uid(elements.get(tag), name, explicit) for name, tag in _UIDS.items()}
    if not any(uids.values()):
        raise Rejected(
            CANNOT_UNDERSTAND,
            f"none of the identifying attributes were found: the data is not a DICOM data set in {transfer_syntax}",
        )
    for name, value in uids.items():
        if not value:
            raise Rejected(DATASET_MISMATCH, f"required attribute {name} is missing or empty")
        if len(value) > 64 or not _VALID_UID.match(value):
            raise Rejected(INVALID_UID, f"{name} is not a valid DICOM UID: {value[:80]!r}")
    if uids["sop_class_uid"] != requested_sop_class:
        raise Rejected(
            DATASET_MISMATCH,
            f"SOP Class UID {uids['sop_class_uid']} does not match the request ({requested_sop_class})",
        )
    if uids["sop_instance_uid"] != requested_sop_instance:
        raise Rejected(DATASET_MISMATCH, "SOP Instance UID does not match the C-STORE request")
    check_pixel_data(elements, data, pixel_offset, transfer_syntax)
    return Header(
        transfer_syntax=transfer_syntax,
        patient_id=_patient_id(elements),
        modality=_text(elements.get(_MODALITY)).strip().upper()[:16],
        **uids,
    )


def _before_pixel_data(tag: BaseTag, vr: str | None, length: int) -> bool:
    return bool(0x7FE00008 <= tag.real <= 0x7FE00010)  # Float, Double Float and Pixel Data; .real is a plain int


def _text(element: RawDataElement | None) -> str:
    """The value of a single-valued ASCII element (UI, CS), without padding."""
    if element is None or not element.value:
        return ""
    return bytes(element.value).decode("latin-1").rstrip("\x00 ")


def _uid(element: RawDataElement | None, name: str, explicit: bool) -> str:
    if explicit and element is not None and element.VR not in ("UI", "UN"):
        raise Rejected(INVALID_UID, f"{name} is encoded as {element.VR}, not as a UID (UI)")
    return _text(element)


def _patient_id(elements: Mapping[int, RawDataElement]) -> str:
    element = elements.get(_PATIENT_ID)
    if element is None or not element.value:
        return ""
    charset = _text(elements.get(_SPECIFIC_CHARACTER_SET))
    encodings = convert_encodings([part.strip() for part in charset.split("\\")] if charset else None)
    return str(decode_bytes(bytes(element.value), encodings, {0x5C})).rstrip("\x00 ")[:64]


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


def check_pixel_data(elements: Mapping[int, RawDataElement], data: bytes, offset: int, transfer_syntax: str) -> None:
    """Cheap consistency checks of an image's declared size against the Pixel Data element that arrived.

    `offset` is where the header read stopped, before the Pixel Data element (or at the end when there is
    none)."""
    syntax = UID(transfer_syntax)
    if not syntax.is_transfer_syntax or syntax.is_deflated:
        return  # offsets refer to the inflated stream; the header was read, that is as far as cheap goes
    header = data[offset : offset + 12]
    present = len(header) >= 8 and _tag(header, syntax.is_little_endian) == PIXEL_DATA_TAG
    is_image = _ROWS in elements or _COLUMNS in elements
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
    explicit, little = not syntax.is_implicit_VR, syntax.is_little_endian
    rows, columns = (
        _unsigned_short(elements, _ROWS, explicit, little),
        _unsigned_short(elements, _COLUMNS, explicit, little),
    )
    bits = _unsigned_short(elements, _BITS, explicit, little)
    samples = _unsigned_short(elements, _SAMPLES, explicit, little, default=1)
    frames = _integer_string(elements, _FRAMES, explicit)
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


def _unsigned_short(
    elements: Mapping[int, RawDataElement], tag: int, explicit: bool, little: bool, default: int | None = None
) -> int:
    element = elements.get(tag)
    if element is None or not element.value:
        if default is None:
            raise Rejected(DATASET_MISMATCH, f"{_SIZE_NAMES[tag]} is missing")
        return default
    if explicit and element.VR != "US":  # None: pydicom found no valid VR there and fell back to implicit
        raise Rejected(
            CANNOT_UNDERSTAND, f"header cannot be decoded: {_SIZE_NAMES[tag]} is encoded as {element.VR}, not US"
        )
    if len(element.value) != 2:
        raise Rejected(DATASET_MISMATCH, f"{_SIZE_NAMES[tag]} holds {len(element.value)} bytes, not one number")
    return int.from_bytes(element.value, "little" if little else "big")


def _integer_string(elements: Mapping[int, RawDataElement], tag: int, explicit: bool) -> int:
    """An IS value; absent or empty means 1 (Number of Frames is optional for single-frame images)."""
    element = elements.get(tag)
    text = _text(element).strip()
    if not text:
        return 1
    if explicit and element is not None and element.VR not in ("IS", "UN"):
        raise Rejected(
            CANNOT_UNDERSTAND, f"header cannot be decoded: {_SIZE_NAMES[tag]} is encoded as {element.VR}, not IS"
        )
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)  # "2.0": pydicom reads a whole decimal as IS too
    except ValueError:
        number = float("nan")
    if not number.is_integer():
        raise Rejected(DATASET_MISMATCH, f"{_SIZE_NAMES[tag]} is not a number ({text[:20]!r})")
    return int(number)


def _tag(header: bytes, little_endian: bool) -> tuple[int, int]:
    group, element = struct.unpack("<HH" if little_endian else ">HH", header[:4])
    return int(group), int(element)
