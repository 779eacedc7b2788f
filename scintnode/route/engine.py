"""Rule evaluation: checked rule models compiled to predicate objects that explain every answer.

Route stage: a header (and its derived facts) goes in; one Decision per rule, with a trace, comes out."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from pydicom.datadict import dictionary_VR, keyword_dict, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.coding import Code

from scintnode.route import dsl
from scintnode.route.dsl import Loc, SchemaError, SchemaProblem
from scintnode.route.facts import FACT_SPECS, Fact, NMFacts, canonical_code, derive_facts


class Outcome(Enum):
    """Three-valued, like SQL NULL: a test on something the header lacks is MISSING, not FAIL."""

    PASS = "pass"
    FAIL = "fail"
    MISSING = "missing"


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    lines: tuple[str, ...]


@dataclass(frozen=True)
class Context:
    header: Dataset
    facts: NMFacts


class Node(Protocol):
    def evaluate(self, ctx: Context, depth: int) -> Result: ...

    def count(self) -> int: ...


_INDENT = "  "
_MAX_SHOWN = 6
_NUMERIC_VRS = frozenset({"DS", "IS", "FL", "FD", "SL", "SS", "UL", "US", "SV", "UV"})
_PERSON_NAME = "(person name, not shown)"


# Comparing values


def _as_text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace").rstrip("\x00")
    return str(value).strip()


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(_as_text(value))
    except ValueError:
        return None


@dataclass(frozen=True)
class Comparison:
    """One operator and its operand; `test` is true when any of the values satisfies it."""

    operator: str
    operand: Any
    case_sensitive: bool = False
    pattern: re.Pattern[str] | None = None

    def _fold(self, text: str) -> str:
        return text if self.case_sensitive else text.casefold()

    def _equal(self, value: Any, wanted: Any) -> bool:
        if isinstance(wanted, (int, float)):
            number = _as_number(value)
            return number is not None and number == float(wanted)
        return self._fold(_as_text(value)) == self._fold(str(wanted).strip())

    def test(self, value: Any) -> bool:
        op = self.operator
        if op == "equals":
            return self._equal(value, self.operand)
        if op == "in":
            return any(self._equal(value, wanted) for wanted in self.operand)
        if op == "matches":
            assert self.pattern is not None
            return self.pattern.search(_as_text(value)) is not None
        if op == "contains":
            return self._fold(str(self.operand).strip()) in self._fold(_as_text(value))
        number = _as_number(value)
        if number is None:
            return False
        if op == "gt":
            return bool(number > self.operand)
        if op == "ge":
            return bool(number >= self.operand)
        if op == "lt":
            return bool(number < self.operand)
        if op == "le":
            return bool(number <= self.operand)
        if op == "between":
            low, high = self.operand
            return bool(low <= number <= high)
        raise AssertionError(f"operator {op} is not a value comparison")

    def describe(self) -> str:
        if self.operator == "in":
            shown = "[" + ", ".join(_show(v) for v in self.operand) + "]"
        elif self.operator == "between":
            shown = f"[{_show(self.operand[0])}, {_show(self.operand[1])}]"
        else:
            shown = _show(self.operand)
        case = " (case-sensitive)" if self.case_sensitive and self.operator in dsl.TEXT_OPERATORS else ""
        return f"{self.operator} {shown}{case}"


def _show(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.10g}"
    text = _as_text(value)
    return repr(text if len(text) <= 64 else text[:61] + "...")


def _show_values(values: Sequence[Any]) -> str:
    shown = ", ".join(_show(v) for v in values[:_MAX_SHOWN])
    more = f" and {len(values) - _MAX_SHOWN} more" if len(values) > _MAX_SHOWN else ""
    return shown + more


def _line(depth: int, outcome: Outcome, text: str) -> str:
    return f"{_INDENT * depth}[{outcome.value}] {text}"


# Attribute paths


@dataclass(frozen=True)
class Segment:
    """One step of an attribute path: a keyword or tag, and an item/value position (1-based) or any."""

    tag: int
    name: str
    vr: str | None  # None: a private tag the dictionary does not know
    position: int | None = None
    any_item: bool = False

    def text(self) -> str:
        suffix = "[*]" if self.any_item else (f"[{self.position}]" if self.position is not None else "")
        return self.name + suffix


_SEGMENT = re.compile(
    r"^(?:(?P<name>[A-Za-z][A-Za-z0-9]*)|\((?P<group>[0-9A-Fa-f]{4}),(?P<element>[0-9A-Fa-f]{4})\)|(?P<hex>[0-9A-Fa-f]{8}))"
    r"(?:\[(?P<index>\*|-?\d+)\])?$"
)


def compile_path(text: str, loc: Loc) -> tuple[Segment, ...]:
    """`Seq[*].Inner[2].Keyword` -> checked segments; every problem names the segment at fault."""

    def fail(message: str) -> SchemaError:
        return SchemaError([SchemaProblem(loc, message)])

    parts = text.strip().split(".")
    segments: list[Segment] = []
    for number, part in enumerate(parts, start=1):
        last = number == len(parts)
        match = _SEGMENT.match(part.strip())
        if match is None:
            raise fail(
                f"cannot read path segment {part!r} in {text!r}: write a DICOM keyword or a tag as "
                "(gggg,eeee), optionally followed by [*] (any item) or [n] (item or value n, counting from 1)"
            )
        segment = _segment(match, part, fail)
        if segment.vr == "SQ" and not last and segment.position is None and not segment.any_item:
            raise fail(f"{segment.name} is a sequence: write {segment.name}[*] (any item) or {segment.name}[n]")
        if not last and segment.vr not in ("SQ", None):
            raise fail(f"{segment.name} (VR {segment.vr}) is not a sequence, so nothing can follow it in the path")
        if segment.any_item and segment.vr not in ("SQ", None):
            raise fail(
                f"[*] is for sequences; {segment.name} (VR {segment.vr}) is compared value by value already "
                f"(write {segment.name}[n] for value n)"
            )
        segments.append(segment)
    return tuple(segments)


def _segment(match: re.Match[str], part: str, fail: Callable[[str], SchemaError]) -> Segment:
    name = match.group("name")
    if name is not None:
        tag = tag_for_keyword(name)
        if tag is None:
            close = _close_keywords(name)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise fail(f"unknown DICOM keyword {name!r}{hint}")
    else:
        tag = int(match.group("hex") or match.group("group") + match.group("element"), 16)
    vr: str | None
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        if (tag >> 16) % 2 == 0:
            raise fail(f"tag ({tag >> 16:04X},{tag & 0xFFFF:04X}) is not in the DICOM dictionary") from None
        vr = None  # private tags are allowed by number; their meaning is the vendor's
    label = name or keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    index = match.group("index")
    if index is None:
        return Segment(tag, label, vr)
    if index == "*":
        return Segment(tag, label, vr, any_item=True)
    if int(index) < 1:
        raise fail(f"{part}: positions count from 1, as in the DICOM standard (Value 1, Item 1)")
    return Segment(tag, label, vr, position=int(index))


def _close_keywords(name: str) -> list[str]:
    return difflib.get_close_matches(name, keyword_dict.keys(), n=2)


@dataclass(frozen=True)
class Found:
    """What a path reached: values (or code-sequence items), and whether the element was there at all."""

    values: tuple[Any, ...]
    items: tuple[Dataset, ...]
    present: bool  # an element was found, even if empty
    person_name: bool = False
    unreadable: str = ""


_READ_ERRORS = (ValueError, TypeError, KeyError, AttributeError, OverflowError, UnicodeError)


def resolve(header: Dataset, path: Sequence[Segment]) -> Found:
    """Follow a path with any-item semantics: every sequence item reached contributes its values."""
    current: list[Dataset] = [header]
    for segment in path[:-1]:
        following: list[Dataset] = []
        for dataset in current:
            reached = _sequence_items(dataset, segment.tag)
            if segment.position is not None:
                reached = reached[segment.position - 1 : segment.position]
            following.extend(reached)
        current = following
    last = path[-1]
    values: list[Any] = []
    items: list[Dataset] = []
    present = person_name = False
    unreadable = ""
    for dataset in current:
        try:
            if last.tag not in dataset:
                continue
            element = dataset[last.tag]
            value = element.value
            vr = element.VR
        except _READ_ERRORS as exc:
            unreadable = f"{last.name} unreadable: {exc}"
            continue
        present = True
        person_name = person_name or vr == "PN"
        if vr == "SQ":
            found_items = [i for i in (value or []) if isinstance(i, Dataset)]
            if last.position is not None:
                found_items = found_items[last.position - 1 : last.position]
            items.extend(found_items)
            continue
        element_values = _element_values(value)
        if last.position is not None:
            element_values = element_values[last.position - 1 : last.position]
        values.extend(element_values)
    return Found(tuple(values), tuple(items), present, person_name, unreadable)


def _sequence_items(dataset: Dataset, tag: int) -> list[Dataset]:
    try:
        if tag not in dataset:
            return []
        value = dataset[tag].value
    except _READ_ERRORS:
        return []
    if isinstance(value, (str, bytes)) or value is None:
        return []
    try:
        return [item for item in value if isinstance(item, Dataset)]
    except TypeError:
        return []


def _element_values(value: Any) -> list[Any]:
    """Non-empty values of one element; a multi-valued element gives each value."""
    if value is None:
        return []
    if not isinstance(value, (MultiValue, list, tuple)):
        return [value] if _as_text(value) else []
    return [v for v in value if v is not None and _as_text(v)]


# Predicates


@dataclass(frozen=True)
class AttributeTest:
    path: tuple[Segment, ...]
    comparison: Comparison | None = None  # None for present/absent/code
    operator: str = ""
    code: tuple[str, str] | None = None

    @property
    def subject(self) -> str:
        return ".".join(s.text() for s in self.path)

    def count(self) -> int:
        return 1

    def evaluate(self, ctx: Context, depth: int) -> Result:
        found = resolve(ctx.header, self.path)
        op = self.comparison.describe() if self.comparison else self._describe_op()
        what = f"{self.subject} {op}"
        if self.operator in ("present", "absent"):
            has = bool(found.values or found.items)
            state = self._found_text(found)
            passed = has if self.operator == "present" else not has
            return _result(depth, Outcome.PASS if passed else Outcome.FAIL, f"{what}: {state}")
        if self.operator == "code":
            return self._evaluate_code(found, depth, what)
        assert self.comparison is not None
        if not found.values:
            return _result(depth, Outcome.MISSING, f"{what}: {self._found_text(found)}")
        passed = any(self.comparison.test(v) for v in found.values)
        return _result(depth, Outcome.PASS if passed else Outcome.FAIL, f"{what}: {self._found_text(found)}")

    def _describe_op(self) -> str:
        if self.code is not None:
            return f"code {self.code[1]} {self.code[0]}"
        return self.operator

    def _found_text(self, found: Found) -> str:
        note = f" ({found.unreadable})" if found.unreadable else ""
        if found.items:
            return f"found {len(found.items)} item(s){note}"
        if found.values:
            shown = _PERSON_NAME if found.person_name else _show_values(found.values)
            return f"found {shown}{note}"
        if found.present:
            return f"present but empty{note}"
        return f"not in header{note}"

    def _evaluate_code(self, found: Found, depth: int, what: str) -> Result:
        assert self.code is not None
        pairs = [_code_of(item) for item in found.items]
        codes = [p for p in pairs if p is not None]
        if not codes:
            return _result(depth, Outcome.MISSING, f"{what}: {self._found_text(found)}, no coded items")
        passed = any(_codes_equivalent(c, self.code) for c in codes)
        shown = ", ".join(f"{scheme} {value}" for value, scheme in codes[:_MAX_SHOWN])
        return _result(depth, Outcome.PASS if passed else Outcome.FAIL, f"{what}: found {shown}")


def _code_of(item: Dataset) -> tuple[str, str] | None:
    try:
        value = item.get("CodeValue") or item.get("LongCodeValue") or item.get("URNCodeValue")
        scheme = item.get("CodingSchemeDesignator")
    except _READ_ERRORS:
        return None
    if not value or not scheme:
        return None
    return _as_text(value), _as_text(scheme)


def _codes_equivalent(found: tuple[str, str], wanted: tuple[str, str]) -> bool:
    """Same code, counting a legacy SNOMED (SRT/SNM3) code as its SCT equivalent."""
    if canonical_code(*found) == canonical_code(*wanted):
        return True
    # pydicom's Code equality knows the full SRT -> SCT mapping, beyond our own table
    return bool(Code(found[0], found[1].upper(), "") == Code(wanted[0], wanted[1].upper(), ""))


@dataclass(frozen=True)
class FactTest:
    name: str
    comparison: Comparison | None
    operator: str

    def count(self) -> int:
        return 1

    def evaluate(self, ctx: Context, depth: int) -> Result:
        fact: Fact = ctx.facts.get(self.name)
        op = self.comparison.describe() if self.comparison else self.operator
        what = f"fact {self.name} {op}"
        values: tuple[Any, ...] = (
            () if fact.value is None else fact.value if isinstance(fact.value, tuple) else (fact.value,)
        )
        found = f"found {_show_values(values)} ({fact.source}: {fact.detail})" if values else fact.describe()
        if self.operator in ("present", "absent"):
            passed = bool(values) if self.operator == "present" else not values
            return _result(depth, Outcome.PASS if passed else Outcome.FAIL, f"{what}: {found}")
        assert self.comparison is not None
        if not values:
            return _result(depth, Outcome.MISSING, f"{what}: {found}")
        passed = any(self.comparison.test(v) for v in values)
        return _result(depth, Outcome.PASS if passed else Outcome.FAIL, f"{what}: {found}")


def _result(depth: int, outcome: Outcome, text: str) -> Result:
    return Result(outcome, (_line(depth, outcome, text),))


@dataclass(frozen=True)
class AllNode:
    children: tuple[Node, ...]

    def count(self) -> int:
        return sum(c.count() for c in self.children)

    def evaluate(self, ctx: Context, depth: int) -> Result:
        results = [c.evaluate(ctx, depth + 1) for c in self.children]  # no short cut: the trace shows all
        outcomes = {r.outcome for r in results}
        outcome = (
            Outcome.FAIL
            if Outcome.FAIL in outcomes
            else Outcome.MISSING
            if Outcome.MISSING in outcomes
            else Outcome.PASS
        )
        return _combine(depth, outcome, f"all of {len(results)}", results)


@dataclass(frozen=True)
class AnyNode:
    children: tuple[Node, ...]

    def count(self) -> int:
        return sum(c.count() for c in self.children)

    def evaluate(self, ctx: Context, depth: int) -> Result:
        results = [c.evaluate(ctx, depth + 1) for c in self.children]
        outcomes = {r.outcome for r in results}
        outcome = (
            Outcome.PASS
            if Outcome.PASS in outcomes
            else Outcome.MISSING
            if Outcome.MISSING in outcomes
            else Outcome.FAIL
        )
        return _combine(depth, outcome, f"any of {len(results)}", results)


@dataclass(frozen=True)
class NotNode:
    child: Node

    def count(self) -> int:
        return self.child.count()

    def evaluate(self, ctx: Context, depth: int) -> Result:
        result = self.child.evaluate(ctx, depth + 1)
        flipped = {Outcome.PASS: Outcome.FAIL, Outcome.FAIL: Outcome.PASS, Outcome.MISSING: Outcome.MISSING}
        return _combine(depth, flipped[result.outcome], "not", [result])


def _combine(depth: int, outcome: Outcome, text: str, results: Sequence[Result]) -> Result:
    lines = [_line(depth, outcome, text)]
    for r in results:
        lines.extend(r.lines)
    return Result(outcome, tuple(lines))


# Compiling the checked models


def compile_condition(spec: dsl.Condition, loc: Loc) -> Node:
    """Compile a checked condition; raises SchemaError with the problems of every predicate in it."""
    if isinstance(spec, dsl.AllOf):
        return AllNode(_compile_children(spec.all, (*loc, "all")))
    if isinstance(spec, dsl.AnyOf):
        return AnyNode(_compile_children(spec.any, (*loc, "any")))
    if isinstance(spec, dsl.NotOf):
        return NotNode(compile_condition(spec.not_, (*loc, "not")))
    if spec.fact is not None:
        return _compile_fact(spec, loc)
    return _compile_attribute(spec, loc)


def _compile_children(specs: Sequence[dsl.Condition], loc: Loc) -> tuple[Node, ...]:
    nodes: list[Node] = []
    problems: list[SchemaProblem] = []
    for index, child in enumerate(specs):
        try:
            nodes.append(compile_condition(child, (*loc, index)))
        except SchemaError as exc:
            problems.extend(exc.problems)
    if problems:
        raise SchemaError(problems)
    return tuple(nodes)


def _comparison(spec: dsl.Predicate, loc: Loc) -> Comparison | None:
    op = spec.operator
    if op in ("present", "absent", "code"):
        return None
    sensitive = spec.case == "sensitive"
    pattern = None
    if op == "matches":
        assert spec.matches is not None
        if len(spec.matches) > 500:
            raise SchemaError([SchemaProblem((*loc, "matches"), "regular expression longer than 500 characters")])
        try:
            pattern = re.compile(spec.matches, 0 if sensitive else re.IGNORECASE)
        except re.error as exc:
            raise SchemaError(
                [SchemaProblem((*loc, "matches"), f"bad regular expression {spec.matches!r}: {exc}")]
            ) from None
    return Comparison(op, spec.operand(), sensitive, pattern)


def _compile_attribute(spec: dsl.Predicate, loc: Loc) -> AttributeTest:
    assert spec.attribute is not None
    path = compile_path(spec.attribute, (*loc, "attribute"))
    last = path[-1]
    op = spec.operator
    op_loc = (*loc, "in" if op == "in" else op)
    if op == "code":
        if last.vr not in ("SQ", None):
            raise SchemaError([SchemaProblem(op_loc, f"`code` needs a code sequence; {last.name} has VR {last.vr}")])
        assert spec.code is not None
        return AttributeTest(path, None, op, (spec.code.value.strip(), spec.code.scheme.strip()))
    if op not in ("present", "absent") and last.vr == "SQ":
        raise SchemaError(
            [
                SchemaProblem(
                    (*loc, "attribute"),
                    f"{last.name} is a sequence; name an attribute inside it "
                    f"({last.name}[*].Keyword), or use present, absent or code",
                )
            ]
        )
    if op in dsl.NUMERIC_OPERATORS and last.vr not in _NUMERIC_VRS and last.vr is not None:
        raise SchemaError(
            [
                SchemaProblem(
                    op_loc,
                    f"`{op}` compares numbers; {last.name} has VR {last.vr} "
                    "(dates and times are not compared as numbers)",
                )
            ]
        )
    return AttributeTest(path, _comparison(spec, loc), op)


def _compile_fact(spec: dsl.Predicate, loc: Loc) -> FactTest:
    assert spec.fact is not None
    name = spec.fact.strip()
    fact_spec = FACT_SPECS.get(name)
    if fact_spec is None:
        raise SchemaError(
            [SchemaProblem((*loc, "fact"), f"unknown fact {name!r}; known facts: {', '.join(FACT_SPECS)}")]
        )
    op = spec.operator
    op_loc = (*loc, "in" if op == "in" else op)
    if op == "code":
        raise SchemaError([SchemaProblem(op_loc, "`code` applies to attributes; facts are already named values")])
    if fact_spec.kind == "text" and op in dsl.NUMERIC_OPERATORS:
        raise SchemaError([SchemaProblem(op_loc, f"`{op}` compares numbers; fact {name} is text")])
    if fact_spec.kind == "number":
        if op in ("matches", "contains"):
            raise SchemaError([SchemaProblem(op_loc, f"`{op}` compares text; fact {name} is a number")])
        if op in ("equals", "in"):
            operands = spec.in_ if op == "in" else (spec.equals,)
            if any(isinstance(v, str) for v in operands or ()):
                raise SchemaError([SchemaProblem(op_loc, f"fact {name} is a number; compare it with numbers")])
    if fact_spec.vocabulary is not None and op in ("equals", "in"):
        operands = spec.in_ if op == "in" else (spec.equals,)
        for value in operands or ():
            if not isinstance(value, str) or value.strip().lower() not in fact_spec.vocabulary:
                raise SchemaError(
                    [
                        SchemaProblem(
                            op_loc,
                            f"fact {name} is never {value!r}; its values are {', '.join(sorted(fact_spec.vocabulary))}",
                        )
                    ]
                )
    return FactTest(name, _comparison(spec, loc), op)


# Rules, decisions and rule sets


@dataclass(frozen=True)
class ValueRef:
    """A value read from each episode member for a constraint: a fact or a top-level attribute."""

    kind: str  # "fact" | "attribute"
    name: str
    path: tuple[Segment, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"

    def read(self, header: Dataset, facts: NMFacts) -> str | float | None:
        if self.kind == "fact":
            value = facts.get(self.name).value
            if isinstance(value, tuple):
                return ",".join(value) or None
            return value
        found = resolve(header, self.path)
        if not found.values:
            return None
        first = found.values[0]
        return first if isinstance(first, (int, float)) and not isinstance(first, bool) else str(first).strip()


@dataclass(frozen=True)
class Constraint:
    """A condition between slots, checked once every slot it names is filled."""

    kind: str  # "difference" | "same"
    value: ValueRef
    slots: tuple[str, ...]  # difference: (from, to)
    at_least: float | None = None
    at_most: float | None = None

    def describe(self) -> str:
        if self.kind == "same":
            return f"same {self.value.name} across {', '.join(self.slots)}"
        bounds = " and ".join(
            text
            for text in (
                f">= {self.at_least:g}" if self.at_least is not None else "",
                f"<= {self.at_most:g}" if self.at_most is not None else "",
            )
            if text
        )
        return f"{self.value.name} of {self.slots[1]} minus {self.slots[0]} {bounds}"

    def check(self, values: dict[str, list[str | float | None]]) -> tuple[bool | None, str]:
        """(True/False, why) once the named slots have values; (None, why) while any is still empty."""
        if any(not values.get(slot) for slot in self.slots):
            return None, f"{self.describe()}: waiting for {', '.join(s for s in self.slots if not values.get(s))}"
        if self.kind == "same":
            seen = {v for slot in self.slots for v in values[slot]}
            if None in seen:
                return False, f"{self.describe()}: unknown on at least one image"
            return len(seen) == 1, f"{self.describe()}: found {sorted(map(str, seen))}"
        first, second = values[self.slots[0]], values[self.slots[1]]
        numbers = [v for v in (*first, *second) if isinstance(v, (int, float))]
        if len(numbers) != len(first) + len(second):
            return False, f"{self.describe()}: not a number on at least one image"
        differences = [float(b) - float(a) for a in first for b in second]  # type: ignore[arg-type]
        ok = all(
            (self.at_least is None or d >= self.at_least) and (self.at_most is None or d <= self.at_most)
            for d in differences
        )
        return ok, f"{self.describe()}: found {', '.join(f'{d:g}' for d in differences)}"


@dataclass(frozen=True)
class Slot:
    name: str
    condition: Node
    required: bool
    count: int


@dataclass(frozen=True)
class EpisodePlan:
    """How a rule gathers its inputs: slots joined on the patient within a window, until a deadline."""

    join: str
    window_seconds: float
    deadline_seconds: float
    on_deadline: str  # keep-waiting | run-partial | give-up
    late_data: str  # ignore | supersede
    slots: tuple[Slot, ...]
    constraints: tuple[Constraint, ...]

    def slot(self, name: str) -> Slot:
        return next(s for s in self.slots if s.name == name)

    def classify(self, header: Dataset, facts: NMFacts) -> list[tuple[Slot, tuple[str, ...]]]:
        """The slots whose selector this image matches, with each selector's trace."""
        ctx = Context(header, facts)
        matched = []
        for slot in self.slots:
            result = slot.condition.evaluate(ctx, 1)
            if result.outcome is Outcome.PASS:
                matched.append((slot, result.lines))
        return matched

    def values(self, header: Dataset, facts: NMFacts) -> dict[str, str | float | None]:
        """What each constraint needs from this image, keyed by ValueRef.key, stored with the member."""
        return {c.value.key: c.value.read(header, facts) for c in self.constraints}


def _compile_value(spec: dsl.ValueSpec, loc: Loc) -> ValueRef:
    if spec.fact is not None:
        name = spec.fact.strip()
        if name not in FACT_SPECS:
            raise SchemaError([SchemaProblem((*loc, "fact"), f"unknown fact {name!r}; known: {', '.join(FACT_SPECS)}")])
        return ValueRef("fact", name)
    assert spec.attribute is not None
    return ValueRef("attribute", spec.attribute.strip(), compile_path(spec.attribute.strip(), (*loc, "attribute")))


def compile_episode(spec: dsl.EpisodeSpec, loc: Loc) -> EpisodePlan:
    problems: list[SchemaProblem] = []
    slots: list[Slot] = []
    for index, slot in enumerate(spec.slots):
        try:
            condition = compile_condition(slot.when, (*loc, "slots", index, "when"))
        except SchemaError as exc:
            problems.extend(exc.problems)
            continue
        slots.append(Slot(slot.name, condition, slot.required, slot.count))
    constraints: list[Constraint] = []
    for index, item in enumerate(spec.constraints):
        where: Loc = (*loc, "constraints", index)
        try:
            if item.difference is not None:
                d = item.difference
                value = _compile_value(d, (*where, "difference"))
                constraints.append(
                    Constraint(
                        "difference",
                        value,
                        (d.from_, d.to),
                        None if d.at_least is None else float(d.at_least),
                        None if d.at_most is None else float(d.at_most),
                    )
                )
            elif item.same is not None:
                constraints.append(Constraint("same", _compile_value(item.same, (*where, "same")), item.same.slots))
        except SchemaError as exc:
            problems.extend(exc.problems)
    if problems:
        raise SchemaError(problems)
    return EpisodePlan(
        spec.join,
        spec.window,
        spec.deadline,
        spec.on_deadline,
        spec.late_data,
        tuple(slots),
        tuple(constraints),
    )


@dataclass(frozen=True)
class Rule:
    """A compiled rule: when `condition` passes, run `network` and send `outputs` to `destinations`."""

    name: str
    file: str
    network: str
    outputs: tuple[str, ...]
    destinations: tuple[str, ...]
    condition: Node
    description: str = ""
    enabled: bool = True
    stop: bool = False
    episode: EpisodePlan | None = None

    def summary(self) -> str:
        flags = ("" if self.enabled else ", DISABLED") + (", stop" if self.stop else "")
        if self.episode is not None:
            slots = ", ".join(f"{s.name}{'' if s.required else '?'}" for s in self.episode.slots)
            flags += f"; episode [{slots}]"
        return (
            f"{self.name} ({self.file}): network {self.network}, outputs {', '.join(self.outputs)}, "
            f"to {', '.join(self.destinations)}; {self.condition.count()} condition(s){flags}"
        )


def compile_rule(spec: dsl.RuleSpec, file: str, loc: Loc) -> Rule:
    return Rule(
        name=spec.name,
        file=file,
        network=spec.network.strip(),
        outputs=tuple(spec.outputs),
        destinations=tuple(d.strip() for d in spec.destinations),
        condition=compile_condition(spec.when, (*loc, "when")),
        description=spec.description.strip(),
        enabled=spec.enabled,
        stop=spec.stop,
        episode=None if spec.episode is None else compile_episode(spec.episode, (*loc, "episode")),
    )


@dataclass(frozen=True)
class Decision:
    """One rule's answer for one header. `matched`: its conditions passed; `fires`: the node acts on it."""

    rule: Rule
    matched: bool
    trace: tuple[str, ...]
    fires: bool


@dataclass(frozen=True)
class RuleSet:
    """An immutable, versioned set of rules; `version` is the SHA-256 of its canonical content."""

    version: str
    rules: tuple[Rule, ...]
    directory: Path

    def evaluate(self, header: Dataset, facts: NMFacts | None = None) -> list[Decision]:
        """Every rule, in order. Each matching enabled rule fires until one with `stop: true` has fired."""
        ctx = Context(header, facts if facts is not None else derive_facts(header))
        decisions: list[Decision] = []
        stopped_by: str | None = None
        for rule in self.rules:
            result = rule.condition.evaluate(ctx, 0)
            matched = result.outcome is Outcome.PASS
            trace = list(result.lines)
            fires = matched and rule.enabled and stopped_by is None
            if matched and not rule.enabled:
                trace.append("not fired: the rule is disabled (enabled: false)")
            elif matched and stopped_by is not None:
                trace.append(f"not fired: rule {stopped_by} fired before it with stop: true")
            if fires and rule.stop:
                stopped_by = rule.name
            decisions.append(Decision(rule, matched, tuple(trace), fires))
        return decisions

    def matching(self, header: Dataset) -> list[Rule]:
        """The rules that fire for this header, in order."""
        return [d.rule for d in self.evaluate(header) if d.fires]
