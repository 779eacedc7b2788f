"""A DICOM requestor over a plain socket, for what no well-behaved requestor sends: broken PDUs, transfers
cut off in the middle, operations on the wrong context."""

from __future__ import annotations

import socket
import struct

from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context

A_ASSOCIATE_AC, P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x02, 0x04, 0x05, 0x06, 0x07
COMMAND_LAST, DATA_SET_MORE, DATA_SET_LAST = 0x03, 0x00, 0x02


def pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, len(body)) + body


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """The next PDU's type and body; type 0 when the connection closed first."""
    header = b""
    while len(header) < 6:
        chunk = sock.recv(6 - len(header))
        if not chunk:
            return 0, b""
        header += chunk
    pdu_type, _, length = struct.unpack(">BBI", header)
    body = b""
    while len(body) < length:
        body += sock.recv(length - len(body))
    return pdu_type, body


def associate(port: int, abstract_syntax: str, transfer_syntax: str = ImplicitVRLittleEndian) -> socket.socket:
    """An established association with one presentation context, ID 1."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "RAWCAM"
    primitive.called_ae_title = "SCINTNODE"
    context = build_context(abstract_syntax, [transfer_syntax])
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = 16384
    primitive.user_information = [maximum]
    request = A_ASSOCIATE_RQ()
    request.from_primitive(primitive)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(request.encode())
    pdu_type, _ = read_pdu(sock)
    if pdu_type != A_ASSOCIATE_AC:
        sock.close()
        raise ConnectionError(f"association not accepted (PDU type 0x{pdu_type:02X})")
    return sock


def pdv(context_id: int, control: int, fragment: bytes) -> bytes:
    """One P-DATA-TF holding one PDV."""
    return pdu(P_DATA_TF, struct.pack(">IBB", len(fragment) + 2, context_id, control) + fragment)


def command(
    field: int, sop_class: str, sop_instance: str = "", message_id: int = 7, has_data_set: bool = False
) -> bytes:
    """A request's command set in Implicit VR Little Endian."""

    def uid(text: str) -> bytes:
        raw = text.encode()
        return raw + b"\x00" if len(raw) % 2 else raw

    items = [(0x0002, uid(sop_class)), (0x0100, struct.pack("<H", field)), (0x0110, struct.pack("<H", message_id))]
    items.append((0x0800, struct.pack("<H", 0x0000 if has_data_set else 0x0101)))
    if sop_instance:
        items.append((0x1000, uid(sop_instance)))
    elements = b"".join(struct.pack("<HHI", 0, tag, len(value)) + value for tag, value in items)
    return struct.pack("<HHI", 0, 0, 4) + struct.pack("<I", len(elements)) + elements


def elements(command_set: bytes) -> dict[int, bytes]:
    """A response's command elements by element number."""
    found, offset = {}, 0
    while offset < len(command_set):
        _, element, length = struct.unpack_from("<HHI", command_set, offset)
        found[element] = command_set[offset + 8 : offset + 8 + length]
        offset += 8 + length
    return found
