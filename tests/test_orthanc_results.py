"""Telling results apart in the PACS (real Orthanc): the network a result names in scintnode's Contributing
Equipment item, read back through Orthanc's REST API."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage, generate_uid

from scintnode.orthanc import OrthancServer
from scintnode.write.sr_content import MANUFACTURER
from tests.harness import upload_result

pytestmark = pytest.mark.e2e


def test_the_network_is_read_from_scintnodes_item_whatever_the_other_items_hold(tmp_path: Path) -> None:
    study = generate_uid()
    with OrthancServer(tmp_path / "pacs") as pacs:
        named = upload_result(pacs, study, "SR", Comprehensive3DSRStorage, "dscint")
        after_a_maker_less_item = upload_result(
            pacs, study, "OT", SecondaryCaptureImageStorage, "i131-neck-resnet18", camera_maker=""
        )
        unnamed = upload_result(pacs, study, "OT", SecondaryCaptureImageStorage)
        assert pacs.contributing_model(named, MANUFACTURER) == "dscint"
        assert pacs.contributing_model(after_a_maker_less_item, MANUFACTURER) == "i131-neck-resnet18"
        assert pacs.contributing_model(unnamed, MANUFACTURER) == ""
        assert pacs.contributing_model(named, "Another maker") == ""
