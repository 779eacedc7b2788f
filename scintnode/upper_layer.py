"""The DICOM Upper Layer of the receiver (PS3.8): associations over blocking sockets, one thread each.

pynetdicom's acceptor runs two threads per association that poll each other in 1 ms steps and build
event objects for every PDU; its protocol stack alone stops at about 0.3 of DCMTK storescp on these
machines (../shared/docs/ingest-baselines.md). Here an association's thread blocks on its socket and
handles each PDU as it arrives. The rare, intricate part, association negotiation, still goes through
pynetdicom's PDU codecs and presentation-context negotiation; the hot path, P-DATA reassembly and DIMSE
command sets, is done here."""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import ssl
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from scintnode import dimse_command
from scintnode.dimse_command import Command, CommandError
from scintnode.implementation import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

log = logging.getLogger(__name__)

A_ASSOCIATE_RQ_TYPE, A_ASSOCIATE_AC_TYPE, A_ASSOCIATE_RJ_TYPE = 0x01, 0x02, 0x03
P_DATA_TF_TYPE, A_RELEASE_RQ_TYPE, A_RELEASE_RP_TYPE, A_ABORT_TYPE = 0x04, 0x05, 0x06, 0x07

# A-ASSOCIATE-RJ (result, source, reason), PS3.8 9.3.4
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # permanent, service user, calling AE title not recognised
REJECT_CALLED_AE = (0x01, 0x01, 0x07)  # permanent, service user, called AE title not recognised
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)  # transient, service provider (presentation), local limit exceeded
# A-ABORT reasons from the service provider, PS3.8 9.3.8
ABORT_UNRECOGNISED_PDU, ABORT_UNEXPECTED_PDU, ABORT_INVALID_PARAMETER = 0x01, 0x02, 0x06

ASSOCIATE_RQ_LIMIT = 1 << 20  # an A-ASSOCIATE-RQ with every storage class proposed is ~30 KiB
UNLIMITED_PDU_CAP = 64 << 20  # the most a P-DATA-TF may hold when the node advertises no maximum
TOLERATED_PDU = 1 << 20  # some senders overrun the maximum the node advertises: served, up to this size
RELEASE_LINGER_SECONDS = 2.0  # after A-RELEASE-RP, how long to wait for the requestor to close
_MCH_COMMAND, _MCH_LAST = 0x01, 0x02


class ProtocolError(Exception):
    """The peer broke the protocol: the association is aborted with `reason`."""

    def __init__(self, reason: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class PeerGone(Exception):
    """The connection closed or failed."""


class TimedOut(PeerGone):
    """Nothing arrived within the network timeout: the association is aborted."""


@dataclass
class Association:
    """One accepted association as the service sees it."""

    calling_ae: str
    called_ae: str
    address: str
    contexts: dict[int, PresentationContext] = field(default_factory=dict)


class StorageService(Protocol):
    """What the Upper Layer asks of the receiver."""

    def admits_address(self, address: str) -> bool:
        """Whether any allowed caller could connect from this address (checked before the association)."""
        ...

    def admits(self, calling_ae: str, address: str) -> bool: ...

    def established(self, association: Association) -> None: ...

    def store(
        self, association: Association, command: Command, transfer_syntax: str, data_set: Sequence[bytes | memoryview]
    ) -> tuple[int, str]:
        """Keep one instance, given as the fragments its data set arrived in; the status to answer and, for a
        failure, why (the Error Comment)."""
        ...

    def release_requested(self, association: Association) -> None: ...

    def ended(self, association: Association, released: bool) -> None: ...


@dataclass(frozen=True)
class AcceptorSettings:
    """With no ``required_called_ae``, the node answers whatever called AE title it is asked by, as pynetdicom's
    and Orthanc's acceptors do by default."""

    max_pdu: int  # advertised to requestors; 0 means no limit
    network_timeout: float
    max_associations: int
    supported_contexts: Sequence[PresentationContext]
    required_called_ae: str | None = None  # set: a request for any other called AE title is rejected


def _pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, len(body)) + body


def _reject(result: int, source: int, reason: int) -> bytes:
    return _pdu(A_ASSOCIATE_RJ_TYPE, bytes((0, result, source, reason)))


def _abort(reason: int) -> bytes:
    return _pdu(A_ABORT_TYPE, bytes((0, 0, 0x02, reason)))


class _Connection:
    """One TCP connection: the association request, then P-DATA until release or abort."""

    def __init__(self, sock: socket.socket, address: str, server: AcceptorServer) -> None:
        self.sock = sock
        self.address = address
        self.server = server
        self.settings = server.settings
        self.peer_max_pdu = 0
        self.association: Association | None = None
        self._counted = False  # holds one of the server's association places
        self._command: list[bytes | memoryview] = []
        self._data_set: list[bytes | memoryview] = []
        self._pending: tuple[int, Command] | None = None  # a command whose data set is still arriving

    # -- reading ---------------------------------------------------------------------------------
    def _read(self, size: int) -> bytearray:
        buffer = bytearray(size)
        view, got = memoryview(buffer), 0
        try:
            while got < size:
                count = self.sock.recv_into(view[got:], size - got)
                if count == 0:
                    raise PeerGone("the peer closed the connection")
                got += count
        except TimeoutError as exc:
            raise TimedOut(f"nothing arrived for {self.settings.network_timeout:g} s") from exc
        except OSError as exc:
            raise PeerGone(f"{type(exc).__name__}: {exc}") from exc
        return buffer

    def _read_pdu(self, limit: int) -> tuple[int, bytearray, bytes]:
        header = bytes(self._read(6))
        pdu_type, _, length = struct.unpack(">BBI", header)
        if not A_ASSOCIATE_RQ_TYPE <= pdu_type <= A_ABORT_TYPE:
            raise ProtocolError(ABORT_UNRECOGNISED_PDU, f"unknown PDU type 0x{pdu_type:02X}")
        if length > limit:
            raise ProtocolError(ABORT_INVALID_PARAMETER, f"PDU of {length} bytes exceeds the limit of {limit}")
        return pdu_type, self._read(length), header

    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (TimeoutError, OSError) as exc:
            raise PeerGone(f"{type(exc).__name__}: {exc}") from exc

    # -- the association -------------------------------------------------------------------------
    def serve(self) -> None:
        released = False
        try:
            if self._associate():
                released = self._transfer()
        except ProtocolError as exc:
            log.warning("association from %s aborted: %s", self.address, exc)
            with contextlib.suppress(OSError):
                self.sock.sendall(_abort(exc.reason))
        except PeerGone as exc:
            if self.association is not None:
                log.warning("association from %s ended without release: %s", self.address, exc)
            if isinstance(exc, TimedOut):
                with contextlib.suppress(OSError):
                    self.sock.sendall(_abort(0x00))
        finally:
            self._give_back_place()
            if self.association is not None:
                self.server.service.ended(self.association, released)

    def _associate(self) -> bool:
        pdu_type, body, header = self._read_pdu(ASSOCIATE_RQ_LIMIT)
        if pdu_type != A_ASSOCIATE_RQ_TYPE:
            raise ProtocolError(ABORT_UNEXPECTED_PDU, f"PDU type 0x{pdu_type:02X} before A-ASSOCIATE-RQ")
        request = A_ASSOCIATE_RQ()
        try:
            request.decode(header + bytes(body))
            primitive = request.to_primitive()
        except Exception as exc:  # pynetdicom raises assorted types for a malformed request
            raise ProtocolError(ABORT_INVALID_PARAMETER, f"malformed A-ASSOCIATE-RQ: {exc}") from exc
        calling = str(primitive.calling_ae_title).strip()
        called = str(primitive.called_ae_title).strip()
        required = self.settings.required_called_ae
        if required is not None and called != required:
            log.warning(
                "association from %r at %s rejected: it called %r, this node is %r",
                calling,
                self.address,
                called,
                required,
            )
            self._send(_reject(*REJECT_CALLED_AE))
            return False
        if not self.server.service.admits(calling, self.address):
            self._send(_reject(*REJECT_CALLING_AE))
            return False
        self._counted = self.server.association_started()
        if not self._counted:
            log.warning(
                "association from %r at %s rejected: %d associations open",
                calling,
                self.address,
                self.settings.max_associations,
            )
            self._send(_reject(*REJECT_LOCAL_LIMIT))
            return False
        accept, contexts = self._negotiate(primitive)
        self.association = Association(calling, called, self.address, contexts)
        self._send(accept)
        self.server.service.established(self.association)
        return True

    def _negotiate(self, request: A_ASSOCIATE) -> tuple[bytes, dict[int, PresentationContext]]:
        roles = {
            item.sop_class_uid: (item.scu_role, item.scp_role)
            for item in request.user_information
            if isinstance(item, SCP_SCU_RoleSelectionNegotiation)
        }
        results, role_replies = negotiate_as_acceptor(
            request.presentation_context_definition_list, list(self.settings.supported_contexts), roles or None
        )
        self.peer_max_pdu = int(request.maximum_length_received or 0)
        maximum = MaximumLengthNotification()
        maximum.maximum_length_received = self.settings.max_pdu
        implementation = ImplementationClassUIDNotification()
        implementation.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        version = ImplementationVersionNameNotification()
        version.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        primitive = A_ASSOCIATE()
        primitive.application_context_name = request.application_context_name
        primitive.calling_ae_title = request.calling_ae_title
        primitive.called_ae_title = request.called_ae_title
        primitive.result, primitive.result_source = 0x00, 0x01
        primitive.presentation_context_definition_results_list = results
        primitive.user_information = [maximum, implementation, version, *role_replies]
        accept = A_ASSOCIATE_AC()
        accept.from_primitive(primitive)
        accepted = {int(cx.context_id): cx for cx in results if cx.result == 0x00 and cx.context_id is not None}
        return accept.encode(), accepted

    def _transfer(self) -> bool:
        """P-DATA until the requestor releases (True) or aborts (False)."""
        limit = max(self.settings.max_pdu, TOLERATED_PDU) if self.settings.max_pdu else UNLIMITED_PDU_CAP
        while True:
            pdu_type, body, _ = self._read_pdu(limit)
            if pdu_type == P_DATA_TF_TYPE:
                self._p_data(body)
            elif pdu_type == A_RELEASE_RQ_TYPE:
                assert self.association is not None
                self.server.service.release_requested(self.association)
                # before the A-RELEASE-RP: a sender that re-associates as soon as it has it must find its place free
                self._give_back_place()
                self._send(_pdu(A_RELEASE_RP_TYPE, b"\x00" * 4))
                self._linger()
                return True
            elif pdu_type == A_ABORT_TYPE:
                log.info("association from %s aborted by the requestor", self.address)
                return False
            else:
                raise ProtocolError(ABORT_UNEXPECTED_PDU, f"PDU type 0x{pdu_type:02X} during the association")

    def _give_back_place(self) -> None:
        if self._counted:
            self._counted = False
            self.server.association_ended()

    def _linger(self) -> None:
        """The requestor closes the connection once it has the A-RELEASE-RP; closing first could cut it off."""
        with contextlib.suppress(OSError):
            self.sock.settimeout(RELEASE_LINGER_SECONDS)
            while self.sock.recv(4096):
                pass

    def _p_data(self, body: bytearray) -> None:
        view, offset = memoryview(body), 0
        while offset < len(body):
            if offset + 6 > len(body):
                raise ProtocolError(ABORT_INVALID_PARAMETER, "P-DATA-TF ends inside a PDV item header")
            length, context_id, control = struct.unpack_from(">IBB", body, offset)
            end = offset + 4 + length
            if length < 2 or end > len(body):
                raise ProtocolError(ABORT_INVALID_PARAMETER, f"PDV item length {length} does not fit its PDU")
            fragment = view[offset + 6 : end]
            offset = end
            if control & _MCH_COMMAND:
                self._command.append(fragment)
                if control & _MCH_LAST:
                    self._command_complete(context_id)
            else:
                if self._pending is None or self._pending[0] != context_id:
                    raise ProtocolError(ABORT_UNEXPECTED_PDU, "data set fragment without its command")
                self._data_set.append(fragment)
                if control & _MCH_LAST:
                    pending_context, command = self._pending
                    data_set, self._data_set = self._data_set, []
                    self._pending = None
                    self._dispatch(pending_context, command, data_set)

    def _command_complete(self, context_id: int) -> None:
        raw = b"".join(self._command)
        self._command.clear()
        if self._pending is not None:
            raise ProtocolError(ABORT_UNEXPECTED_PDU, "a command arrived before the previous data set ended")
        try:
            command = dimse_command.decode(raw)
        except CommandError as exc:
            raise ProtocolError(ABORT_INVALID_PARAMETER, f"unreadable command set: {exc}") from exc
        if command.has_data_set:
            self._pending = (context_id, command)
        else:
            self._dispatch(context_id, command, None)

    def _dispatch(self, context_id: int, command: Command, data_set: Sequence[bytes | memoryview] | None) -> None:
        assert self.association is not None
        context = self.association.contexts.get(context_id)
        if context is None:
            raise ProtocolError(ABORT_INVALID_PARAMETER, f"presentation context {context_id} was not accepted")
        if command.field == dimse_command.C_CANCEL_RQ:
            return
        if command.field == dimse_command.C_ECHO_RQ:
            status, comment = 0x0000, ""
        elif command.field == dimse_command.C_STORE_RQ and data_set is not None:
            if command.sop_class_uid != context.abstract_syntax:
                status, comment = 0x0122, "SOP Class does not match the presentation context"
            else:
                status, comment = self.server.service.store(
                    self.association, command, str(context.transfer_syntax[0]), data_set
                )
        else:
            status, comment = dimse_command.UNRECOGNISED_OPERATION, "the node serves C-STORE and C-ECHO only"
        self._send_command(context_id, dimse_command.response(command, status, comment))

    def _send_command(self, context_id: int, command_set: bytes) -> None:
        room = self.peer_max_pdu - 6 if self.peer_max_pdu else len(command_set)
        room = max(room, 1)
        pieces = [command_set[start : start + room] for start in range(0, len(command_set), room)]
        pdus = []
        for number, piece in enumerate(pieces):
            control = _MCH_COMMAND | (_MCH_LAST if number == len(pieces) - 1 else 0)
            pdus.append(_pdu(P_DATA_TF_TYPE, struct.pack(">IBB", len(piece) + 2, context_id, control) + piece))
        self._send(b"".join(pdus))


class AcceptorServer(socketserver.ThreadingTCPServer):
    """Accepts connections and serves each on its own thread; counts connections and associations so that a
    flood of idle sockets or associations is refused instead of costing a thread each without limit."""

    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # a burst of modalities must find the accept queue open, not wait out SYN retries

    def __init__(
        self,
        address: tuple[str, int],
        settings: AcceptorSettings,
        service: StorageService,
        *,
        max_connections: int,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.settings = settings
        self.service = service
        self.max_connections = max_connections
        self.tls = tls
        self._lock = threading.Lock()
        self._closed = threading.Condition(self._lock)  # notified each time a connection ends
        self.open_connections = 0
        self.open_associations = 0
        super().__init__(address, socketserver.BaseRequestHandler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def process_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:  # type: ignore[override]
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name=f"scintnode-association-{client_address[0]}:{client_address[1]}",
            daemon=True,
        )
        thread.start()

    def verify_request(self, request: socket.socket | tuple[bytes, socket.socket], client_address: object) -> bool:
        address = str(client_address[0]) if isinstance(client_address, tuple) else str(client_address)
        if not self.service.admits_address(address):
            log.warning("connection from %s closed: no allowed caller at this address", address)
            return False
        with self._lock:
            if self.open_connections >= self.max_connections:
                log.warning("connection from %s closed: %d connections open already", address, self.max_connections)
                return False
            self.open_connections += 1
        return True

    def process_request_thread(self, request: socket.socket, client_address: tuple[str, int]) -> None:  # type: ignore[override]
        address = str(client_address[0])
        sock = request
        try:
            # TCP_NODELAY: the node answers in small PDUs, which Nagle would hold for ~40 ms each
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                # the handshake runs on this connection's thread, so a silent client cannot stall the accept loop
                sock = self.tls.wrap_socket(sock, server_side=True)
                sock.do_handshake()
            sock.settimeout(self.settings.network_timeout)
            _Connection(sock, address, self).serve()
        except (OSError, ssl.SSLError) as exc:
            log.warning("connection from %s failed: %s", address, exc)
        except Exception:  # one connection's failure must never reach the accept loop
            log.exception("connection from %s failed", address)
        finally:
            self.shutdown_request(sock)
            with self._lock:
                self.open_connections -= 1
                self._closed.notify_all()

    def wait_until_idle(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for every connection to end; the number still open when it returns."""
        with self._closed:
            self._closed.wait_for(lambda: self.open_connections == 0, timeout=timeout)
            return self.open_connections

    def association_started(self) -> bool:
        with self._lock:
            if self.open_associations >= self.settings.max_associations:
                return False
            self.open_associations += 1
            return True

    def association_ended(self) -> None:
        with self._lock:
            self.open_associations -= 1
