"""Private attributes of kafka-python, scikit-learn and numba that forestream relies on, in one
place.

Each one is a workaround or a measured speed-up (the docstrings where they are used say which);
a release may drop any of them without notice. So: pyproject bounds both libraries below their
next release line, clients check their list when they are built (one line at start, not a
workaround that silently stops working mid-stream), and tests/unit/test_library_internals.py
checks every entry against the installed versions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from forestream.errors import UnsupportedLibrary

_MISSING = object()


@dataclass(frozen=True)
class Internal:
    """One private attribute path (dotted, from an object of ``owner``) and what needs it."""

    library: str
    owner: str
    path: str
    why: str

    def resolve(self, obj: object) -> Any:
        """The attribute at the end of ``path``, or ``_MISSING`` where the chain breaks."""
        for name in self.path.split("."):
            obj = getattr(obj, name, _MISSING)
            if obj is _MISSING:
                return _MISSING
        return obj


KAFKA_CONSUMER: tuple[Internal, ...] = (
    Internal("kafka-python", "KafkaConsumer", "_subscription.assignment",
             "the assignment as the group handed it, without a blocking call"),
    Internal("kafka-python", "KafkaConsumer", "_coordinator.rejoining",
             "the stuck-join workaround (maintain) sees a join the client forgot"),
    Internal("kafka-python", "KafkaConsumer", "_coordinator.need_rejoin",
             "the stuck-join workaround asks for the rejoin that finishes it"),
    Internal("kafka-python", "KafkaConsumer", "_coordinator.request_rejoin",
             "the stuck-join workaround's rejoin request"),
    Internal("kafka-python", "KafkaConsumer", "_coordinator._commit_offsets_sync_async",
             "commit on revocation from the IO loop (commit() would deadlock there)"),
    Internal("kafka-python", "KafkaConsumer", "_client.cluster.config",
             "quicker metadata retries for one-shot registry commands"),
)  # fmt: skip
KAFKA_PRODUCER: tuple[Internal, ...] = (
    Internal("kafka-python", "KafkaProducer", "_metadata.config",
             "quicker metadata retries for one-shot registry commands"),
)  # fmt: skip
KAFKA_TRANSACTIONAL_PRODUCER: tuple[Internal, ...] = (
    *KAFKA_PRODUCER,
    Internal("kafka-python", "KafkaProducer", "_sender.wakeup",
             "exactly-once: wake the sender for a transaction step, no 100 ms wait"),
    Internal("kafka-python", "KafkaProducer", "_transaction_manager.send_offsets_to_transaction",
             "exactly-once: offsets in the transaction with a deadline"),
    Internal("kafka-python", "KafkaProducer", "_transaction_manager.begin_commit",
             "exactly-once: commit with a deadline"),
    Internal("kafka-python", "KafkaProducer", "_transaction_manager.begin_abort",
             "exactly-once: abort with a deadline"),
)  # fmt: skip
SKLEARN_FOREST: tuple[Internal, ...] = (
    Internal("scikit-learn", "RandomForestClassifier", "_validate_X_predict",
             "the tree-by-tree scorer validates input as predict_proba does"),
    Internal("scikit-learn", "RandomForestClassifier", "estimators_",
             "the tree-by-tree scorer walks the fitted trees"),
)  # fmt: skip
SKLEARN_TREE: tuple[Internal, ...] = (
    Internal("scikit-learn", "DecisionTreeClassifier", "tree_.predict",
             "the tree-by-tree scorer calls the Cython tree directly (no joblib dispatch)"),
)  # fmt: skip
NUMBA_CACHE: tuple[Internal, ...] = (
    Internal("numba", "Cache", "_load_overload",
             "the forest kernel loads from numba's cache without every lowering registry"),
    Internal("numba", "Cache", "_guard_against_spurious_io_errors",
             "the same load, with numba's own guard around the cache file"),
    Internal("numba", "Cache", "load_overload",
             "the method the kernel's load stands in for, while the kernel loads"),
)  # fmt: skip
SKLEARN_PRIVATE_MODULES = ("sklearn.ensemble._forest.ForestClassifier",)
"""Imported by ``forestream.worker.scoring`` to recognise a plain forest."""


def missing(obj: object, internals: Iterable[Internal]) -> list[Internal]:
    """The entries ``obj`` does not have (empty: everything relied on is there)."""
    return [internal for internal in internals if internal.resolve(obj) is _MISSING]


def require(obj: object, internals: Iterable[Internal]) -> None:
    """Refuse, in one line, a library version that lacks what forestream relies on."""
    gone = missing(obj, internals)
    if gone:
        first = gone[0]
        raise UnsupportedLibrary(
            f"{first.library} {installed(first.library)} has no {first.owner}.{first.path} "
            f"(needed: {first.why}); install a version within forestream's pyproject bounds"
        )


def installed(library: str) -> str:
    try:
        return version(library)
    except PackageNotFoundError:
        return "(not installed)"
