"""The compiled forest engine against ``predict_proba``: bit-identical, or not serving.

Property-based over forest shapes (2-10 classes, depth limited and unlimited, missing values
the trees route themselves or a pipeline imputes, categorical one-hot), then the parity gate:
a compiled forest that differs in one bit (tampered here) is not served, and says why.
Forests stay small: the numba kernels compile once per session (and are cached on disk).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from forestream.worker import forest_engine as engine
from forestream.worker.compiled_forest import compile_forest
from forestream.worker.decoding import decode_batch
from forestream.worker.models import reference_rows
from forestream.worker.scoring import score_frame
from tests.worker_support import fit_pipeline, make_frame, schema_for

SHAPES = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)


def _forest(
    classes: int, depth: int | None, trees: int, features: int, missing: float, seed: int
) -> tuple[Any, np.ndarray]:
    """A bare forest on random data, and fresh rows (with NaN where training had them)."""
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(160 + 60, features))
    # labels that depend on the features, so the trees split for real; every class present
    y = (np.floor(np.abs(x[:, 0] * 3 + x[:, -1]) * classes) % classes).astype(int)
    y[:classes] = np.arange(classes)
    x[:, 0] = np.round(x[:, 0], 1)  # ties: thresholds fall between equal-ish values
    if missing:
        x[rng.random(x.shape) < missing] = np.nan
    model = RandomForestClassifier(
        n_estimators=trees, max_depth=depth, random_state=seed, n_jobs=1
    ).fit(x[:160], y[:160].astype(str))
    return model, x[160:]


@SHAPES
@given(
    classes=st.integers(2, 10),
    depth=st.one_of(st.none(), st.integers(1, 6)),
    trees=st.integers(1, 7),
    features=st.integers(1, 6),
    missing=st.sampled_from([0.0, 0.0, 0.15]),
    seed=st.integers(0, 2**16),
)
def test_a_compiled_forest_is_bit_identical_to_predict_proba(
    classes: int, depth: int | None, trees: int, features: int, missing: float, seed: int
) -> None:
    model, rows = _forest(classes, depth, trees, features, missing, seed)
    compiled = compile_forest(model)
    for batch in (rows, rows[:1], rows[:5], np.nan_to_num(rows)):
        expected = model.predict_proba(batch)
        got = compiled.predict_proba(batch)
        assert got.dtype == np.float64 and np.array_equal(got, expected)


@SHAPES
@given(
    trees=st.integers(1, 6),
    depth=st.one_of(st.none(), st.integers(2, 8)),
    seed=st.integers(0, 2**16),
)
def test_a_pipeline_that_imputes_and_one_hot_encodes_is_bit_identical(
    trees: int, depth: int | None, seed: int
) -> None:
    """The trainer's shape: median-imputed numerics, most-frequent-imputed one-hot
    categoricals (missing values and unseen categories in the live rows), then the forest."""
    frame = make_frame(150, seed=seed)
    pipeline = fit_pipeline(frame, trees=trees)
    pipeline.set_params(rf__max_depth=depth).fit(frame.drop(columns="target"), frame["target"])
    live = make_frame(40, seed=seed + 1).drop(columns="target")
    live.loc[live.index[:3], "color"] = "purple"  # a category training never saw
    scorer = engine.CompiledScorer(pipeline)
    assert np.array_equal(scorer(live), pipeline.predict_proba(live))


def _decoded_reference(pipeline: Any, frame: pd.DataFrame) -> pd.DataFrame:
    decoded = decode_batch(reference_rows(schema_for(frame)), schema_for(frame))
    assert decoded.rejects == []
    return decoded.frame


def test_a_prepared_forest_is_served_compiled_and_says_so() -> None:
    frame = make_frame(200, seed=7)
    pipeline = fit_pipeline(frame)
    choice = engine.prepare(pipeline, _decoded_reference(pipeline, frame), label="v1")
    assert choice.engine == engine.COMPILED and choice.reason is None
    live = make_frame(30, seed=8).drop(columns="target")
    scores = score_frame(pipeline, live, [str(c) for c in pipeline.classes_])
    assert scores.engine == engine.COMPILED == engine.engine_of(pipeline)
    assert np.array_equal(scores.probabilities, pipeline.predict_proba(live))
    assert scores.labels.tolist() == pipeline.predict(live).tolist()


def _tampered(forest: Any) -> Any:
    """A compiled forest whose every threshold moved up: it routes some rows wrongly."""
    compiled = compile_forest(forest)
    splits = ~np.isnan(compiled.thresholds)
    compiled.thresholds[splits] += np.float32(0.5)
    return compiled


def test_a_compiled_forest_that_fails_the_gate_is_not_served() -> None:
    frame = make_frame(200, seed=9)
    pipeline = fit_pipeline(frame)
    reference = _decoded_reference(pipeline, frame)
    with capture_logs() as logs:
        choice = engine.prepare(pipeline, reference, label="v2", compile_forest=_tampered)
    assert choice.engine == engine.SKLEARN
    assert choice.reason is not None and "parity gate" in choice.reason
    (line,) = [entry for entry in logs if entry["event"] == "model_engine_fallback"]
    assert line["version"] == "v2" and line["engine"] == "sklearn" and "differ" in line["reason"]
    live = make_frame(30, seed=10).drop(columns="target")
    scores = score_frame(pipeline, live, [str(c) for c in pipeline.classes_])
    assert scores.engine == engine.SKLEARN
    assert np.array_equal(scores.probabilities, pipeline.predict_proba(live))


def test_a_difference_on_the_first_live_batch_falls_back_for_good() -> None:
    """Reference rows passed; the first live batch differs (the nodes tampered meanwhile):
    that batch gets predict_proba's numbers, the version sklearn's path, a log line why."""
    frame = make_frame(200, seed=11)
    pipeline = fit_pipeline(frame)
    classes = [str(c) for c in pipeline.classes_]
    engine.prepare(pipeline, _decoded_reference(pipeline, frame), label="v3")
    engine.check_first_batch(pipeline)
    fn = engine.probability_fn(pipeline, frame)
    assert isinstance(fn, engine.CompiledScorer)
    fn.compiled.leaves[:] = fn.compiled.leaves[:, ::-1].copy()  # every leaf votes the reverse
    live = make_frame(50, seed=12).drop(columns="target")
    with capture_logs() as logs:
        first = score_frame(pipeline, live, classes)
        second = score_frame(pipeline, live, classes)
    expected = pipeline.predict_proba(live)
    for scores in (first, second):
        assert scores.engine == engine.SKLEARN
        assert np.array_equal(scores.probabilities, expected)
    (line,) = [entry for entry in logs if entry["event"] == "model_engine_fallback"]
    assert "first live batch" in line["reason"] and line["version"] == "v3"
    assert engine.engine_of(pipeline) == engine.SKLEARN


def test_a_model_the_compiler_cannot_take_keeps_sklearns_path() -> None:
    from sklearn.ensemble import ExtraTreesClassifier, GradientBoostingClassifier

    frame = make_frame(120, seed=13)
    numeric = frame[["x1", "x3"]]
    for model in (
        ExtraTreesClassifier(n_estimators=4, random_state=0).fit(numeric, frame["target"]),
        GradientBoostingClassifier(n_estimators=3).fit(numeric, frame["target"]),
    ):
        with capture_logs() as logs:
            choice = engine.prepare(model, numeric, label="v4")
        assert choice.engine == engine.SKLEARN
        assert choice.reason is not None and choice.reason.startswith("not compiled")
        assert [e["event"] for e in logs] == ["model_engine_fallback"]
        scores = score_frame(model, numeric, [str(c) for c in model.classes_])
        assert np.array_equal(scores.probabilities, model.predict_proba(numeric))


def test_a_bare_forest_with_missing_values_in_its_input_stays_bit_identical() -> None:
    model, rows = _forest(3, None, 5, 4, 0.2, seed=1)
    frame = pd.DataFrame(rows, columns=[f"f{i}" for i in range(4)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # fitted without feature names
        choice = engine.prepare(model, frame)
        assert choice.engine == engine.COMPILED
        assert np.array_equal(score_frame(model, frame, ["0", "1", "2"]).probabilities,
                              model.predict_proba(frame))  # fmt: skip


def test_reference_rows_follow_the_schema_and_are_the_same_every_time() -> None:
    frame = make_frame(200, seed=14)
    schema = schema_for(frame)
    rows = reference_rows(schema, count=64)
    assert rows == reference_rows(schema, count=64)
    decoded = decode_batch(rows, schema)
    assert decoded.rejects == [] and len(decoded.frame) == 64
    assert decoded.frame["x2"].isna().any()  # x2 was missing in training: so it is here
    assert not decoded.frame["x1"].isna().any()
    assert decoded.unknown_categories > 0


@pytest.mark.parametrize("batch", [0, 1, 3, 4, 5, 257, 600])
def test_every_batch_size_walks_every_row(batch: int) -> None:
    """Rows go in blocks of 256, a small batch several trees at a time (128 walks a group)."""
    model, rows = _forest(4, None, 6, 5, 0.0, seed=2)
    rows = np.resize(rows, (batch, rows.shape[1]))
    got = compile_forest(model).predict_proba(rows)
    assert got.shape == (batch, 4)
    if batch:
        assert np.array_equal(got, model.predict_proba(rows))


def test_a_released_model_is_not_kept_alive_by_its_compiled_engine() -> None:
    """Hot reload must free the old version: the engine registry holds models weakly, and the
    compiled scorer of a bare forest does not hold the forest (its key) strongly."""
    import gc
    import weakref

    model, rows = _forest(3, None, 4, 3, 0.0, seed=3)
    frame = pd.DataFrame(rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert engine.prepare(model, frame).engine == engine.COMPILED
        score_frame(model, frame, ["0", "1", "2"])
    released = weakref.ref(model)
    del model
    gc.collect()
    assert released() is None


def test_the_forest_still_scores_after_the_compilers_pages_are_released() -> None:
    """LLVM's library leaves the resident set once the kernel is loaded; scoring and a later
    compile read its pages back as needed."""
    import numba

    from forestream.worker.process_memory import release_compiler_pages

    model, rows = _forest(3, None, 6, 5, 0.0, seed=3)
    compiled = compile_forest(model)
    assert release_compiler_pages() > 0
    assert np.array_equal(compiled.predict_proba(rows), model.predict_proba(rows))
    assert numba.njit(lambda a: a + 1)(41) == 42


LOAD_PROBE = """
import sys
from forestream.worker import compiled_forest
print(compiled_forest._walk.stats.cache_hits.total(), "numba.np.linalg" in sys.modules)
"""


def test_a_cached_kernel_loads_without_numbas_lowering_registries() -> None:
    """A process finding the kernels in numba's cache loads them without importing numba's
    lowering implementations (~26 MB of the worker's RSS); they still score bit-identically,
    and a later compile in the same process refreshes what it needs."""
    import subprocess
    import sys

    # this process imported the module (compile_forest above): the kernels are in the cache
    done = subprocess.run(
        [sys.executable, "-c", LOAD_PROBE + PARITY_PROBE], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    hits, registries_loaded = done.stdout.split("\n")[0].split()
    assert (hits, registries_loaded) == ("1", "False"), done.stdout
    assert done.stdout.split("\n")[1:3] == ["parity True", "compiled 42"], done.stdout


PARITY_PROBE = """
import numpy as np
from sklearn.ensemble import RandomForestClassifier
rng = np.random.default_rng(0)
x = rng.normal(size=(400, 6)).astype(np.float32)
y = (x[:, 0] + x[:, 1] > 0).astype(int) + (x[:, 2] > 1)
forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(x, y)
rows = rng.normal(size=(300, 6)).astype(np.float32)
got = compiled_forest.compile_forest(forest).predict_proba(rows)
print("parity", np.array_equal(got, forest.predict_proba(rows)))
import numba
print("compiled", numba.njit(lambda a: a + 1)(41))
"""
