"""The rule-file language: pydantic models of what ops staff write in rules/*.yaml, and its errors.

Route stage, first step: YAML text becomes these checked models; engine.py compiles them to predicates."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    field_validator,
    model_validator,
)

Loc = tuple[str | int, ...]


class RuleError(ValueError):
    """A rule file cannot be used. The message names the file, the rule and the field (and line if known)."""

    def __init__(self, file: str, rule: str | None, field: str | None, problem: str, line: int | None = None) -> None:
        self.file = file
        self.rule = rule
        self.field = field
        self.problem = problem
        self.line = line
        where = f"{file}:{line}" if line is not None else file
        super().__init__(
            f"{where}: rule {rule if rule is not None else '(none)'}, "
            f"field {field if field is not None else '(none)'}: {problem}"
        )


class SchemaProblem(NamedTuple):
    """One problem at a location inside a rule file, e.g. ("rules", 0, "when", "all", 2, "attribute")."""

    loc: Loc
    message: str


class SchemaError(ValueError):
    def __init__(self, problems: list[SchemaProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{format_loc(p.loc)}: {p.message}" for p in problems))


def format_loc(loc: Loc) -> str:
    """("when", "all", 2, "attribute") -> "when.all[2].attribute" (list positions count from 0)."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _scalar(value: object) -> str | int | float:
    if isinstance(value, bool):
        raise ValueError(
            "YAML read this value as a boolean (true/false, yes/no, on/off); put it in quotes to mean text"
        )
    if isinstance(value, (str, int, float)):
        return value
    raise ValueError(f"expected text or a number, got {type(value).__name__}")


def _number(value: object) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {value!r}")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {value!r}; put it in quotes")
    return value


def _true(value: object) -> Literal[True]:
    if value is not True:
        raise ValueError("write `true`; to test the opposite use the other operator (present/absent)")
    return True


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(value: object) -> float:
    """A duration as ops write it: "90s", "45m", "2h", "14d" (or a number of seconds)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    text = str(value).strip().lower()
    unit = _DURATION_UNITS.get(text[-1:]) if text else None
    try:
        amount = float(text[:-1]) if unit else float("nan")
    except ValueError:
        amount = float("nan")
    if unit is None or not amount > 0:
        raise ValueError(f"expected a duration like 90s, 45m, 2h or 14d, got {value!r}")
    return amount * unit


Scalar = Annotated[str | int | float, PlainValidator(_scalar)]
Number = Annotated[int | float, PlainValidator(_number)]
Text = Annotated[str, PlainValidator(_text)]
TrueFlag = Annotated[Literal[True], PlainValidator(_true)]
Duration = Annotated[float, PlainValidator(_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class CodeOperand(_Strict):
    value: Text
    scheme: Text


OPERATORS: tuple[str, ...] = (
    "equals",
    "in",
    "matches",
    "contains",
    "present",
    "absent",
    "gt",
    "ge",
    "lt",
    "le",
    "between",
    "code",
)
TEXT_OPERATORS = frozenset({"equals", "in", "matches", "contains"})
NUMERIC_OPERATORS = frozenset({"gt", "ge", "lt", "le", "between"})


class Predicate(_Strict):
    """One comparison: a subject (`attribute` path or `fact` name) and exactly one operator."""

    attribute: Text | None = None
    fact: Text | None = None
    equals: Scalar | None = None
    in_: tuple[Scalar, ...] | None = Field(None, alias="in")
    matches: Text | None = None
    contains: Text | None = None
    present: TrueFlag | None = None
    absent: TrueFlag | None = None
    gt: Number | None = None
    ge: Number | None = None
    lt: Number | None = None
    le: Number | None = None
    between: tuple[Number, Number] | None = None
    code: CodeOperand | None = None
    case: Literal["sensitive", "insensitive"] | None = None

    @model_validator(mode="after")
    def _one_subject_one_operator(self) -> Predicate:
        if (self.attribute is None) == (self.fact is None):
            raise ValueError("give exactly one of `attribute` or `fact`")
        ops = self.operators()
        if len(ops) != 1:
            names = ", ".join(ops) if ops else "none"
            raise ValueError(f"give exactly one operator ({', '.join(OPERATORS)}); found {names}")
        if self.in_ is not None and not self.in_:
            raise ValueError("`in` needs at least one value")
        if self.between is not None and self.between[0] > self.between[1]:
            raise ValueError(f"`between` needs [low, high] with low <= high, got {list(self.between)}")
        if self.case is not None and ops[0] not in TEXT_OPERATORS:
            raise ValueError(f"`case` applies to {', '.join(sorted(TEXT_OPERATORS))}, not to `{ops[0]}`")
        return self

    def operators(self) -> list[str]:
        return [op for op in OPERATORS if getattr(self, "in_" if op == "in" else op) is not None]

    @property
    def operator(self) -> str:
        return self.operators()[0]

    def operand(self) -> Any:
        return getattr(self, "in_" if self.operator == "in" else self.operator)


class AllOf(_Strict):
    all: tuple[Condition, ...]


class AnyOf(_Strict):
    any: tuple[Condition, ...]


class NotOf(_Strict):
    not_: Condition = Field(alias="not")


Condition = AllOf | AnyOf | NotOf | Predicate

OUTPUTS = ("sr", "sc", "seg")
SlotName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]


class SlotSpec(_Strict):
    """One input an episode waits for: its own selector, whether the network needs it, how many instances."""

    name: SlotName
    when: Condition
    required: bool = True
    count: Annotated[int, Field(ge=1, le=10_000)] = 1


class ValueSpec(_Strict):
    """The value a constraint compares: a derived fact or a top-level DICOM attribute (by keyword)."""

    fact: Text | None = None
    attribute: Text | None = None

    @model_validator(mode="after")
    def _one_subject(self) -> ValueSpec:
        if (self.attribute is None) == (self.fact is None):
            raise ValueError("give exactly one of `attribute` or `fact`")
        return self


class DifferenceSpec(ValueSpec):
    """value(to) - value(from) must lie within [at_least, at_most]: e.g. late minus early >= 60 minutes."""

    from_: SlotName = Field(alias="from")
    to: SlotName
    at_least: Number | None = None
    at_most: Number | None = None

    @model_validator(mode="after")
    def _bounded(self) -> DifferenceSpec:
        if self.at_least is None and self.at_most is None:
            raise ValueError("`difference` needs `at_least`, `at_most` or both")
        return self


class SameSpec(ValueSpec):
    """Every instance of the named slots has the same value: e.g. one radiopharmaceutical, one frame of reference."""

    slots: tuple[SlotName, ...]

    @field_validator("slots")
    @classmethod
    def _two(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("`same` needs at least one slot")
        return value


class ConstraintSpec(_Strict):
    difference: DifferenceSpec | None = None
    same: SameSpec | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> ConstraintSpec:
        if (self.difference is None) == (self.same is None):
            raise ValueError("a constraint is exactly one of `difference` or `same`")
        return self


class EpisodeSpec(_Strict):
    """Gather a network's inputs across series, studies and days before it runs (see rules/README.md)."""

    join: Literal["patient"] = "patient"
    window: Duration
    deadline: Duration
    on_deadline: Literal["keep-waiting", "run-partial", "give-up"] = "give-up"
    late_data: Literal["ignore", "supersede"] = "ignore"
    slots: tuple[SlotSpec, ...]
    constraints: tuple[ConstraintSpec, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> EpisodeSpec:
        names = [slot.name for slot in self.slots]
        if not names:
            raise ValueError("an episode needs at least one slot")
        if len(set(names)) != len(names):
            raise ValueError(f"slot names must be unique, got {names}")
        for index, constraint in enumerate(self.constraints):
            used = (
                (constraint.difference.from_, constraint.difference.to)
                if constraint.difference is not None
                else constraint.same.slots
                if constraint.same is not None
                else ()
            )
            unknown = [name for name in used if name not in names]
            if unknown:
                raise ValueError(f"constraints[{index}] names unknown slot(s) {unknown}; slots are {names}")
        return self


class RuleSpec(_Strict):
    """One rule as written: when it matches, which network runs, what it writes, where results go."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    description: Text = ""
    enabled: bool = True
    stop: bool = False
    network: Text
    outputs: tuple[Literal["sr", "sc", "seg"], ...]
    destinations: tuple[Text, ...]
    when: Condition
    episode: EpisodeSpec | None = None

    @field_validator("outputs")
    @classmethod
    def _outputs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError(f"`outputs` needs at least one of {', '.join(OUTPUTS)}")
        if len(set(value)) != len(value):
            raise ValueError("`outputs` lists a value twice")
        return value

    @field_validator("destinations")
    @classmethod
    def _destinations(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("`destinations` needs at least one destination name")
        if len({v.strip() for v in value}) != len(value):
            raise ValueError("`destinations` lists a name twice")
        return value


class RuleFileSpec(_Strict):
    rules: tuple[RuleSpec, ...]


AllOf.model_rebuild()
AnyOf.model_rebuild()
NotOf.model_rebuild()
SlotSpec.model_rebuild()
EpisodeSpec.model_rebuild()
RuleSpec.model_rebuild()

_PLACEHOLDER = Predicate(attribute="Modality", present=True)
_COMBINATORS = ("all", "any", "not")
_PREDICATE_KEYS = ("attribute", "fact", *OPERATORS, "case")
_RULE_KEYS = tuple(RuleSpec.model_fields)


def parse_rule_file(raw: object) -> RuleFileSpec:
    """Check a YAML document against the rule language; raises SchemaError listing every problem."""
    specs, problems = parse_rules(raw)
    if problems:
        raise SchemaError(problems)
    return RuleFileSpec(rules=tuple(spec for _, spec in specs))


def parse_rules(raw: object) -> tuple[list[tuple[int, RuleSpec]], list[SchemaProblem]]:
    """The rules of a YAML document that are well formed (with their positions), and every problem."""
    if not isinstance(raw, Mapping):
        what = "empty" if raw is None else f"a {type(raw).__name__}"
        return [], [SchemaProblem((), f"the file is {what}; it must be a mapping with a `rules:` list")]
    problems = [SchemaProblem((str(key),), _unknown_key(key, ("rules",))) for key in raw if key != "rules"]
    rules_raw = raw.get("rules")
    if not isinstance(rules_raw, list):
        problems.append(SchemaProblem(("rules",), "`rules:` must be a list of rules"))
        return [], problems
    specs: list[tuple[int, RuleSpec]] = []
    for index, rule_raw in enumerate(rules_raw):
        try:
            specs.append((index, _parse_rule(rule_raw, ("rules", index))))
        except SchemaError as exc:
            problems.extend(exc.problems)
    return specs, problems


def _parse_rule(raw: object, loc: Loc) -> RuleSpec:
    if not isinstance(raw, Mapping):
        raise SchemaError([SchemaProblem(loc, "each rule must be a mapping (name, network, ..., when)")])
    problems: list[SchemaProblem] = []
    fields = dict(raw)
    if "when" in fields:
        try:
            fields["when"] = parse_condition(fields["when"], (*loc, "when"))
        except SchemaError as exc:
            problems.extend(exc.problems)
            fields["when"] = _PLACEHOLDER  # reported already; lets the rest of the rule be checked
    episode = fields.get("episode")
    if isinstance(episode, Mapping) and isinstance(episode.get("slots"), list):
        episode = dict(episode)
        slots: list[object] = []
        for index, slot in enumerate(episode["slots"]):
            if isinstance(slot, Mapping) and "when" in slot:
                slot = dict(slot)
                try:
                    slot["when"] = parse_condition(slot["when"], (*loc, "episode", "slots", index, "when"))
                except SchemaError as exc:
                    problems.extend(exc.problems)
                    slot["when"] = _PLACEHOLDER
            slots.append(slot)
        episode["slots"] = slots
        fields["episode"] = episode
    try:
        spec = RuleSpec.model_validate(fields)
    except ValidationError as exc:
        problems.extend(_problems(exc, loc, _RULE_KEYS))
    if problems:
        raise SchemaError(problems)
    return spec


def parse_condition(raw: object, loc: Loc) -> Condition:
    """A `when:` tree: `all`/`any` (lists), `not` (one condition) or a predicate mapping."""
    if not isinstance(raw, Mapping):
        raise SchemaError(
            [SchemaProblem(loc, "a condition must be a mapping: all, any, not, or attribute/fact + operator")]
        )
    combinators = [key for key in _COMBINATORS if key in raw]
    if combinators:
        if len(raw) != 1:
            others = ", ".join(str(k) for k in raw if k != combinators[0])
            raise SchemaError(
                [SchemaProblem(loc, f"`{combinators[0]}` must stand alone in its mapping; also found: {others}")]
            )
        key = combinators[0]
        body = raw[key]
        if key == "not":
            return NotOf.model_validate({"not": parse_condition(body, (*loc, "not"))})
        if not isinstance(body, list) or not body:
            raise SchemaError([SchemaProblem((*loc, key), f"`{key}` needs a non-empty list of conditions")])
        children: list[Condition] = []
        problems: list[SchemaProblem] = []
        for index, child in enumerate(body):
            try:
                children.append(parse_condition(child, (*loc, key, index)))
            except SchemaError as exc:
                problems.extend(exc.problems)
        if problems:
            raise SchemaError(problems)
        model = AllOf if key == "all" else AnyOf
        return model.model_validate({key: tuple(children)})
    try:
        return Predicate.model_validate(raw)
    except ValidationError as exc:
        raise SchemaError(_problems(exc, loc, _PREDICATE_KEYS + _COMBINATORS)) from None


def _unknown_key(key: object, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f" (did you mean `{close[0]}`?)" if close else ""
    return f"unknown key `{key}`{hint}; allowed here: {', '.join(known)}"


def _problems(exc: ValidationError, loc: Loc, known: tuple[str, ...]) -> list[SchemaProblem]:
    """Pydantic's errors in words for ops staff, located inside the file."""
    problems: list[SchemaProblem] = []
    for error in exc.errors():
        where = tuple(error["loc"])
        if error["type"] == "extra_forbidden":
            message = _unknown_key(where[-1], known)
        elif error["type"] == "missing":
            message = f"required key `{where[-1]}` is missing"
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
            if "input" in error and error["type"] not in ("value_error", "assertion_error"):
                message += f" (found {error['input']!r})"
        problems.append(SchemaProblem((*loc, *where), message))
    return problems
