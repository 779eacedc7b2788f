"""`scintnode rules check|explain`: validate a rules directory, and show why each rule does or does not fire.

Route stage, for ops staff: the same loader and engine the node uses, run by hand on files."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from scintnode.config import DEFAULT_RULES_DIR, ConfigError, load_settings
from scintnode.route.dsl import RuleError
from scintnode.route.engine import Decision, RuleSet
from scintnode.route.facts import FACT_SPECS, derive_facts
from scintnode.route.fixtures import FixtureResult, make_fixture, run_fixtures
from scintnode.route.loader import check_rule_set, rule_files

EXIT_OK = 0
EXIT_INVALID = 1  # invalid rules, or an input that is not readable DICOM
EXIT_USAGE = 2  # bad arguments or configuration


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scintnode rules", description="Check and explain routing rules.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = commands.add_parser(
        "check",
        help="validate every rule file; print the rule set version and one line per rule",
        description="Validate every rule file in DIR (default: the config's rules_dir, else the repository's "
        "rules/). Exit 0 when valid, 1 naming file, rule and field of each problem, 2 on bad arguments.",
    )
    check.add_argument("directory", nargs="?", type=Path, metavar="DIR")
    check.add_argument("--config", type=Path, metavar="FILE", help="node config: also check destination names")
    explain = commands.add_parser(
        "explain",
        help="for DICOM files, print derived facts and every rule with the trace of why it matches or not",
        description="Read each DICOM file's header (no pixel data), print the derived facts and every rule "
        "with matched / not matched and the trace. Patient names are never printed.",
    )
    check.add_argument("--no-fixtures", action="store_true", help="skip the fixtures in DIR/fixtures/")
    explain.add_argument("files", nargs="+", type=Path, metavar="FILE")
    explain.add_argument("--rules", type=Path, metavar="DIR", help="rules directory (default as for check)")
    explain.add_argument("--config", type=Path, metavar="FILE", help="node config: rules_dir and destinations")
    fixture = commands.add_parser(
        "fixture",
        help="turn DICOM files into rule fixtures (header only, patient data removed, current route expected)",
    )
    fixture.add_argument("files", nargs="+", type=Path, metavar="FILE")
    fixture.add_argument("--out", type=Path, required=True, metavar="DIR", help="e.g. rules/fixtures")
    fixture.add_argument("--rules", type=Path, metavar="DIR", help="rules directory (default as for check)")
    fixture.add_argument("--config", type=Path, metavar="FILE")
    reload = commands.add_parser(
        "reload",
        help="make a running node reload its rules now (it validates them and keeps the old set if invalid)",
    )
    reload.add_argument("--config", type=Path, metavar="FILE", help="the running node's config")
    reload.add_argument("--timeout", type=float, default=15.0)
    replay = commands.add_parser(
        "replay",
        help="re-evaluate the stored headers of past inputs and print what would route differently",
        description="Re-evaluate every input the node completed since --since against the rules in --rules "
        "(default: the config's rules_dir) and print each one whose route would change.",
    )
    replay.add_argument("--since", default="7d", help="how far back, e.g. 12h, 7d (default 7d)")
    replay.add_argument("--rules", type=Path, metavar="DIR", help="candidate rules directory")
    replay.add_argument("--config", type=Path, metavar="FILE", help="the node's config (its index and spool)")
    return parser


def main(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed its message already
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command == "reload":
        from scintnode.route.operate import reload_running_node

        return reload_running_node(args.config, args.timeout, sys.stdout, sys.stderr)
    if args.command == "replay":
        from scintnode.route.operate import replay

        return replay(args.config, args.rules, args.since, sys.stdout, sys.stderr)
    try:
        directory, destinations = _rules_and_destinations(
            args.directory if args.command == "check" else args.rules, args.config
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    rule_set, errors = check_rule_set(directory, destinations=destinations)
    if errors:
        _print_errors(errors, sys.stderr)
        return EXIT_INVALID
    assert rule_set is not None
    if args.command == "fixture":
        return _write_fixtures(rule_set, args.files, args.out, sys.stdout)
    if args.command == "check":
        _print_check(rule_set, destinations is not None, sys.stdout)
        fixtures = rule_set.directory / "fixtures"
        if args.no_fixtures or not fixtures.is_dir():
            return EXIT_OK
        return _print_fixtures(run_fixtures(rule_set, fixtures), sys.stdout)
    return _explain(rule_set, args.files, sys.stdout, sys.stderr)


def _rules_and_destinations(directory: Path | None, config: Path | None) -> tuple[Path, list[str] | None]:
    if config is None:
        return directory or DEFAULT_RULES_DIR, None
    settings = load_settings(config)
    return directory or settings.rules_dir, sorted(settings.destinations)


def _write_fixtures(rule_set: RuleSet, files: Sequence[Path], out_dir: Path, out: TextIO) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in files:
        header = dcmread(path, stop_before_pixels=True)
        modality = str(header.get("Modality", "") or "unknown").lower()
        # neither the name nor the description comes from the file name: it may carry a patient ID
        document = make_fixture(header, rule_set, f"{modality} header made by `scintnode rules fixture`")
        digest = hashlib.sha256(str(header.get("SOPInstanceUID", path.name)).encode()).hexdigest()[:12]
        target = out_dir / f"{modality}-{digest}.json"
        target.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        print(f"{target}: expects {document['expect']} (rename it to say what it is)", file=out)
    return EXIT_OK


def _print_fixtures(results: Sequence[FixtureResult], out: TextIO) -> int:
    failed = [r for r in results if not r.passed]
    for result in results:
        print(f"  fixture {result.name}: {'ok' if result.passed else 'FAILED'}", file=out)
        if not result.passed:
            print(f"    {result.error or f'expected {result.expected}, got {result.got}'}", file=out)
    print(f"{len(results) - len(failed)}/{len(results)} fixture(s) routed as expected", file=out)
    return EXIT_INVALID if failed else EXIT_OK


def _print_errors(errors: Sequence[RuleError], out: TextIO) -> None:
    for error in errors:
        print(f"error: {error}", file=out)
    noun = "problem" if len(errors) == 1 else "problems"
    print(f"{len(errors)} {noun}: the rule set was not loaded", file=out)


def _print_check(rule_set: RuleSet, destinations_checked: bool, out: TextIO) -> None:
    files = len(rule_files(rule_set.directory))
    print(f"rules directory: {rule_set.directory}", file=out)
    print(f"rule set version: {rule_set.version}", file=out)
    checked = (
        "destinations checked against the config"
        if destinations_checked
        else ("destinations not checked (give --config)")
    )
    print(f"{len(rule_set.rules)} rule(s) in {files} file(s); {checked}", file=out)
    if not rule_set.rules:
        print("warning: no rules, so nothing will be routed", file=out)
    for rule in rule_set.rules:
        print(f"  {rule.summary()}", file=out)


def _explain(rule_set: RuleSet, files: Sequence[Path], out: TextIO, err: TextIO) -> int:
    status = EXIT_OK
    print(f"rule set {rule_set.version[:12]} from {rule_set.directory}, {len(rule_set.rules)} rule(s)", file=out)
    for path in files:
        try:
            header = dcmread(path, stop_before_pixels=True)
        except (OSError, InvalidDicomError, ValueError, TypeError, EOFError) as exc:
            print(f"error: {path}: not a readable DICOM file: {exc}", file=err)
            status = EXIT_INVALID
            continue
        print(f"\n== {path}", file=out)
        print(explain_text(rule_set, header), file=out, end="")
    return status


def explain_text(rule_set: RuleSet, header: Dataset) -> str:
    """For one header: what it is, the derived facts, every rule with its trace, and what fires."""
    out = io.StringIO()
    print(f"   {_describe_header(header)}", file=out)
    facts = derive_facts(header)
    print("facts:", file=out)
    width = max(len(name) for name in FACT_SPECS)
    for name, fact in facts.items():
        print(f"  {name:<{width}}  {fact.describe()}", file=out)
    decisions = rule_set.evaluate(header, facts)
    print("rules:", file=out)
    for decision in decisions:
        print(f"  {_verdict(decision)}", file=out)
        for line in decision.trace:
            print(f"    {line}", file=out)
        if decision.fires and decision.rule.episode is not None:
            slots = decision.rule.episode.classify(header, facts)
            names = ", ".join(slot.name for slot, _ in slots)
            verdict = f"slot {names}" if len(slots) == 1 else f"ambiguous ({names or 'no slot fits'})"
            print(f"    episode: {verdict}", file=out)
    firing = [d.rule.name for d in decisions if d.fires]
    print(f"result: {'fires ' + ', '.join(firing) if firing else 'no rule fires'}", file=out)
    return out.getvalue()


def _describe_header(header: Dataset) -> str:
    """What the file is, for a person; Patient ID but never Patient Name."""
    sop_class = header.get("SOPClassUID")
    parts = [
        getattr(sop_class, "name", None) or "unknown SOP class",
        f"Modality {header.get('Modality') or '?'}",
        f"Patient ID {header.get('PatientID') or '?'}",
        f"Study Date {header.get('StudyDate') or '?'}",
        f"Series {header.get('SeriesNumber') or '?'} {str(header.get('SeriesDescription') or '')!r}",
    ]
    return ", ".join(parts)


def _verdict(decision: Decision) -> str:
    rule = decision.rule
    if decision.fires:
        return (
            f"{rule.name}: MATCHED, fires -> network {rule.network}, outputs {', '.join(rule.outputs)}, "
            f"to {', '.join(rule.destinations)}"
        )
    if decision.matched:
        return f"{rule.name}: MATCHED, does not fire (see last line)"
    return f"{rule.name}: not matched"
