"""DIMSE command sets (PS3.7 9.3, E.1): decoding the requests the node serves and encoding its responses.

A command set is a flat list of group-0000 elements in Implicit VR Little Endian, so a struct loop reads and
writes it in microseconds; pydicom's generic reader costs more than the rest of a C-STORE's protocol work."""

from __future__ import annotations

import struct
from dataclasses import dataclass

C_STORE_RQ = 0x0001
C_ECHO_RQ = 0x0030
C_CANCEL_RQ = 0x0FFF  # has no response
RESPONSE_BIT = 0x8000
NO_DATA_SET = 0x0101

UNRECOGNISED_OPERATION = 0x0211
ERROR_COMMENT_LENGTH = 64  # LO

_AFFECTED_SOP_CLASS = 0x00000002
_COMMAND_FIELD = 0x00000100
_MESSAGE_ID = 0x00000110
_MESSAGE_ID_RESPONDED_TO = 0x00000120
_DATA_SET_TYPE = 0x00000800
_STATUS = 0x00000900
_ERROR_COMMENT = 0x00000902
_AFFECTED_SOP_INSTANCE = 0x00001000


class CommandError(ValueError):
    """A command set that cannot be read: the association is aborted."""


@dataclass(frozen=True)
class Command:
    """The fields of a request that the node acts on."""

    field: int
    message_id: int
    has_data_set: bool
    sop_class_uid: str
    sop_instance_uid: str


def _text(value: bytes) -> str:
    return value.rstrip(b"\x00 ").decode("ascii", "replace").strip()


def _us(elements: dict[int, bytes], tag: int) -> int:
    value = elements.get(tag)
    if value is None or len(value) != 2:
        raise CommandError(f"command element ({tag >> 16:04X},{tag & 0xFFFF:04X}) is missing or not US")
    return int.from_bytes(value, "little")


def decode(data: bytes) -> Command:
    """Read a request's command set; raise CommandError when it is not one."""
    elements: dict[int, bytes] = {}
    offset, end = 0, len(data)
    while offset < end:
        if offset + 8 > end:
            raise CommandError("command set ends inside an element header")
        group, element, length = struct.unpack_from("<HHI", data, offset)
        offset += 8
        if group != 0x0000 or offset + length > end:
            raise CommandError(f"element ({group:04X},{element:04X}) does not belong in a command set")
        elements[element] = data[offset : offset + length]
        offset += length
    return Command(
        field=_us(elements, _COMMAND_FIELD),
        message_id=_us(elements, _MESSAGE_ID),
        has_data_set=_us(elements, _DATA_SET_TYPE) != NO_DATA_SET,
        sop_class_uid=_text(elements.get(_AFFECTED_SOP_CLASS, b"")),
        sop_instance_uid=_text(elements.get(_AFFECTED_SOP_INSTANCE, b"")),
    )


def _element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0, tag & 0xFFFF, len(value)) + value


def _even(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii", "replace")
    return raw + pad if len(raw) % 2 else raw


def response(request: Command, status: int, error_comment: str = "") -> bytes:
    """The response command set to `request`: the same service with the response bit, and `status`.

    A failure carries its reason as Error Comment (0000,0902), which storescu and PACS logs show."""
    body = []
    if request.sop_class_uid:
        body.append(_element(_AFFECTED_SOP_CLASS, _even(request.sop_class_uid, b"\x00")))
    body += [
        _element(_COMMAND_FIELD, struct.pack("<H", request.field | RESPONSE_BIT)),
        _element(_MESSAGE_ID_RESPONDED_TO, struct.pack("<H", request.message_id)),
        _element(_DATA_SET_TYPE, struct.pack("<H", NO_DATA_SET)),
        _element(_STATUS, struct.pack("<H", status)),
    ]
    if error_comment and status != 0x0000:
        printable = "".join(c if " " <= c <= "~" and c != "\\" else "?" for c in error_comment)  # LO's repertoire
        body.append(_element(_ERROR_COMMENT, _even(printable[:ERROR_COMMENT_LENGTH].strip(), b" ")))
    if request.sop_instance_uid:
        body.append(_element(_AFFECTED_SOP_INSTANCE, _even(request.sop_instance_uid, b"\x00")))
    elements = b"".join(body)
    return _element(0x0000, struct.pack("<I", len(elements))) + elements
