"""The promotion policy: when a shadow candidate replaces the served version, and when a
promotion is undone. Pure: parsed from one line or a small TOML file, judged on
:class:`~forestream.fleet.counts.FleetCounts`.

One line (``--promote-policy``), clauses joined by ``and``::

    labelled>=2000 and accuracy>=served and agreement>=0.9

- terms: ``labelled`` (labelled shadow records), ``agreement`` (share where candidate and served
  predicted alike), ``accuracy`` and ``macro_f1`` (the candidate's, over those records);
- comparisons ``>=``, ``>``, ``<=``, ``<`` with a number, or for ``accuracy``/``macro_f1`` with
  ``served`` (the served version's value over the same records), optionally ``served+0.01`` /
  ``served-0.01``.

A file (a path ending ``.toml``) adds the rollback guard::

    promote = "labelled>=2000 and accuracy>=served and agreement>=0.9"
    [rollback]
    labels = 500     # judge a new version on its first 500 labels
    margin = 0.02    # roll back if its accuracy is below the previous version's by more
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from forestream.errors import UserError
from forestream.fleet.counts import FleetCounts, ShadowTotals, accuracy_of, labelled_of, macro_f1_of

Term = Literal["labelled", "agreement", "accuracy", "macro_f1"]
Op = Literal[">=", ">", "<=", "<"]
TERMS: tuple[Term, ...] = ("labelled", "agreement", "accuracy", "macro_f1")
RELATIVE: tuple[Term, ...] = ("accuracy", "macro_f1")
"""Terms that may be compared with the served version's value."""

_NUMBER = r"[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?"
_CLAUSE = re.compile(
    rf"\s*(?P<term>[a-z_0-9]+)\s*(?P<op>>=|<=|>|<|==|=)\s*"
    rf"(?:(?P<served>served)\s*(?:(?P<sign>[+-])\s*(?P<offset>{_NUMBER}))?|(?P<number>-?(?:{_NUMBER})))\s*"
)


@dataclass(frozen=True)
class Clause:
    """``term op value``, or ``term op served + offset`` when ``relative``."""

    term: Term
    op: Op
    value: float
    relative: bool = False

    def __str__(self) -> str:
        if not self.relative:
            return f"{self.term}{self.op}{_number(self.value)}"
        offset = "" if not self.value else ("+" if self.value > 0 else "") + _number(self.value)
        return f"{self.term}{self.op}served{offset}"

    def holds(self, evidence: dict[str, Any]) -> bool:
        left = evidence.get(self.term)
        right: float | None = self.value
        if self.relative:
            base = evidence.get(f"served_{self.term}")
            right = None if base is None else base + self.value
        if left is None or right is None:
            return False
        if self.op == ">=":
            return bool(left >= right)
        if self.op == ">":
            return bool(left > right)
        if self.op == "<=":
            return bool(left <= right)
        return bool(left < right)


def _number(value: float) -> str:
    """As written back into a rule: exact (``repr``), without a trailing ``.0``."""
    return str(int(value)) if value.is_integer() else repr(value)


@dataclass(frozen=True)
class Rollback:
    """Judge a new version on its first ``labels`` labels; roll back when its accuracy is
    below the previous version's by more than ``margin``."""

    labels: int
    margin: float


@dataclass(frozen=True)
class Policy:
    rule: str
    clauses: tuple[Clause, ...]
    rollback: Rollback | None = None


def parse_rule(text: str) -> tuple[Clause, ...]:
    """Clauses of a one-line rule, or a UserError naming what is wrong in one line."""
    parts = re.split(r"\s+and\s+", text.strip())
    if not text.strip():
        raise UserError("promotion rule is empty: e.g. 'labelled>=2000 and accuracy>=served'")
    clauses = []
    for part in parts:
        match = _CLAUSE.fullmatch(part)
        if match is None:
            raise UserError(
                f"promotion rule: cannot read {part!r}: expected TERM OP VALUE, e.g. "
                "'labelled>=2000', 'accuracy>=served+0.01' (joined by 'and')"
            )
        term, op = match["term"], match["op"]
        if term not in TERMS:
            raise UserError(
                f"promotion rule: unknown term {term!r} in {part!r} (terms: {', '.join(TERMS)})"
            )
        if op not in (">=", ">", "<=", "<"):
            raise UserError(f"promotion rule: use >=, >, <= or <, not {op!r}, in {part!r}")
        if match["served"]:
            if term not in RELATIVE:
                raise UserError(
                    f"promotion rule: {term} cannot be compared with served in {part!r} "
                    f"(only {', '.join(RELATIVE)})"
                )
            offset = float(match["offset"] or 0.0) * (-1 if match["sign"] == "-" else 1)
            clauses.append(Clause(term, op, offset, relative=True))  # type: ignore[arg-type]
        else:
            clauses.append(Clause(term, op, float(match["number"])))  # type: ignore[arg-type]
    return tuple(clauses)


def load_policy(value: str) -> Policy:
    """A one-line rule, or a TOML file (a path ending ``.toml``) with ``promote`` and an
    optional ``[rollback]`` table."""
    if not value.strip().lower().endswith(".toml"):
        return Policy(rule=value.strip(), clauses=parse_rule(value))
    path = Path(value.strip())
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"promotion policy {path}: cannot read it ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"promotion policy {path}: not TOML ({exc})") from None
    unknown = set(data) - {"promote", "rollback"}
    if unknown:
        raise UserError(
            f"promotion policy {path}: unknown key(s) {', '.join(sorted(unknown))} "
            "(expected promote and [rollback])"
        )
    rule = data.get("promote")
    if not isinstance(rule, str):
        raise UserError(f'promotion policy {path}: promote = "<rule>" is required')
    clauses = parse_rule(rule)
    rollback = None
    if "rollback" in data:
        rollback = _rollback(path, data["rollback"])
    return Policy(rule=rule.strip(), clauses=clauses, rollback=rollback)


def _rollback(path: Path, table: object) -> Rollback:
    if not isinstance(table, dict) or set(table) - {"labels", "margin"}:
        raise UserError(f"promotion policy {path}: [rollback] takes labels and margin only")
    labels, margin = table.get("labels"), table.get("margin", 0.0)
    if not isinstance(labels, int) or isinstance(labels, bool) or labels < 1:
        raise UserError(f"promotion policy {path}: [rollback] labels must be an integer >= 1")
    if not isinstance(margin, int | float) or isinstance(margin, bool) or not 0 <= margin < 1:
        raise UserError(f"promotion policy {path}: [rollback] margin must be a number in [0, 1)")
    return Rollback(labels=labels, margin=float(margin))


# -- judging --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """``act``: promote (or roll back) now. ``settled``: the evidence is final (a rollback
    guard with enough labels); ``evidence``: the numbers, as logged and carried on the event;
    ``failing``: the clauses that do not hold."""

    act: bool
    settled: bool
    evidence: dict[str, float | int | str | None]
    failing: tuple[str, ...] = ()


def shadow_evidence(totals: ShadowTotals | None) -> dict[str, float | int | str | None]:
    """What the rule is judged on: the candidate's numbers and the served version's over the
    same labelled shadow records."""
    totals = totals or ShadowTotals()
    return {
        "labelled": totals.labelled,
        "agreement": totals.agreement,
        "accuracy": accuracy_of(totals.candidate),
        "macro_f1": macro_f1_of(totals.candidate),
        "served_accuracy": accuracy_of(totals.served),
        "served_macro_f1": macro_f1_of(totals.served),
    }


def judge_promotion(policy: Policy, fleet: FleetCounts, candidate: str, served: str) -> Verdict:
    """Does ``policy``'s rule hold for ``candidate`` shadowing ``served``?"""
    evidence: dict[str, float | int | str | None] = {
        "candidate": candidate,
        "served": served,
        **shadow_evidence(fleet.shadow.get((candidate, served))),
    }
    failing = tuple(str(c) for c in policy.clauses if not c.holds(evidence))
    return Verdict(act=not failing, settled=True, evidence=evidence, failing=failing)


def judge_rollback(policy: Policy, fleet: FleetCounts, new: str, previous: str) -> Verdict:
    """Is ``new`` (promoted over ``previous``) worse on its first labels than ``previous`` on
    all of its counts, by more than the margin? Not settled until it has enough labels."""
    guard = policy.rollback
    evidence: dict[str, float | int | str | None] = {"new": new, "previous": previous}
    if guard is None:
        return Verdict(act=False, settled=True, evidence=evidence)
    first = fleet.first(new, guard.labels)
    before = fleet.version(previous)
    evidence.update(
        labelled=labelled_of(first) if first is not None else labelled_of(fleet.version(new)),
        accuracy=accuracy_of(first) if first is not None else None,
        previous_labelled=labelled_of(before),
        previous_accuracy=accuracy_of(before),
        labels=guard.labels,
        margin=guard.margin,
    )
    accuracy, prior = evidence["accuracy"], evidence["previous_accuracy"]
    if first is None:
        return Verdict(act=False, settled=False, evidence=evidence)
    if not isinstance(accuracy, float) or not isinstance(prior, float):
        # the previous version's counts may still be on their way: judged once they are here
        return Verdict(act=False, settled=False, evidence=evidence, failing=("no previous counts",))
    worse = accuracy < prior - guard.margin
    return Verdict(act=worse, settled=True, evidence=evidence)
