"""Requesting an association with pynetdicom, with the peer's rejection read as it arrives.

pynetdicom's requestor waits for its connection before it reads the answer. When the peer rejects and closes the
connection before that thread runs again (seen under load in CI), it finds the connection closed and reports an
abort: `is_rejected` stays False and the rejection's reason is lost. The A-ASSOCIATE-RJ is recorded here as
pynetdicom's reader decodes it, before the connection closes.
"""

from __future__ import annotations

from typing import Any

from pynetdicom import AE, Association, evt
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.pdu_primitives import A_ASSOCIATE


def associate(
    ae: AE, host: str, port: int, *, evt_handlers: list[Any] | None = None, **kwargs: Any
) -> tuple[Association, A_ASSOCIATE | None]:
    """``ae.associate(host, port, ...)``, and the peer's A-ASSOCIATE-RJ as a primitive if it rejected."""
    rejections: list[A_ASSOCIATE] = []

    def keep_rejection(event: evt.Event) -> None:
        if isinstance(event.pdu, A_ASSOCIATE_RJ):
            rejections.append(event.pdu.to_primitive())

    handlers = [*(evt_handlers or []), (evt.EVT_PDU_RECV, keep_rejection)]
    assoc = ae.associate(host, port, evt_handlers=handlers, **kwargs)
    return assoc, (rejections[0] if rejections else None)
