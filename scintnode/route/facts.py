"""Derived nuclear-medicine facts: what an NM (or CT) header says about nuclide, agent, view and timing.

Route stage: the rule engine compares rules against these facts; each fact says where it came from."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import date, datetime, time, timedelta
from typing import Any, Literal

from pydicom.dataset import Dataset
from pydicom.valuerep import DA, DT, TM

log = logging.getLogger(__name__)

FactValue = str | float | tuple[str, ...] | None
Source = Literal["code", "text", "energy window", "attribute", "computed", "none"]


@dataclass(frozen=True)
class Fact:
    """One derived fact: its value (None = unknown) and where it came from, in words for a trace."""

    value: FactValue
    source: Source
    detail: str

    def describe(self) -> str:
        if self.value is None:
            return f"unknown ({self.detail})"
        shown = ", ".join(self.value) if isinstance(self.value, tuple) else _show_number(self.value)
        return f"{shown} ({self.source}: {self.detail})"


def _show_number(value: str | float) -> str:
    return f"{value:g}" if isinstance(value, float) else value


def _unknown(detail: str) -> Fact:
    return Fact(None, "none", detail)


@dataclass(frozen=True)
class CodedTerm:
    """A fact value and the SNOMED code (current SCT and legacy SRT form) that names it in DICOM."""

    name: str
    sct: str
    srt: str
    meaning: str
    nuclide: str | None = None  # radiopharmaceuticals name their nuclide


# PS3.16 CID 18 (radionuclides); SRT equivalents as mapped in pydicom 3.0.2 (checked by a test).
RADIONUCLIDES: tuple[CodedTerm, ...] = (
    CodedTerm("tc99m", "72454006", "C-163A8", "^99m^Technetium"),
    CodedTerm("i131", "1368003", "C-114B1", "^131^Iodine"),
    CodedTerm("i123", "21572004", "C-114A4", "^123^Iodine"),
    CodedTerm("i125", "68630002", "C-114A6", "^125^Iodine"),
    CodedTerm("tl201", "60057003", "C-138A9", "^201^Thallium"),
    CodedTerm("in111", "56609000", "C-145A4", "^111^Indium"),
    CodedTerm("ga67", "2008008", "C-131A2", "^67^Gallium"),
    CodedTerm("f18", "77004003", "C-111A1", "^18^Fluorine"),
    CodedTerm("lu177", "447553000", "C-101ED", "^177^Lutetium"),
)

# PS3.16 CID 25 (radiopharmaceuticals). Sodium iodide has one code per nuclide; both are "iodide".
RADIOPHARMACEUTICALS: tuple[CodedTerm, ...] = (
    CodedTerm("pertechnetate", "19495007", "C-B1206", "Sodium pertechnetate Tc^99m^", "tc99m"),
    CodedTerm("sestamibi", "424299003", "C-163AB", "Technetium Tc^99m^ sestamibi", "tc99m"),
    CodedTerm("tetrofosmin", "424118002", "C-163AD", "Technetium Tc^99m^Tetrofosmin", "tc99m"),
    CodedTerm("medronate", "96390006", "C-B1218", "Technetium Tc^99m^ medronate", "tc99m"),
    CodedTerm("oxidronate", "53951001", "C-B1213", "Technetium Tc^99m^ oxidronate", "tc99m"),
    CodedTerm("iodide", "111160004", "C-B1086", "Sodium iodide I^131^", "i131"),
    CodedTerm("iodide", "67690002", "C-B1081", "Sodium iodide I^123^", "i123"),
    CodedTerm("mibg", "395787009", "C-B110E", "Iodine^123 3-Iodobenzylguanidine MIBG", "i123"),
    CodedTerm("mibg", "395789007", "C-B112D", "Iodine^131 3-Iodobenzylguanidine MIBG", "i131"),
)

# PS3.16 CID 26 (Nuclear Medicine Projection); not the DX "antero-posterior" family.
VIEWS: tuple[CodedTerm, ...] = (
    CodedTerm("anterior", "399321004", "G-5215", "Anterior projection"),
    CodedTerm("posterior", "399001007", "G-5216", "Posterior projection"),
    CodedTerm("lao", "399074003", "G-5207", "Left anterior oblique"),
    CodedTerm("rao", "399108003", "G-5206", "Right anterior oblique"),
    CodedTerm("lpo", "399136008", "G-5209", "Left posterior oblique"),
    CodedTerm("rpo", "399075002", "G-5208", "Right posterior oblique"),
    CodedTerm("left-lateral", "399118008", "G-5223", "Left lateral projection"),
    CodedTerm("right-lateral", "399297009", "G-5222", "Right lateral projection"),
)

# Older cameras send SNOMED RT ("SRT") or SNOMED 3 ("SNM3") designators with the same legacy values.
LEGACY_SNOMED_SCHEMES = frozenset({"SRT", "SNM3"})
_LEGACY_TO_SCT: dict[str, str] = {t.srt: t.sct for t in (*RADIONUCLIDES, *RADIOPHARMACEUTICALS, *VIEWS)}


def canonical_code(value: str, scheme: str) -> tuple[str, str]:
    """(value, scheme) with a legacy SNOMED code from the tables above rewritten to its SCT form."""
    value, scheme = value.strip(), scheme.strip().upper()
    if scheme in LEGACY_SNOMED_SCHEMES and value in _LEGACY_TO_SCT:
        return _LEGACY_TO_SCT[value], "SCT"
    return value, scheme


def _lookup(terms: Sequence[CodedTerm], value: str, scheme: str) -> CodedTerm | None:
    value, scheme = canonical_code(value, scheme)
    if scheme != "SCT":
        return None
    return next((t for t in terms if t.sct == value), None)


CONTRAST_PHASES = ("enhanced", "unenhanced")


@dataclass(frozen=True)
class FactSpec:
    """What rules may ask of a fact: its kind, and the values it can take when they form a vocabulary."""

    kind: Literal["text", "number"]
    vocabulary: frozenset[str] | None
    description: str


FACT_SPECS: dict[str, FactSpec] = {
    "modality": FactSpec("text", None, "Modality (0008,0060), upper case"),
    "image_type_value3": FactSpec("text", None, "Image Type (0008,0008) value 3: STATIC, WHOLE BODY, ..."),
    "radionuclide": FactSpec(
        "text", frozenset(t.name for t in RADIONUCLIDES), "nuclide: code, then text, then energy window"
    ),
    "radiopharmaceutical": FactSpec("text", frozenset(t.name for t in RADIOPHARMACEUTICALS), "agent: code, then text"),
    "view": FactSpec("text", frozenset(t.name for t in VIEWS), "projection of a single-view image"),
    "views": FactSpec("text", frozenset(t.name for t in VIEWS), "projection of each detector, in order"),
    "minutes_after_injection": FactSpec("number", None, "acquisition start minus injection, minutes"),
    "energy_window_kev": FactSpec("number", None, "centre of the first energy window, keV"),
    "contrast_phase": FactSpec(
        "text", frozenset(CONTRAST_PHASES), "CT: enhanced or unenhanced, from Contrast/Bolus attributes, then text"
    ),
}


@dataclass(frozen=True)
class NMFacts:
    """Every derived fact of one header. Field names are the names rules use (`fact: radionuclide`)."""

    modality: Fact
    image_type_value3: Fact
    radionuclide: Fact
    radiopharmaceutical: Fact
    view: Fact
    views: Fact
    minutes_after_injection: Fact
    energy_window_kev: Fact
    contrast_phase: Fact

    def get(self, name: str) -> Fact:
        if name not in FACT_SPECS:
            raise KeyError(f"unknown fact {name!r}; known: {', '.join(FACT_SPECS)}")
        fact: Fact = getattr(self, name)
        return fact

    def items(self) -> Iterator[tuple[str, Fact]]:
        for f in fields(self):
            yield f.name, getattr(self, f.name)


def derive_facts(header: Dataset) -> NMFacts:
    """Derive every fact from a header; anything missing or contradictory gives None, never a guess."""
    return NMFacts(
        modality=_attribute_text(header, "Modality"),
        image_type_value3=_image_type_value3(header),
        radionuclide=_radionuclide(header),
        radiopharmaceutical=_radiopharmaceutical(header),
        view=_view(header),
        views=_views(header),
        minutes_after_injection=_minutes_after_injection(header),
        energy_window_kev=_energy_window_kev(header),
        contrast_phase=_contrast_phase(header),
    )


# Reading the header. A malformed value must give "unknown", not an exception from deep in pydicom.

_READ_ERRORS = (ValueError, TypeError, KeyError, AttributeError, OverflowError, UnicodeError)


def _get(ds: Dataset, keyword: str) -> Any:
    try:
        value = ds.get(keyword)
    except _READ_ERRORS:
        return None
    if value is None or value == "":
        return None
    return value


def _text(ds: Dataset, keyword: str) -> str | None:
    value = _get(ds, keyword)
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    text = str(value).strip()
    return text or None


def _items(ds: Dataset, keyword: str) -> list[Dataset]:
    value = _get(ds, keyword)
    if value is None:
        return []
    try:
        return [item for item in value if isinstance(item, Dataset)]
    except TypeError:
        return []


def _attribute_text(ds: Dataset, keyword: str) -> Fact:
    text = _text(ds, keyword)
    if text is None:
        return _unknown(f"no {keyword}")
    return Fact(text.upper(), "attribute", keyword)


def _image_type_value3(ds: Dataset) -> Fact:
    value = _get(ds, "ImageType")
    values = [] if value is None or isinstance(value, (str, bytes)) else [str(v).strip() for v in value]
    if len(values) < 3 or not values[2]:
        return _unknown("ImageType has no value 3")
    return Fact(values[2].upper(), "attribute", "ImageType value 3")


def _codes(items: Iterable[Dataset], keyword: str) -> Iterator[tuple[str, str]]:
    for item in items:
        for code in _items(item, keyword):
            value = _text(code, "CodeValue")
            scheme = _text(code, "CodingSchemeDesignator")
            if value and scheme:
                yield value, scheme


def _from_codes(
    pairs: Iterable[tuple[str, str]], terms: Sequence[CodedTerm], where: str, attr: str = "name"
) -> Fact | None:
    """The single term the codes name, a conflict (None value), or None when no code is recognised."""
    found: dict[str, str] = {}
    for value, scheme in pairs:
        term = _lookup(terms, value, scheme)
        if term is not None:
            name = getattr(term, attr)
            found.setdefault(name, f"{where} {scheme} {value}")
    if not found:
        return None
    if len(found) > 1:
        return _unknown(f"conflicting codes in {where}: {', '.join(sorted(found))}")
    ((name, detail),) = found.items()
    return Fact(name, "code", detail)


# Free text. DICOM text is normalised to upper case with every run of non-alphanumerics as one space,
# so "Tc-99m", "99mTc" and "^99m^Technetium" all reduce to forms the patterns below expect.

_NUCLIDE_TEXT: dict[str, re.Pattern[str]] = {
    "tc99m": re.compile(r"(?<![A-Z0-9])(TC|TECHNETIUM) ?99 ?M(?![A-Z])|(?<![0-9])99 ?M ?(TC|TECHNETIUM)"),
    "i131": re.compile(r"(?<![A-Z0-9])(I|IODINE|NAI) ?131(?![0-9])|(?<![0-9])131 ?(I|IODINE)(?![A-Z])"),
    "i123": re.compile(r"(?<![A-Z0-9])(I|IODINE|NAI) ?123(?![0-9])|(?<![0-9])123 ?(I|IODINE)(?![A-Z])"),
    "i125": re.compile(r"(?<![A-Z0-9])(I|IODINE|NAI) ?125(?![0-9])|(?<![0-9])125 ?(I|IODINE)(?![A-Z])"),
    "tl201": re.compile(r"(?<![A-Z0-9])(TL|THALLIUM) ?201(?![0-9])|(?<![0-9])201 ?(TL|THALLIUM)(?![A-Z])"),
    "in111": re.compile(r"(?<![A-Z0-9])(IN|INDIUM) ?111(?![0-9])|(?<![0-9])111 ?(IN|INDIUM)(?![A-Z])"),
    "ga67": re.compile(r"(?<![A-Z0-9])(GA|GALLIUM) ?67(?![0-9])|(?<![0-9])67 ?(GA|GALLIUM)(?![A-Z])"),
    "f18": re.compile(r"(?<![A-Z0-9])(F|FLUORINE) ?18(?![0-9])|(?<![0-9])18 ?(F|FLUORINE)(?![A-Z])"),
    "lu177": re.compile(r"(?<![A-Z0-9])(LU|LUTETIUM) ?177(?![0-9])|(?<![0-9])177 ?(LU|LUTETIUM)(?![A-Z])"),
}

_AGENT_TEXT: dict[str, re.Pattern[str]] = {
    "pertechnetate": re.compile(r"PERTECHNET|TCO4\b"),
    "sestamibi": re.compile(r"SESTAMIBI|\bMIBI\b|CARDIOLITE"),
    "tetrofosmin": re.compile(r"TETROFOSMIN|MYOVIEW"),
    "medronate": re.compile(r"MEDRONATE|\bMDP\b"),
    "oxidronate": re.compile(r"OXIDRONATE|\bHM?DP\b"),
    "iodide": re.compile(r"\bIODIDE\b|\bNAI\b"),
    "mibg": re.compile(r"\bMIBG\b|IOBENGUANE"),
}

# Agents that exist only as Tc-99m compounds, so their name alone says the nuclide.
_TC99M_ONLY_AGENTS = frozenset(t.name for t in RADIOPHARMACEUTICALS if t.nuclide == "tc99m")

_TEXT_SOURCES = ("SeriesDescription", "ProtocolName", "StudyDescription")


def normalise_text(text: str) -> str:
    return " ".join(re.sub(r"[^A-Z0-9]+", " ", text.upper()).split())


def _text_sources(ds: Dataset) -> Iterator[tuple[str, str]]:
    """(where, text) in the order the text is trusted: the agent field, then descriptions."""
    for item in _items(ds, "RadiopharmaceuticalInformationSequence"):
        text = _text(item, "Radiopharmaceutical")
        if text:
            yield "Radiopharmaceutical", text
    for keyword in _TEXT_SOURCES:
        text = _text(ds, keyword)
        if text:
            yield keyword, text


def _from_text(ds: Dataset, patterns: dict[str, re.Pattern[str]]) -> Fact | None:
    """The first text source naming exactly one term; a source naming several is a conflict."""
    for where, text in _text_sources(ds):
        normal = normalise_text(text)
        hits = sorted(name for name, pattern in patterns.items() if pattern.search(normal))
        if len(hits) == 1:
            return Fact(hits[0], "text", f"{where} {text!r}")
        if hits:
            return _unknown(f"{where} {text!r} names several: {', '.join(hits)}")
    return None


def _radionuclide(ds: Dataset) -> Fact:
    pharma_items = _items(ds, "RadiopharmaceuticalInformationSequence")
    fact = _from_codes(_codes(pharma_items, "RadionuclideCodeSequence"), RADIONUCLIDES, "RadionuclideCodeSequence")
    if fact is not None:
        return fact
    fact = _from_codes(
        _codes(pharma_items, "RadiopharmaceuticalCodeSequence"),
        RADIOPHARMACEUTICALS,
        "RadiopharmaceuticalCodeSequence",
        attr="nuclide",
    )
    if fact is not None:
        return fact
    fact = _from_text(ds, _NUCLIDE_TEXT)
    if fact is not None:
        return fact
    agent = _from_text(ds, _AGENT_TEXT)
    if agent is not None and agent.value in _TC99M_ONLY_AGENTS:
        return Fact("tc99m", "text", f"{agent.detail} names a Tc-99m agent")
    return _from_energy_window(ds)


# Main photopeaks (keV). A window centre within 6 % of exactly one peak names the nuclide.
_PHOTOPEAKS_KEV: dict[str, float] = {
    "tc99m": 140.5,
    "i123": 159.0,
    "i131": 364.5,
    "tl201": 70.8,
    "in111": 171.3,
    "ga67": 93.3,
    "f18": 511.0,
    "lu177": 208.4,
}
_PEAK_TOLERANCE = 0.06


def _from_energy_window(ds: Dataset) -> Fact:
    window = _energy_window_kev(ds)
    if not isinstance(window.value, float):
        return _unknown(f"no nuclide code or text, and {window.detail}")
    centre = window.value
    near = sorted(n for n, peak in _PHOTOPEAKS_KEV.items() if abs(centre - peak) <= _PEAK_TOLERANCE * peak)
    if len(near) == 1:
        return Fact(near[0], "energy window", f"{window.detail}, centre {centre:g} keV")
    if near:
        return _unknown(f"energy window centre {centre:g} keV fits several: {', '.join(near)}")
    return _unknown(f"energy window centre {centre:g} keV fits no known photopeak")


def _energy_window_kev(ds: Dataset) -> Fact:
    for window in _items(ds, "EnergyWindowInformationSequence")[:1]:
        for limits in _items(window, "EnergyWindowRangeSequence")[:1]:
            lower = _number(_get(limits, "EnergyWindowLowerLimit"))
            upper = _number(_get(limits, "EnergyWindowUpperLimit"))
            if lower is not None and upper is not None and 0 < lower <= upper:
                return Fact((lower + upper) / 2, "attribute", f"energy window {lower:g}-{upper:g} keV")
            return _unknown("first energy window has no usable limits")
    return _unknown("no EnergyWindowInformationSequence")


def _number(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _radiopharmaceutical(ds: Dataset) -> Fact:
    pharma_items = _items(ds, "RadiopharmaceuticalInformationSequence")
    fact = _from_codes(
        _codes(pharma_items, "RadiopharmaceuticalCodeSequence"),
        RADIOPHARMACEUTICALS,
        "RadiopharmaceuticalCodeSequence",
    )
    if fact is not None:
        return fact
    fact = _from_text(ds, _AGENT_TEXT)
    if fact is not None:
        return fact
    return _unknown("no radiopharmaceutical code, and no agent named in Radiopharmaceutical or descriptions")


# Views. "POST" also begins "post-therapy" etc. in I-131 series names, so those are excluded.
_VIEW_TEXT: dict[str, re.Pattern[str]] = {
    "anterior": re.compile(r"\bANT(ERIOR)?\b"),
    "posterior": re.compile(r"\bPOST(ERIOR)?\b(?! ?(THERAPY|TX|RX|THER|INJ|INJECTION|OP|SURG|SURGERY|ABLATION|DOSE))"),
    "lao": re.compile(r"\bLAO\b|\bLEFT ANTERIOR OBLIQUE\b"),
    "rao": re.compile(r"\bRAO\b|\bRIGHT ANTERIOR OBLIQUE\b"),
    "lpo": re.compile(r"\bLPO\b|\bLEFT POSTERIOR OBLIQUE\b"),
    "rpo": re.compile(r"\bRPO\b|\bRIGHT POSTERIOR OBLIQUE\b"),
    "left-lateral": re.compile(r"\b(L|LT|LEFT) ?LAT(ERAL)?\b"),
    "right-lateral": re.compile(r"\b(R|RT|RIGHT) ?LAT(ERAL)?\b"),
}


def _view_codes(item: Dataset) -> Iterator[tuple[str, str]]:
    return _codes([item], "ViewCodeSequence")


def _views(ds: Dataset) -> Fact:
    detectors = _items(ds, "DetectorInformationSequence")
    names: list[str] = []
    for number, item in enumerate(detectors, start=1):
        fact = _from_codes(_view_codes(item), VIEWS, "ViewCodeSequence")
        if fact is None or not isinstance(fact.value, str):
            return _unknown(f"DetectorInformationSequence item {number} has no recognised ViewCodeSequence")
        names.append(fact.value)
    if names:
        return Fact(tuple(names), "code", f"ViewCodeSequence of {len(names)} detector item(s)")
    top = _from_codes(_view_codes(ds), VIEWS, "ViewCodeSequence")
    if top is not None and isinstance(top.value, str):
        return Fact((top.value,), "code", top.detail)
    return _unknown("no ViewCodeSequence at top level or in DetectorInformationSequence")


def _view(ds: Dataset) -> Fact:
    top = _from_codes(_view_codes(ds), VIEWS, "ViewCodeSequence")
    if top is not None:
        return top
    views = _views(ds)
    if isinstance(views.value, tuple):
        distinct = set(views.value)
        if len(distinct) == 1:
            return Fact(views.value[0], "code", f"DetectorInformationSequence {views.detail}")
        return _unknown(f"detectors have different views ({', '.join(views.value)}); see views")
    description = _text(ds, "SeriesDescription")
    if description:
        normal = normalise_text(description)
        hits = sorted(name for name, pattern in _VIEW_TEXT.items() if pattern.search(normal))
        if len(hits) == 1:
            return Fact(hits[0], "text", f"SeriesDescription {description!r}")
        if hits:
            return _unknown(f"SeriesDescription {description!r} names several views: {', '.join(hits)}")
    return _unknown("no ViewCodeSequence and no view named in SeriesDescription")


# Timing (dicom-conventions.md §3.3).


def _date(value: Any) -> date | None:
    try:
        parsed = DA(str(value).strip()) if value is not None else None
    except (ValueError, TypeError, OverflowError):
        return None
    return parsed if isinstance(parsed, date) else None


def _time(value: Any) -> time | None:
    try:
        parsed = TM(str(value).strip()) if value is not None else None
    except (ValueError, TypeError, OverflowError):
        return None
    return parsed if isinstance(parsed, time) else None


def _datetime(value: Any) -> datetime | None:
    """A DT value down to the minute at least; a DT of only a year or a date says no time of day."""
    text = str(value).strip() if value is not None else ""
    if len(text.split("+")[0].split("-")[0]) < 12:
        return None
    try:
        parsed = DT(text)
    except (ValueError, TypeError, OverflowError):
        return None
    return parsed if isinstance(parsed, datetime) else None


def _injection(ds: Dataset) -> tuple[datetime | None, time | None, str]:
    start_time: time | None = None
    for item in _items(ds, "RadiopharmaceuticalInformationSequence"):
        start = _datetime(_get(item, "RadiopharmaceuticalStartDateTime"))
        if start is not None:
            return start, None, "RadiopharmaceuticalStartDateTime"
        start_time = start_time or _time(_get(item, "RadiopharmaceuticalStartTime"))
    return None, start_time, "RadiopharmaceuticalStartTime"


def _acquisition(ds: Dataset) -> tuple[date | None, time | None, str]:
    moment = _datetime(_get(ds, "AcquisitionDateTime"))
    if moment is not None:
        return moment.date(), moment.timetz(), "AcquisitionDateTime"
    for prefix in ("Acquisition", "Series", "Content"):
        clock = _time(_get(ds, f"{prefix}Time"))
        if clock is not None:
            return _date(_get(ds, f"{prefix}Date")), clock, f"{prefix}Date/{prefix}Time"
    return None, None, "no acquisition, series or content time"


def _naive(moment: datetime) -> datetime:
    return moment.replace(tzinfo=None)


def _minutes_after_injection(ds: Dataset) -> Fact:
    inj_moment, inj_time, inj_where = _injection(ds)
    acq_day, acq_time, acq_where = _acquisition(ds)
    if inj_moment is None and inj_time is None:
        return _unknown("no RadiopharmaceuticalStartDateTime or RadiopharmaceuticalStartTime")
    if acq_time is None:
        return _unknown(acq_where)
    if inj_moment is not None:
        if acq_day is None:
            return _unknown(f"{inj_where} is a date-time but {acq_where} has no date")
        acquired = datetime.combine(acq_day, acq_time)
        if (inj_moment.tzinfo is None) != (acquired.tzinfo is None):
            inj_moment, acquired = _naive(inj_moment), _naive(acquired)  # same local clock assumed
        delta = acquired - inj_moment
        if delta < timedelta(0):
            return _unknown(f"{inj_where} is after {acq_where}")
        return Fact(_minutes(delta), "computed", f"{acq_where} minus {inj_where}")
    assert inj_time is not None
    day = acq_day or date(2000, 1, 1)  # only the clock difference matters without an injection date
    acquired = datetime.combine(day, acq_time.replace(tzinfo=None))
    injected = datetime.combine(day, inj_time.replace(tzinfo=None))
    detail = f"{acq_where} minus {inj_where}"
    if injected > acquired:
        injected -= timedelta(days=1)
        detail += " (injection time is later than acquisition: previous day assumed)"
        log.warning(
            "%s %s is later than %s %s; assuming injection on the previous day",
            inj_where,
            inj_time.isoformat(),
            acq_where,
            acq_time.isoformat(),
        )
    return Fact(_minutes(acquired - injected), "computed", detail)


def _minutes(delta: timedelta) -> float:
    return round(delta.total_seconds() / 60, 2)


# CT contrast phase (dicom-conventions.md §3.6). Scanners may write an empty agent on native scans or copy
# the agent to every series of the exam, so a non-empty agent counts only if its bolus did not start after
# the acquisition; Enhanced CT says it per frame; text is the last resort.

_UNENHANCED_TEXT = re.compile(
    r"(?<![a-z])(c-|native|nativ|non[- ]?contrast|without contrast|unenhanced|plain|pre)(?![a-z])"
)
_ENHANCED_TEXT = re.compile(r"(?<![a-z])(c\+|contrast|enhanced|arterial|venous|portal|post)(?![a-z])")


def _contrast_phase(ds: Dataset) -> Fact:
    if _text(ds, "Modality") not in (None, "CT"):
        return _unknown("not a CT image")
    usage = [
        str(_get(item, "ContrastBolusAgentAdministered") or "").strip().upper()
        for group in _items(ds, "SharedFunctionalGroupsSequence") + _items(ds, "PerFrameFunctionalGroupsSequence")
        for item in _items(group, "ContrastBolusUsageSequence")
    ]
    if "YES" in usage:
        return Fact("enhanced", "attribute", "ContrastBolusUsageSequence: ContrastBolusAgentAdministered YES")
    if usage and set(usage) == {"NO"}:
        return Fact("unenhanced", "attribute", "ContrastBolusUsageSequence: ContrastBolusAgentAdministered NO")
    agent = _text(ds, "ContrastBolusAgent")
    if agent:
        start = _time(_get(ds, "ContrastBolusStartTime"))
        _, acquired, where = _acquisition(ds)
        if start is not None and acquired is not None and start > acquired.replace(tzinfo=None):
            return Fact(
                "unenhanced", "attribute", f"ContrastBolusAgent {agent!r} but its bolus started after the {where}"
            )
        return Fact("enhanced", "attribute", f"ContrastBolusAgent {agent!r}")
    for keyword, text in _text_sources(ds):
        lowered = text.lower()
        if _UNENHANCED_TEXT.search(lowered):  # first: "non-contrast" also contains "contrast"
            return Fact("unenhanced", "text", f"{keyword} {text!r}")
        if _ENHANCED_TEXT.search(lowered):
            return Fact("enhanced", "text", f"{keyword} {text!r}")
    if ds.get("ContrastBolusAgent") is not None:
        return Fact("unenhanced", "attribute", "ContrastBolusAgent present but empty")
    return _unknown("no Contrast/Bolus attributes and no phase named in the descriptions")


def acquisition_moment(ds: Dataset) -> datetime | None:
    """When the image was acquired, as a naive local date-time (for episode windows and ordering)."""
    day, clock, _ = _acquisition(ds)
    if clock is None:
        day, clock = _date(_get(ds, "StudyDate")), _time(_get(ds, "StudyTime"))
    day = day or _date(_get(ds, "StudyDate"))
    if day is None:
        return None
    return datetime.combine(day, (clock or time(0, 0)).replace(tzinfo=None))
