"""Security of the receive side: who may connect (calling AE title and address/CIDR) and DICOM TLS.

The Storage SCP (receive.py) asks CallerPolicy at TCP accept and again at the association request, and
wraps its sockets with the context server_tls_context builds from the node's TLS settings."""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from scintnode.config import AllowedCaller, TlsSettings

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class TlsConfigError(ValueError):
    """The TLS files cannot be used; the message names the file."""


def parse_address(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The peer's IP address, IPv4-mapped IPv6 (::ffff:10.0.0.7) read as IPv4; None when not an IP address."""
    try:
        parsed = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped
    return parsed


@dataclass(frozen=True)
class CallerRule:
    ae_title: str
    network: IPNetwork | None  # None: from any address

    def covers_address(self, address: str) -> bool:
        if self.network is None:
            return True
        parsed = parse_address(address)
        return parsed is not None and parsed.version == self.network.version and parsed in self.network


class CallerPolicy:
    """The allow-list: None lets every caller in; otherwise a caller needs a rule for its AE title and address."""

    def __init__(self, entries: Sequence[str | AllowedCaller] | None) -> None:
        self.open = entries is None
        self.rules = tuple(
            CallerRule(entry, None)
            if isinstance(entry, str)
            else CallerRule(entry.ae_title, ipaddress.ip_network(entry.address) if entry.address else None)
            for entry in entries or ()
        )

    @property
    def ae_titles(self) -> list[str]:
        return sorted({rule.ae_title for rule in self.rules})

    def permits_address(self, address: str) -> bool:
        """Could any caller at this address be allowed? Checked at TCP accept, before a byte of DICOM."""
        return self.open or any(rule.covers_address(address) for rule in self.rules)

    def permits(self, ae_title: str, address: str) -> bool:
        """Checked at the association request, when the calling AE title is known."""
        title = ae_title.strip()
        return self.open or any(rule.ae_title == title and rule.covers_address(address) for rule in self.rules)


class _DeferredHandshakeContext(ssl.SSLContext):
    """A server-side wrap does not shake hands at once: the receiver's connection thread does it under this
    timeout (a handshake in the accept loop would let one silent client block every other)."""

    handshake_timeout: float = 10.0

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        if kwargs.get("server_side"):
            kwargs["do_handshake_on_connect"] = False
            sock.settimeout(self.handshake_timeout)
        return super().wrap_socket(sock, *args, **kwargs)


def server_tls_context(settings: TlsSettings) -> ssl.SSLContext:
    """A server context for DICOM TLS: the node's certificate, and client certificates checked against client_ca."""
    context = _DeferredHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    context.handshake_timeout = settings.handshake_timeout_seconds
    context.minimum_version = ssl.TLSVersion.TLSv1_3 if settings.minimum_version == "1.3" else ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=settings.certificate, keyfile=settings.key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(
            f"node.tls: cannot load certificate {settings.certificate} with key {settings.key}: {exc}"
        ) from exc
    if settings.client_ca is not None:
        try:
            context.load_verify_locations(cafile=settings.client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise TlsConfigError(f"node.tls: cannot load client_ca {settings.client_ca}: {exc}") from exc
    context.verify_mode = ssl.CERT_REQUIRED if settings.require_client_cert else ssl.CERT_OPTIONAL
    if settings.client_ca is None:
        context.verify_mode = ssl.CERT_NONE
    return context
