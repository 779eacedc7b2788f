"""Rule fixtures: header-only examples (DICOM JSON, no patient data) with the route each must get.

Route stage, for ops: `scintnode rules check` runs every fixture in `<rules dir>/fixtures/` and fails when
a rule set routes one differently, so a rule edit that changes routing is caught before it is loaded."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset

from scintnode.route.engine import RuleSet
from scintnode.route.facts import derive_facts

AMBIGUOUS = "ambiguous"  # an episode rule fired but the image fits no slot, or several


@dataclass(frozen=True)
class FixtureResult:
    name: str
    passed: bool
    expected: dict[str, object]
    got: dict[str, object]
    error: str = ""


def route_of(rule_set: RuleSet, header: Dataset) -> dict[str, object]:
    """What the rule set does with a header: the rules that fire and, for episode rules, the slot."""
    facts = derive_facts(header)
    fires = [d.rule for d in rule_set.evaluate(header, facts) if d.fires]
    slots: dict[str, str] = {}
    for rule in fires:
        if rule.episode is not None:
            matched = rule.episode.classify(header, facts)
            slots[rule.name] = matched[0][0].name if len(matched) == 1 else AMBIGUOUS
    return {"fires": sorted(r.name for r in fires), "slots": slots}


def run_fixtures(rule_set: RuleSet, folder: Path) -> list[FixtureResult]:
    results: list[FixtureResult] = []
    for path in sorted(folder.glob("*.json")):
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            header = Dataset.from_json(document["dataset"])
            expected: dict[str, object] = {
                "fires": sorted(document["expect"].get("fires", [])),
                "slots": dict(document["expect"].get("slots", {})),
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            results.append(FixtureResult(path.name, False, {}, {}, f"unreadable fixture: {exc}"))
            continue
        got = route_of(rule_set, header)
        results.append(FixtureResult(path.name, got == expected, expected, got))
    return results


# Attributes a fixture never keeps: fixtures live in git and must hold no patient data.
IDENTIFYING = (
    "PatientName",
    "PatientBirthDate",
    "PatientAddress",
    "OtherPatientIDs",
    "OtherPatientNames",
    "ReferringPhysicianName",
    "InstitutionName",
    "InstitutionAddress",
    "AccessionNumber",
    "StationName",
    "OperatorsName",
    "PerformingPhysicianName",
    "DeviceSerialNumber",
)


def make_fixture(header: Dataset, rule_set: RuleSet, description: str) -> dict[str, object]:
    """A fixture from a real header: identifying data removed, the current route as the expectation."""
    clean = Dataset()
    clean.update(header)
    for keyword in IDENTIFYING:
        if keyword in clean:
            delattr(clean, keyword)
    clean.PatientID = "FIXTURE"
    clean.remove_private_tags()
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in clean:
            delattr(clean, keyword)
    return {"description": description, "expect": route_of(rule_set, clean), "dataset": clean.to_json_dict()}
