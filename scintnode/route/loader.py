"""Loading rules/*.yaml into one immutable RuleSet whose version is the SHA-256 of its canonical content.

Route stage, set-up: the node and `scintnode rules check` call this; an invalid set is refused whole."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from scintnode.route.dsl import (
    Loc,
    RuleError,
    SchemaError,
    SchemaProblem,
    format_loc,
    parse_rules,
)
from scintnode.route.engine import Rule, RuleSet, compile_rule

RULE_FILE_SUFFIXES = (".yaml", ".yml")
CANONICAL_FORMAT = "scintnode-rules/1"


def rule_files(directory: Path) -> list[Path]:
    """The rule files of a directory in evaluation order (by name); hidden files and sub-folders skipped."""
    return sorted(
        (
            p
            for p in directory.iterdir()
            if p.suffix in RULE_FILE_SUFFIXES and not p.name.startswith(".") and p.is_file()
        ),
        key=lambda p: p.name,
    )


def load_rule_set(
    directory: Path,
    *,
    networks: Iterable[str] | None = None,
    destinations: Iterable[str] | None = None,
) -> RuleSet:
    """Load and check every rule file; raises the first RuleError.

    `networks` defaults to the networks this build can run (scintnode.models.catalog); `destinations`
    None leaves destination names unchecked (pass the node config's destination names to check them)."""
    rule_set, errors = check_rule_set(directory, networks=networks, destinations=destinations)
    if errors:
        raise errors[0]
    assert rule_set is not None
    return rule_set


def check_rule_set(
    directory: Path,
    *,
    networks: Iterable[str] | None = None,
    destinations: Iterable[str] | None = None,
) -> tuple[RuleSet | None, list[RuleError]]:
    """Every problem of a rules directory (not just the first), and the RuleSet when there are none."""
    directory = Path(directory)
    if not directory.is_dir():
        return None, [RuleError(str(directory), None, None, "no such rules directory")]
    if networks is None:
        from scintnode.models.catalog import network_names

        networks = network_names()
    known_networks = frozenset(networks)
    known_destinations = None if destinations is None else frozenset(destinations)

    errors: list[RuleError] = []
    loaded: list[_LoadedFile] = []
    for path in rule_files(directory):
        result = _load_file(path, known_networks, known_destinations)
        errors.extend(result.errors)
        loaded.append(result)

    first_seen: dict[str, _LoadedFile] = {}
    for result in loaded:
        for index, name in result.names:
            if name in first_seen:
                errors.append(
                    result.error(
                        ("rules", index, "name"),
                        f"duplicate rule name; {name} is already defined in {first_seen[name].path.name}",
                    )
                )
            else:
                first_seen[name] = result
    if errors:
        return None, errors
    rules = tuple(rule for result in loaded for rule in result.rules)
    canonical = {
        "format": CANONICAL_FORMAT,
        "files": [{"file": r.path.name, "rules": r.canonical} for r in loaded],
    }
    version = hashlib.sha256(
        json.dumps(canonical, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    ).hexdigest()
    return RuleSet(version=version, rules=rules, directory=directory.resolve()), []


@dataclass
class _LoadedFile:
    path: Path
    root: yaml.Node | None = None
    raw: Any = None
    rules: tuple[Rule, ...] = ()
    names: tuple[tuple[int, str], ...] = ()  # (position, name) of every well-formed rule
    canonical: tuple[dict[str, Any], ...] = ()
    errors: tuple[RuleError, ...] = ()

    def error(self, loc: Loc, message: str) -> RuleError:
        rule: str | None = None
        field = format_loc(loc) or None
        if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
            rule = _rule_label(self.raw, loc[1])
            field = format_loc(loc[2:]) or None
        return RuleError(str(self.path), rule, field, message, _line_of(self.root, loc))


def _load_file(path: Path, networks: frozenset[str], destinations: frozenset[str] | None) -> _LoadedFile:
    loaded = _LoadedFile(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        loaded.errors = (RuleError(str(path), None, None, f"cannot read the file: {exc}"),)
        return loaded
    try:
        loaded.root = yaml.compose(text, Loader=yaml.SafeLoader)
        loaded.raw = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        column = f" (column {mark.column + 1})" if mark is not None else ""
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        loaded.errors = (RuleError(str(path), None, None, f"YAML syntax error: {problem}{column}", line),)
        return loaded
    except yaml.YAMLError as exc:
        loaded.errors = (RuleError(str(path), None, None, f"YAML error: {exc}"),)
        return loaded

    problems = _duplicate_keys(loaded.root, ())
    specs, schema_problems = parse_rules(loaded.raw)
    problems.extend(schema_problems)
    loaded.names = tuple((index, spec.name) for index, spec in specs)
    rules: list[Rule] = []
    for index, spec in specs:
        loc: Loc = ("rules", index)
        try:
            rules.append(compile_rule(spec, path.name, loc))
        except SchemaError as exc:
            problems.extend(exc.problems)
        if spec.network.strip() not in networks:
            known = ", ".join(sorted(networks)) or "none"
            problems.append(
                SchemaProblem((*loc, "network"), f"unknown network {spec.network!r}; this build has: {known}")
            )
        for position, name in enumerate(spec.destinations):
            if destinations is not None and name.strip() not in destinations:
                known = ", ".join(sorted(destinations)) or "none"
                problems.append(
                    SchemaProblem(
                        (*loc, "destinations", position),
                        f"unknown destination {name!r}; the configuration defines: {known}",
                    )
                )
    if not problems:
        loaded.rules = tuple(rules)
        loaded.canonical = tuple(spec.model_dump(mode="json", by_alias=True, exclude_none=True) for _, spec in specs)
    loaded.errors = tuple(loaded.error(p.loc, p.message) for p in problems)
    return loaded


def _duplicate_keys(node: yaml.Node | None, loc: Loc) -> list[SchemaProblem]:
    """PyYAML keeps the last of two equal keys without a word; a rule file must not."""
    problems: list[SchemaProblem] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.value == "<<":
                continue
            if key.value in seen:
                problems.append(SchemaProblem((*loc, key.value), f"key `{key.value}` appears twice in one mapping"))
            seen.add(key.value)
            problems.extend(_duplicate_keys(value, (*loc, key.value)))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            problems.extend(_duplicate_keys(item, (*loc, index)))
    return problems


def _line_of(root: yaml.Node | None, loc: Loc) -> int | None:
    """The 1-based line of the deepest YAML node the location reaches."""
    if root is None:
        return None
    node: yaml.Node = root
    line = node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            match = next((pair for pair in node.value if getattr(pair[0], "value", None) == part), None)
            if match is None:
                return line
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _rule_label(raw: Any, index: int) -> str:
    """A rule's name as written, or its position when the name itself is missing or wrong."""
    try:
        name = raw["rules"][index]["name"]
    except (KeyError, IndexError, TypeError):
        name = None
    return name.strip() if isinstance(name, str) and name.strip() else f"#{index + 1} (unnamed)"
