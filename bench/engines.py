"""The forest's cost per record, engine by engine, on the benchmark model, one core.

``python -m bench.engines [--trees 100] [--features 30] [--train-rows 10000] [--all]``

Times ``predict_proba`` of each engine on batches of 1, 100 and 1,000 rows (float32 input,
what every engine reads) and checks it against sklearn's ``predict_proba`` on the same rows:
labels equal, probabilities bit-identical or the largest difference. Without ``--all`` it
times what the worker can serve: sklearn's public call, the worker's tree-by-tree sklearn path
and the compiled forest (:mod:`forestream.worker.compiled_forest`). ``--all`` adds the engines
tried and not chosen when they are installed (not dependencies of forestream): treelite 4's
GTIL and ONNX Runtime through skl2onnx. ``make bench`` prints the default rows beside its
end-to-end ones (:func:`engine_rows`).

Threads are pinned to one (``OMP_NUM_THREADS`` and each engine's own setting) so that a
figure is one core's, whatever the machine has, and time is the calling thread's CPU time, so a
busy neighbour on a shared machine slows the figures (shared caches, a sibling hyperthread)
without adding its own run time to them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

BATCHES = (1, 100, 1000)
Predict = Callable[[np.ndarray], np.ndarray]


def benchmark_model(
    trees: int = 100, features: int = 30, train_rows: int = 10_000, rows: int = 5000
) -> tuple[Any, np.ndarray]:
    """The forest of ``bench.workload`` (same data recipe and seed) and rows to score."""
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    x, y = make_classification(
        n_samples=train_rows + rows,
        n_features=features,
        n_informative=min(10, features),
        n_redundant=min(5, max(features - 10, 0)),
        random_state=0,
    )
    x = np.round(x, 6)
    model = RandomForestClassifier(n_estimators=trees, n_jobs=1, random_state=0)
    model.fit(x[:train_rows], y[:train_rows].astype(str))
    return model, np.ascontiguousarray(x[train_rows:], dtype=np.float32)


def _sklearn_tree_by_tree(model: Any) -> Predict:
    trees = [tree.tree_ for tree in model.estimators_]
    n_classes = int(model.n_classes_)

    def predict(x: np.ndarray) -> np.ndarray:
        total = np.zeros((x.shape[0], n_classes), dtype=np.float64)
        for tree in trees:
            total += tree.predict(x)[:, :n_classes]
        total /= len(trees)
        return total

    return predict


def _compiled(model: Any) -> Predict:
    from forestream.worker.compiled_forest import compile_forest

    return compile_forest(model).predict_proba


def _treelite(model: Any) -> Predict:
    import treelite

    tl_model = treelite.sklearn.import_model(model)

    def predict(x: np.ndarray) -> np.ndarray:
        out = treelite.gtil.predict(tl_model, x, nthread=1)
        return np.asarray(out).reshape(x.shape[0], -1)

    return predict


def _onnx(model: Any) -> Predict:
    import onnxruntime as ort
    from skl2onnx import to_onnx

    onx = to_onnx(model, np.zeros((1, model.n_features_in_), dtype=np.float32),
                  options={"zipmap": False})  # fmt: skip
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(onx.SerializeToString(), options)
    name = session.get_inputs()[0].name
    output = [o.name for o in session.get_outputs()][1]  # (label, probabilities)

    def predict(x: np.ndarray) -> np.ndarray:
        return np.asarray(session.run([output], {name: x})[0], dtype=np.float64)

    return predict


ENGINES: dict[str, Callable[[Any], Predict]] = {
    "sklearn predict_proba": lambda m: m.predict_proba,
    "sklearn tree by tree (worker's path)": _sklearn_tree_by_tree,
    "compiled forest (numba, forestream)": _compiled,
}
OPTIONAL: dict[str, Callable[[Any], Predict]] = {
    "treelite 4 GTIL": _treelite,
    "ONNX Runtime (skl2onnx)": _onnx,
}


def _per_record_us(predict: Predict, rows: np.ndarray, batch: int, budget_s: float) -> float:
    """Median over timing rounds of the cost per record, in microseconds of this thread's CPU
    time (``time.thread_time``: on a shared machine, wall time would count other processes)."""
    if len(rows) < batch:  # a small sample: repeat it up to one batch
        rows = np.resize(rows, (batch, rows.shape[1]))
    batches = [rows[i : i + batch] for i in range(0, len(rows) - batch + 1, batch)]
    predict(batches[0])  # warm
    rounds: list[float] = []
    deadline = time.perf_counter() + budget_s
    while time.perf_counter() < deadline or len(rounds) < 3:
        done = 0
        started = time.thread_time()
        for chunk in batches[: max(1, 2000 // batch)]:
            predict(chunk)
            done += len(chunk)
        rounds.append((time.thread_time() - started) / done * 1e6)
    return statistics.median(rounds)


def engine_rows(
    model: Any, rows: np.ndarray, *, include_optional: bool = False, budget_s: float = 1.5
) -> list[dict[str, Any]]:
    """One row per engine: µs per record at each batch size, and its parity with sklearn."""
    warnings.filterwarnings("ignore", message="X does not have valid feature names")
    expected = model.predict_proba(rows)
    classes = np.asarray(model.classes_)
    engines = dict(ENGINES, **(OPTIONAL if include_optional else {}))
    results: list[dict[str, Any]] = []
    for name, build in engines.items():
        try:
            started = time.perf_counter()
            predict = build(model)
            built_s = time.perf_counter() - started
            got = predict(rows)
        except Exception as exc:  # an engine not installed, or that refuses the model
            results.append({"engine": name, "error": f"{type(exc).__name__}: {exc}"[:160]})
            continue
        same_labels = bool(
            np.array_equal(classes[got.argmax(axis=1)], classes[expected.argmax(axis=1)])
        )
        results.append(
            {
                "engine": name,
                "build_s": round(built_s, 3),
                "us_per_record": {
                    str(b): round(_per_record_us(predict, rows, b, budget_s), 2) for b in BATCHES
                },
                "bit_identical": bool(np.array_equal(got, expected)),
                "max_abs_diff": float(np.max(np.abs(got - expected))),
                "labels_equal": same_labels,
            }
        )
    return results


def render(results: list[dict[str, Any]]) -> str:
    head = "| engine | " + " | ".join(f"µs/record @ {b}" for b in BATCHES)
    lines = [
        head + " | parity with predict_proba |",
        "|---|" + "---:|" * len(BATCHES) + "---|",
    ]
    for row in results:
        if "error" in row:
            lines.append(f"| {row['engine']} | " + " | ".join("—" for _ in BATCHES)
                         + f" | not run: {row['error']} |")  # fmt: skip
            continue
        if row["bit_identical"]:
            parity = "bit-identical"
        else:
            labels = "labels equal" if row["labels_equal"] else "LABELS DIFFER"
            parity = f"max abs diff {row['max_abs_diff']:.2g}, {labels}"
        figures = " | ".join(f"{row['us_per_record'][str(b)]:.2f}" for b in BATCHES)
        lines.append(f"| {row['engine']} | {figures} | {parity} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.engines", description=__doc__)
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument("--features", type=int, default=30)
    parser.add_argument("--train-rows", type=int, default=10_000)
    parser.add_argument("--budget", type=float, default=1.5, help="seconds per figure [1.5]")
    parser.add_argument("--all", action="store_true", help="also treelite and ONNX Runtime")
    args = parser.parse_args(argv)
    model, rows = benchmark_model(args.trees, args.features, args.train_rows)
    nodes = sum(int(t.tree_.node_count) for t in model.estimators_)
    depth = max(int(t.tree_.max_depth) for t in model.estimators_)
    print(f"RandomForest {args.trees} trees, {args.features} features, {nodes} nodes, "
          f"max depth {depth}; one core")  # fmt: skip
    print(render(engine_rows(model, rows, include_optional=args.all, budget_s=args.budget)))


if __name__ == "__main__":
    main()
