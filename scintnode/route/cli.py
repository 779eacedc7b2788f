"""`scintnode rules check|explain`: validate a rules directory, and show why each rule does or does not fire.

Route stage, for ops staff: the same loader and engine the node uses, run by hand on files."""

from __future__ import annotations

import argparse
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
    explain.add_argument("files", nargs="+", type=Path, metavar="FILE")
    explain.add_argument("--rules", type=Path, metavar="DIR", help="rules directory (default as for check)")
    explain.add_argument("--config", type=Path, metavar="FILE", help="node config: rules_dir and destinations")
    return parser


def main(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed its message already
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
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
    if args.command == "check":
        _print_check(rule_set, destinations is not None, sys.stdout)
        return EXIT_OK
    return _explain(rule_set, args.files, sys.stdout, sys.stderr)


def _rules_and_destinations(directory: Path | None, config: Path | None) -> tuple[Path, list[str] | None]:
    if config is None:
        return directory or DEFAULT_RULES_DIR, None
    settings = load_settings(config)
    return directory or settings.rules_dir, sorted(settings.destinations)


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
        firing = [d.rule.name for d in decisions if d.fires]
        print(f"result: {'fires ' + ', '.join(firing) if firing else 'no rule fires'}", file=out)
    return status


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
