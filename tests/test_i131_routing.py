"""The shipped rules tell 131I neck scans from 99mTc-pertechnetate thyroid scans: by code (SCT and legacy SRT), by
text when a camera writes no codes, and by the energy window when nothing else names the nuclide."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from scintnode.models.catalog import network_names
from scintnode.phantoms import nm
from scintnode.route import RuleSet, load_rule_set

RULES = Path(__file__).resolve().parent.parent / "rules"
I131 = "i131-neck-resnet18"
THYROID = "thyroid-resnet34"


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    return load_rule_set(RULES, networks=network_names(), destinations=["pacs"])


def header(agent: str, coding: nm.Coding = "SCT", **overrides: object) -> Dataset:
    start = datetime(2024, 2, 5, 9, 0)
    i131 = agent.startswith("i131")
    ds = nm.build_nm_image(
        np.zeros((2, 32, 32), dtype=np.uint16),
        patient=nm.Patient("SYNROUTE", "SYNTHETIC^ROUTE", date(1970, 1, 1), "F"),
        study=nm.StudyInfo(generate_uid(), start, accession="SYNROUTE", description="NM (synthetic)"),
        series_uid=generate_uid(),
        series_number=1,
        series_description="I-131 NECK ANT/POST" if i131 else "THYROID ANT/POST",
        agent=agent,
        views=("anterior", "posterior"),
        acquired=start + timedelta(minutes=20),
        injected=start,
        body_part="NECK" if i131 else "THYROID",
        collimator=("HEGP", "PARA") if i131 else ("LEHR", "PARA"),
        coding=coding,
    )
    for keyword, value in overrides.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def networks(rules: RuleSet, ds: Dataset) -> list[str]:
    return [rule.network for rule in rules.matching(ds)]


@pytest.mark.parametrize("coding", ["SCT", "SRT", "none"])
def test_i131_neck_scan_goes_to_the_i131_network_only(rules: RuleSet, coding: nm.Coding) -> None:
    ds = header("i131-iodide", coding)
    assert I131 in networks(rules, ds) and THYROID not in networks(rules, ds)
    (rule,) = [r for r in rules.matching(ds) if r.network == I131]
    assert (rule.outputs, rule.destinations) == (("sr", "sc"), ("pacs",))


@pytest.mark.parametrize("coding", ["SCT", "SRT", "none"])
def test_pertechnetate_thyroid_scan_never_goes_to_the_i131_network(rules: RuleSet, coding: nm.Coding) -> None:
    found = networks(rules, header("pertechnetate", coding))
    assert THYROID in found and I131 not in found
    # even when the series says NECK
    assert I131 not in networks(rules, header("pertechnetate", coding, SeriesDescription="NECK ANT"))


def test_energy_window_alone_names_the_nuclide(rules: RuleSet) -> None:
    ds = header("i131-iodide", "none", SeriesDescription="NECK ANT/POST", StudyDescription=None)
    del ds.RadiopharmaceuticalInformationSequence[0].Radiopharmaceutical
    assert I131 in networks(rules, ds)
    (decision,) = [d for d in rules.evaluate(ds) if d.rule.network == I131]
    assert any("energy window" in line for line in decision.trace)


def test_a_tc99m_window_on_an_i131_labelled_header_is_refused(rules: RuleSet) -> None:
    ds = header("i131-iodide")
    window = ds.EnergyWindowInformationSequence[0].EnergyWindowRangeSequence[0]
    window.EnergyWindowLowerLimit, window.EnergyWindowUpperLimit = "126", "155"
    assert I131 not in networks(rules, ds)


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("ImageType", ["ORIGINAL", "PRIMARY", "WHOLE BODY", "EMISSION"]),  # whole-body sweep, not a neck image
        ("ImageType", ["DERIVED", "SECONDARY", "STATIC", "EMISSION"]),
        ("Modality", "OT"),
    ],
)
def test_other_i131_images_are_not_routed(rules: RuleSet, keyword: str, value: object) -> None:
    ds = header("i131-iodide")
    setattr(ds, keyword, value)
    assert I131 not in networks(rules, ds)


def test_neck_evidence_is_required(rules: RuleSet) -> None:
    ds = header("i131-iodide", BodyPartExamined="ABDOMEN", SeriesDescription="ABDOMEN ANT")
    ds.StudyDescription = "NM I-131 scan (synthetic)"
    assert I131 not in networks(rules, ds)
    ds.ProtocolName = "I131 REMNANT"
    assert I131 in networks(rules, ds)


def test_mibg_is_not_a_neck_remnant_scan(rules: RuleSet) -> None:
    ds = header("i131-iodide")
    item = ds.RadiopharmaceuticalInformationSequence[0]
    item.RadiopharmaceuticalCodeSequence[0].CodeValue = "395789007"
    item.RadiopharmaceuticalCodeSequence[0].CodeMeaning = "Iodine^131 3-Iodobenzylguanidine MIBG"
    item.Radiopharmaceutical = "I-131 MIBG"
    assert I131 not in networks(rules, ds)
