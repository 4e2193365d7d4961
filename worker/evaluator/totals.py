"""The evaluator's running totals, one dict: the summary log lines and ``/metrics`` read it.

Kept apart from :mod:`.service` so the loop's module stays about the loop; the caller holds
the evaluator's lock.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from forestream.worker.evaluator.service import Evaluator


def totals_of(ev: Evaluator) -> dict[str, Any]:
    """Joined, read, waiting, evicted and rejected counts over every partition held."""
    waiting_p = sum(len(j.predictions) for j in ev.joins.values())
    waiting_l = sum(len(j.labels) for j in ev.joins.values())
    shadows = ev.shadow_joins.values()
    return {
        "evaluator_id": ev.ident,
        "partitions": sorted(ev.joins),
        "labels_read": ev.labels_read,
        "predictions_read": ev.predictions_read,
        "joined": ev.joined + sum(j.joined for j in ev.joins.values()),
        "published_records": ev.published,
        "waiting_predictions": waiting_p,
        "waiting_labels": waiting_l,
        "evicted": dict(
            ev.evicted
            + _sum(j.evicted for j in ev.joins.values())
            + _sum(prefixed(j.evicted) for j in shadows)
        ),
        "rejected": dict(
            ev.rejected
            + _sum(j.rejected for j in ev.joins.values())
            + _sum(prefixed(j.rejected) for j in shadows)
        ),
        "bad_labels": dict(ev.bad_labels),
        "bad_predictions": dict(ev.bad_predictions),
        "shadow_read": ev.shadow_read,
        "shadow_joined": ev.shadow_joined + sum(j.joined for j in shadows),
        "waiting_shadow": sum(len(j.predictions) for j in shadows),
        "bad_shadow": dict(ev.bad_shadow),
    }


def _sum(counters: Any) -> Counter[str]:
    total: Counter[str] = Counter()
    for c in counters:
        total.update(c)
    return total


def prefixed(counter: Counter[str]) -> Counter[str]:
    """A shadow join's reasons, told apart from the predictions join's: ``shadow_<reason>``."""
    return Counter({f"shadow_{reason}": n for reason, n in counter.items()})
