"""Derived nuclear-medicine facts: from codes (SCT and legacy SRT), from text, from the energy window."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import numpy as np
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sr._snomed_dict import mapping as pydicom_snomed
from pydicom.tag import Tag
from pydicom.uid import generate_uid

from scintnode.route.facts import (
    RADIONUCLIDES,
    RADIOPHARMACEUTICALS,
    VIEWS,
    canonical_code,
    derive_facts,
)


def code(value: str, scheme: str, meaning: str = "") -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    if meaning:
        item.CodeMeaning = meaning
    return item


def nm(
    *,
    nuclide: tuple[str, str] | None = None,
    agent: tuple[str, str] | None = None,
    agent_text: str | None = None,
    start_time: str | None = None,
    start_datetime: str | None = None,
    window: tuple[str, str] | None = None,
    **attributes: object,
) -> Dataset:
    """A header-only NM dataset with just the attributes a test names."""
    ds = Dataset()
    ds.Modality = "NM"
    item = Dataset()
    if nuclide:
        item.RadionuclideCodeSequence = [code(*nuclide)]
    if agent:
        item.RadiopharmaceuticalCodeSequence = [code(*agent)]
    if agent_text is not None:
        item.Radiopharmaceutical = agent_text
    if start_time is not None:
        item.RadiopharmaceuticalStartTime = start_time
    if start_datetime is not None:
        item.RadiopharmaceuticalStartDateTime = start_datetime
    if len(item):
        ds.RadiopharmaceuticalInformationSequence = [item]
    if window:
        limits = Dataset()
        limits.EnergyWindowLowerLimit, limits.EnergyWindowUpperLimit = window
        energy = Dataset()
        energy.EnergyWindowRangeSequence = [limits]
        ds.EnergyWindowInformationSequence = [energy]
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


class TestCodeTables:
    @pytest.mark.parametrize("term", [*RADIONUCLIDES, *RADIOPHARMACEUTICALS, *VIEWS], ids=lambda t: t.sct)
    def test_legacy_codes_agree_with_pydicom(self, term: object) -> None:
        assert pydicom_snomed["SCT"][term.sct] == term.srt  # type: ignore[attr-defined]
        assert pydicom_snomed["SRT"][term.srt] == term.sct  # type: ignore[attr-defined]

    def test_canonical_code_rewrites_legacy_schemes_only(self) -> None:
        assert canonical_code("C-163A8", "SRT") == ("72454006", "SCT")
        assert canonical_code(" C-163A8 ", "snm3") == ("72454006", "SCT")
        assert canonical_code("72454006", "SCT") == ("72454006", "SCT")
        assert canonical_code("C-163A8", "99LOCAL") == ("C-163A8", "99LOCAL")


class TestRadionuclide:
    @pytest.mark.parametrize(
        ("nuclide", "expected"),
        [
            (("72454006", "SCT"), "tc99m"),
            (("C-163A8", "SRT"), "tc99m"),
            (("1368003", "SCT"), "i131"),
            (("C-114B1", "SRT"), "i131"),
            (("21572004", "SCT"), "i123"),
            (("C-114A4", "SRT"), "i123"),
        ],
    )
    def test_from_nuclide_code_in_either_scheme(self, nuclide: tuple[str, str], expected: str) -> None:
        fact = derive_facts(nm(nuclide=nuclide, agent_text="something else")).radionuclide
        assert (fact.value, fact.source) == (expected, "code")
        assert nuclide[1] in fact.detail and nuclide[0] in fact.detail

    def test_from_radiopharmaceutical_code_when_nuclide_code_absent(self) -> None:
        fact = derive_facts(nm(agent=("C-B1086", "SRT"))).radionuclide
        assert (fact.value, fact.source) == ("i131", "code")

    def test_conflicting_codes_give_unknown_not_the_first(self) -> None:
        ds = nm(nuclide=("72454006", "SCT"))
        second = Dataset()
        second.RadionuclideCodeSequence = [code("21572004", "SCT")]
        ds.RadiopharmaceuticalInformationSequence.append(second)
        fact = derive_facts(ds).radionuclide
        assert fact.value is None
        assert "conflicting" in fact.detail

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("Tc-99m Pertechnetate", "tc99m"),
            ("99mTc-MIBI", "tc99m"),
            ("TC99M", "tc99m"),
            ("^99m^Technetium", "tc99m"),
            ("I-131 Sodium Iodide", "i131"),
            ("NaI-131", "i131"),
            ("131I", "i131"),
            ("Iodine 123", "i123"),
            ("Tl-201", "tl201"),
            ("In111 pentetreotide", "in111"),
        ],
    )
    def test_from_radiopharmaceutical_text(self, text: str, expected: str) -> None:
        fact = derive_facts(nm(agent_text=text)).radionuclide
        assert (fact.value, fact.source) == (expected, "text")
        assert "Radiopharmaceutical" in fact.detail

    def test_from_series_description_when_no_agent_text(self) -> None:
        fact = derive_facts(nm(SeriesDescription="I-131 NECK 72H")).radionuclide
        assert (fact.value, fact.source) == ("i131", "text")
        assert "SeriesDescription" in fact.detail

    def test_text_naming_two_nuclides_is_unknown(self) -> None:
        fact = derive_facts(nm(SeriesDescription="I-123 / Tc-99m subtraction", window=("126", "155"))).radionuclide
        assert fact.value is None
        assert "several" in fact.detail

    def test_tc99m_only_agent_name_implies_the_nuclide(self) -> None:
        fact = derive_facts(nm(agent_text="Pertechnetate")).radionuclide
        assert (fact.value, fact.source) == ("tc99m", "text")

    def test_sodium_iodide_text_alone_does_not_name_the_nuclide(self) -> None:
        assert derive_facts(nm(agent_text="Sodium iodide")).radionuclide.value is None

    @pytest.mark.parametrize(
        ("window", "expected"),
        [(("126", "155"), "tc99m"), (("328", "400"), "i131"), (("143", "175"), "i123"), (("20", "30"), None)],
    )
    def test_from_energy_window(self, window: tuple[str, str], expected: str | None) -> None:
        fact = derive_facts(nm(window=window)).radionuclide
        assert fact.value == expected
        if expected:
            assert fact.source == "energy window"

    def test_window_between_two_photopeaks_is_unknown(self) -> None:
        fact = derive_facts(nm(window=("155", "175"))).radionuclide  # 165 keV: I-123 or In-111
        assert fact.value is None
        assert "i123" in fact.detail and "in111" in fact.detail

    def test_code_outranks_text_and_window(self) -> None:
        fact = derive_facts(nm(nuclide=("C-114B1", "SRT"), agent_text="Tc-99m", window=("126", "155"))).radionuclide
        assert fact.value == "i131"

    def test_nothing_known_is_none(self) -> None:
        fact = derive_facts(nm()).radionuclide
        assert (fact.value, fact.source) == (None, "none")


class TestRadiopharmaceutical:
    @pytest.mark.parametrize(
        ("agent", "expected"),
        [
            (("19495007", "SCT"), "pertechnetate"),
            (("C-B1206", "SRT"), "pertechnetate"),
            (("424299003", "SCT"), "sestamibi"),
            (("C-163AB", "SRT"), "sestamibi"),
            (("424118002", "SCT"), "tetrofosmin"),
            (("96390006", "SCT"), "medronate"),
            (("C-B1213", "SRT"), "oxidronate"),
            (("111160004", "SCT"), "iodide"),
            (("C-B1081", "SRT"), "iodide"),
        ],
    )
    def test_from_code(self, agent: tuple[str, str], expected: str) -> None:
        fact = derive_facts(nm(agent=agent, agent_text="unrelated")).radiopharmaceutical
        assert (fact.value, fact.source) == (expected, "code")

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("Tc-99m Pertechnetate", "pertechnetate"),
            ("99mTcO4-", "pertechnetate"),
            ("Tc99m-MIBI", "sestamibi"),
            ("Myoview", "tetrofosmin"),
            ("Tc-99m MDP", "medronate"),
            ("TC HDP", "oxidronate"),
            ("NaI I-131", "iodide"),
            ("I-123 MIBG", "mibg"),
        ],
    )
    def test_from_radiopharmaceutical_text(self, text: str, expected: str) -> None:
        fact = derive_facts(nm(agent_text=text)).radiopharmaceutical
        assert (fact.value, fact.source) == (expected, "text")

    def test_from_series_then_study_description(self) -> None:
        series = derive_facts(nm(SeriesDescription="PARATHYROID MIBI EARLY", StudyDescription="MDP"))
        assert series.radiopharmaceutical.value == "sestamibi"
        assert "SeriesDescription" in series.radiopharmaceutical.detail
        study = derive_facts(nm(SeriesDescription="EARLY", StudyDescription="Bone scan MDP"))
        assert study.radiopharmaceutical.value == "medronate"
        assert "StudyDescription" in study.radiopharmaceutical.detail

    def test_text_naming_two_agents_is_unknown(self) -> None:
        fact = derive_facts(nm(agent_text="MIBI + pertechnetate subtraction")).radiopharmaceutical
        assert fact.value is None

    def test_organ_words_do_not_name_an_agent(self) -> None:
        assert derive_facts(nm(SeriesDescription="THYROID ANT")).radiopharmaceutical.value is None


class TestView:
    def test_top_level_view_code(self) -> None:
        facts = derive_facts(nm(ViewCodeSequence=[code("399321004", "SCT")]))
        assert (facts.view.value, facts.view.source) == ("anterior", "code")
        assert facts.views.value == ("anterior",)

    def test_legacy_view_code(self) -> None:
        assert derive_facts(nm(ViewCodeSequence=[code("G-5216", "SRT")])).view.value == "posterior"

    def test_inside_detector_information_sequence(self) -> None:
        detector = Dataset()
        detector.ViewCodeSequence = [code("399074003", "SCT")]
        facts = derive_facts(nm(DetectorInformationSequence=[detector]))
        assert (facts.view.value, facts.view.source) == ("lao", "code")
        assert facts.views.value == ("lao",)

    def test_two_detectors_give_views_and_no_single_view(self) -> None:
        anterior, posterior = Dataset(), Dataset()
        anterior.ViewCodeSequence = [code("399321004", "SCT")]
        posterior.ViewCodeSequence = [code("G-5216", "SRT")]
        facts = derive_facts(nm(DetectorInformationSequence=[anterior, posterior], SeriesDescription="WB ANT"))
        assert facts.views.value == ("anterior", "posterior")
        assert facts.view.value is None
        assert "different views" in facts.view.detail

    def test_uncoded_detector_makes_views_unknown(self) -> None:
        coded, bare = Dataset(), Dataset()
        coded.ViewCodeSequence = [code("399321004", "SCT")]
        assert derive_facts(nm(DetectorInformationSequence=[coded, bare])).views.value is None

    @pytest.mark.parametrize(
        ("description", "expected"),
        [
            ("THYROID ANT", "anterior"),
            ("Thyroid anterior 5min", "anterior"),
            ("NECK_POST", "posterior"),
            ("I-131 POST THERAPY WB", None),
            ("WB ANT POST", None),
            ("PARATHYROID RAO", "rao"),
            ("Skull L LAT", "left-lateral"),
            ("THYROID", None),
        ],
    )
    def test_from_series_description(self, description: str, expected: str | None) -> None:
        fact = derive_facts(nm(SeriesDescription=description)).view
        assert fact.value == expected
        if expected:
            assert fact.source == "text"


class TestMinutesAfterInjection:
    def test_start_time_and_acquisition_date_time(self) -> None:
        fact = derive_facts(
            nm(start_time="090000", AcquisitionDate="20240312", AcquisitionTime="091500")
        ).minutes_after_injection
        assert (fact.value, fact.source) == (15.0, "computed")

    def test_start_time_later_than_acquisition_means_previous_day(self, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.WARNING, logger="scintnode.route.facts"):
            fact = derive_facts(
                nm(start_time="235000", AcquisitionDate="20240313", AcquisitionTime="001500")
            ).minutes_after_injection
        assert fact.value == 25.0
        assert "previous day" in fact.detail
        assert any("previous day" in r.getMessage() for r in caplog.records)

    def test_start_datetime_across_midnight(self) -> None:
        fact = derive_facts(
            nm(start_datetime="20240312234500", start_time="234500", AcquisitionDateTime="20240313001500")
        ).minutes_after_injection
        assert fact.value == 30.0
        assert "RadiopharmaceuticalStartDateTime" in fact.detail and "AcquisitionDateTime" in fact.detail

    def test_start_datetime_after_acquisition_is_unknown_not_a_guess(self) -> None:
        fact = derive_facts(
            nm(start_datetime="20240313100000", AcquisitionDateTime="20240313090000")
        ).minutes_after_injection
        assert fact.value is None

    def test_falls_back_to_series_then_content_time(self) -> None:
        series = derive_facts(nm(start_time="080000", SeriesDate="20240312", SeriesTime="100000"))
        assert series.minutes_after_injection.value == 120.0
        assert "SeriesDate/SeriesTime" in series.minutes_after_injection.detail
        content = derive_facts(nm(start_time="080000", ContentTime="081030.5"))
        assert content.minutes_after_injection.value == pytest.approx(10.51, abs=0.01)

    def test_mixed_time_zone_offsets_read_as_one_local_clock(self) -> None:
        fact = derive_facts(
            nm(start_datetime="20240312090000+0100", AcquisitionDateTime="20240312093000")
        ).minutes_after_injection
        assert fact.value == 30.0

    def test_missing_injection_or_acquisition(self) -> None:
        assert derive_facts(nm(AcquisitionTime="090000")).minutes_after_injection.value is None
        assert derive_facts(nm(start_time="090000")).minutes_after_injection.value is None
        date_only = derive_facts(nm(start_datetime="20240312", AcquisitionTime="090000"))
        assert date_only.minutes_after_injection.value is None


class TestOtherFacts:
    def test_energy_window_centre_modality_and_image_type(self) -> None:
        facts = derive_facts(nm(window=("126", "155"), ImageType=["ORIGINAL", "PRIMARY", "WHOLE BODY"]))
        assert facts.energy_window_kev.value == pytest.approx(140.5)
        assert facts.modality.value == "NM"
        assert facts.image_type_value3.value == "WHOLE BODY"

    @pytest.mark.filterwarnings("ignore:Invalid value for VR")
    def test_malformed_header_gives_unknowns_not_exceptions(self) -> None:
        ds = nm(start_time="99xx", AcquisitionTime="not a time", window=("1", "1"), ImageType="ORIGINAL")
        limits = ds.EnergyWindowInformationSequence[0].EnergyWindowRangeSequence[0]
        # as read from a file: converted only when accessed, and 'abc' is no DS
        limits[0x00540014] = RawDataElement(Tag(0x00540014), "DS", 4, b"abc ", 0, False, True)
        facts = derive_facts(ds)
        assert facts.minutes_after_injection.value is None
        assert facts.energy_window_kev.value is None
        assert facts.image_type_value3.value is None

    def test_every_fact_describes_its_source(self) -> None:
        facts = derive_facts(nm(nuclide=("72454006", "SCT")))
        assert facts.radionuclide.describe() == "tc99m (code: RadionuclideCodeSequence SCT 72454006)"
        assert facts.view.describe().startswith("unknown (")


class TestPhantomHeaders:
    """Headers from scintnode.phantoms.nm, which imitate what cameras send."""

    def build(self, agent: str, coding: str, **options: object) -> Dataset:
        from scintnode.phantoms import nm as phantom

        start = datetime(2024, 3, 12, 9, 0)
        return phantom.build_nm_image(
            np.zeros((len(options.get("views", ("anterior",))), 16, 16), dtype=np.uint16),  # type: ignore[arg-type]
            patient=phantom.Patient("SYN0001", "SYNTHETIC^PATIENT", None, "F"),
            study=phantom.StudyInfo(generate_uid(), start, accession="SYN1", description="synthetic"),
            series_uid=generate_uid(),
            series_number=1,
            series_description="THYROID (synthetic)",
            agent=agent,
            acquired=start + timedelta(minutes=20),
            injected=start,
            coding=coding,  # type: ignore[arg-type]
            **options,  # type: ignore[arg-type]
        )

    @pytest.mark.parametrize("coding", ["SCT", "SRT"])
    def test_coded_pertechnetate(self, coding: str) -> None:
        facts = derive_facts(self.build("pertechnetate", coding))
        assert facts.radionuclide.value == "tc99m" and facts.radionuclide.source == "code"
        assert facts.radiopharmaceutical.value == "pertechnetate"
        assert facts.view.value == "anterior"
        assert facts.minutes_after_injection.value == 20.0

    def test_text_only_i131(self) -> None:
        facts = derive_facts(self.build("i131-iodide", "none", view_placement="none"))
        assert (facts.radionuclide.value, facts.radionuclide.source) == ("i131", "text")
        assert facts.radiopharmaceutical.value == "iodide"
        assert facts.view.value is None

    def test_whole_body_two_detectors(self) -> None:
        ds = self.build("medronate", "SRT", views=("anterior", "posterior"), image_type="WHOLE BODY")
        facts = derive_facts(ds)
        assert facts.views.value == ("anterior", "posterior")
        assert facts.image_type_value3.value == "WHOLE BODY"
