"""The fleet view ``forestream monitor`` draws under its per-worker table: per model version,
served or shadow, the evaluators' accuracy, macro F1, labelled count and agreement, the fleet's
drift flags per feature and of the predictions, and the newest decisions a rule made.

Pure over what it is fed (monitoring-topic values, models-topic records), so it is tested
without a broker and any reader can keep one: counts are summed
(:class:`forestream.fleet.counts.FleetCounts`), workers' window counts merged
(:class:`forestream.fleet.drift.FleetDrift`), the served version and the candidate followed as
the evaluator's decider follows them (:class:`forestream.fleet.decide.ServingState`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import ValidationError

from forestream.fleet.counts import FleetCounts, accuracy_of, labelled_of, macro_f1_of
from forestream.fleet.decide import ServingState
from forestream.fleet.drift import FleetDrift
from forestream.wire.messages import ModelEvent

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.table import Table

    from forestream.registry.metadata import ModelMetadata

Role = Literal["served", "shadow", "earlier"]
KEEP_DECISIONS = 3


@dataclass(frozen=True)
class VersionRow:
    """One version's line of the fleet view; None where there is nothing to say yet."""

    version: str
    role: Role
    labelled: int
    accuracy: float | None
    macro_f1: float | None
    agreement: float | None
    """Shadow rows: share of labelled shadow records where it predicted as the served did."""
    served_accuracy: float | None
    """Shadow rows: the served version's accuracy on the same labelled records."""
    drifting: tuple[str, ...]
    prediction_psi: float | None
    prediction_drifting: bool


class FleetBoard:
    """Everything the fleet view shows, fed record by record."""

    def __init__(
        self,
        name: str,
        metadata_for: Callable[[str], ModelMetadata | None],
        *,
        threshold: float = 0.2,
        min_records: int = 1_000,
    ) -> None:
        self.counts = FleetCounts()
        self.drift = FleetDrift(metadata_for, threshold=threshold, min_records=min_records)
        self.state = ServingState(name)
        self.decisions: list[ModelEvent] = []

    def add_monitoring(self, value: bytes | None) -> None:
        """A monitoring-topic value of any kind: counts are summed, reports' windows merged."""
        if value and self.counts.feed(value) is None:
            self.drift.add_value(value)

    def add_models(self, key: bytes | None, value: bytes | None) -> None:
        """A models-topic record: the serving state, and the decision a rule made, if any."""
        self.state.feed(key, value)
        if key is None or not value or key.decode("utf-8", "replace") != self.state.name:
            return
        try:
            event = ModelEvent.model_validate_json(value)
        except ValidationError:
            return
        if event.decision is not None:
            self.decisions = [*self.decisions, event][-KEEP_DECISIONS:]

    def rows(self) -> list[VersionRow]:
        """Served first, then the shadow candidate, then earlier versions, newest first."""
        served, candidate = self.state.served, self.state.candidate
        versions = set(self.counts.windows) | set(self.drift.versions())
        versions |= {v for v in (served, candidate) if v is not None}
        rows = [self._row(v, served, candidate) for v in versions]
        order = {"served": 0, "shadow": 1, "earlier": 2}
        return sorted(rows, key=lambda r: (order[r.role], -_number(r.version), r.version))

    def _row(self, version: str, served: str | None, candidate: str | None) -> VersionRow:
        role: Role = "served" if version == served else "earlier"
        agreement = served_accuracy = None
        matrix = self.counts.version(version)
        labelled = labelled_of(matrix)
        if version == candidate and version != served and served is not None:
            role = "shadow"
            totals = self.counts.shadow.get((version, served))
            matrix = totals.candidate if totals is not None else {}
            labelled = totals.labelled if totals is not None else 0
            agreement = totals.agreement if totals is not None else None
            served_accuracy = accuracy_of(totals.served) if totals is not None else None
        drift = self.drift.drift(version) if version in self.drift.versions() else None
        prediction = drift.prediction if drift is not None else None
        return VersionRow(
            version=version,
            role=role,
            labelled=labelled,
            accuracy=accuracy_of(matrix),
            macro_f1=macro_f1_of(matrix),
            agreement=agreement,
            served_accuracy=served_accuracy,
            drifting=tuple(drift.drifting_features) if drift is not None else (),
            prediction_psi=prediction.psi if prediction is not None else None,
            prediction_drifting=prediction.drifting if prediction is not None else False,
        )


def _number(version: str) -> int:
    digits = version.lstrip("v")
    return int(digits) if digits.isdigit() else -1


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def decision_line(event: ModelEvent) -> str:
    """``v2 promoted by rule (by …): labelled 2,013, accuracy 0.951, …``."""
    decision = event.decision
    if decision is None:
        return ""
    what = "promoted" if event.kind == "promoted" else "rolled back to"
    numbers = ", ".join(
        f"{name} {value:.3f}" if isinstance(value, float) else f"{name} {value}"
        for name, value in decision.evidence.items()
    )
    return f"{event.version} {what} by rule `{decision.rule}` ({decision.by}): {numbers}"


def render_fleet(board: FleetBoard, name: str) -> Table:
    """The fleet table: a row per version, then the newest decisions as its caption."""
    from rich.table import Table

    table = Table(title=f"fleet — model {name}", title_justify="left", expand=False)
    for header, justify in (
        ("version", "left"),
        ("role", "left"),
        ("labelled", "right"),
        ("accuracy", "right"),
        ("macro F1", "right"),
        ("agreement", "right"),
        ("drifting features", "left"),
        ("prediction PSI", "right"),
    ):
        table.add_column(header, justify=justify)  # type: ignore[arg-type]
    for row in board.rows():
        accuracy = _ratio(row.accuracy)
        if row.served_accuracy is not None:
            accuracy += f" (served {row.served_accuracy:.3f})"
        table.add_row(
            row.version,
            row.role,
            f"{row.labelled:,}",
            accuracy,
            _ratio(row.macro_f1),
            _ratio(row.agreement),
            ", ".join(row.drifting) or "-",
            "-"
            if row.prediction_psi is None
            else f"{row.prediction_psi:.3f}" + (" !" if row.prediction_drifting else ""),
        )
    lines = [decision_line(e) for e in board.decisions]
    table.caption = "\n".join(lines) if lines else "no decision by rule on the models topic"
    return table
