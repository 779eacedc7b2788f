"""A peer's rejection is read even where pynetdicom reports an abort: against a pynetdicom acceptor on a free port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from scintnode.requestor import associate


@pytest.fixture
def picky_peer() -> Iterator[int]:
    """An acceptor that takes only calling AE title KNOWNCAM; its port."""
    ae = AE(ae_title="PEER")
    ae.add_supported_context(Verification)
    ae.require_calling_aet = ["KNOWNCAM"]
    server = ae.start_server(("127.0.0.1", 0), block=False)
    yield int(server.server_address[1])
    server.shutdown()


def _requestor(title: str) -> AE:
    ae = AE(ae_title=title)
    ae.add_requested_context(Verification)
    return ae


def test_a_rejection_is_returned_with_its_reason(picky_peer: int) -> None:
    assoc, rejection = associate(_requestor("STRANGER"), "127.0.0.1", picky_peer, ae_title="PEER")
    assert not assoc.is_established
    assert rejection is not None
    assert (rejection.result, rejection.result_source, rejection.diagnostic) == (0x01, 0x01, 0x03)


def test_an_accepted_association_has_no_rejection(picky_peer: int) -> None:
    assoc, rejection = associate(_requestor("KNOWNCAM"), "127.0.0.1", picky_peer, ae_title="PEER")
    assert assoc.is_established
    assert rejection is None
    assoc.release()


@pytest.mark.usefixtures("late_requestor")
def test_a_rejection_is_read_when_the_requestor_wakes_after_the_peer_closed(picky_peer: int) -> None:
    assoc, rejection = associate(_requestor("STRANGER"), "127.0.0.1", picky_peer, ae_title="PEER")
    # pynetdicom alone misses it: if this starts failing, pynetdicom has fixed the race and the module can go
    assert not assoc.is_rejected
    assert rejection is not None
    assert (rejection.result, rejection.result_source, rejection.diagnostic) == (0x01, 0x01, 0x03)
