"""Routing: declarative rules in rules/*.yaml decide which network runs on an input, with a trace of why.

Sits between assemble (complete inputs) and infer; takes a header Dataset, returns Decisions."""

from scintnode.route.dsl import RuleError
from scintnode.route.engine import Decision, Rule, RuleSet
from scintnode.route.facts import Fact, NMFacts, derive_facts
from scintnode.route.loader import check_rule_set, load_rule_set

__all__ = [
    "Decision",
    "Fact",
    "NMFacts",
    "Rule",
    "RuleError",
    "RuleSet",
    "check_rule_set",
    "derive_facts",
    "load_rule_set",
]
