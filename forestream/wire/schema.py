"""The feature schema a model was trained on, and its reference statistics for drift.

The trainer derives both from the training frame; workers validate every input record against
the schema and compare live inputs with the reference statistics.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NumericFeature(_Frozen):
    """A numeric column: any JSON number the model can compute with is accepted (finite and
    within float32's range; min/max are informational)."""

    name: str
    kind: Literal["numeric"] = "numeric"
    min: float | None = None
    max: float | None = None
    missing_seen: bool = False


class CategoricalFeature(_Frozen):
    """A categorical column: JSON strings; values outside ``categories`` are allowed but counted."""

    name: str
    kind: Literal["categorical"] = "categorical"
    categories: list[str] = Field(default_factory=list)
    missing_seen: bool = False


Feature = Annotated[NumericFeature | CategoricalFeature, Field(discriminator="kind")]


class FeatureSchema(_Frozen):
    """Ordered input contract of one model version."""

    features: list[Feature]

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def feature(self, name: str) -> NumericFeature | CategoricalFeature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)


class NumericReference(_Frozen):
    """Training distribution of a numeric feature: quantile bin edges and the share per bin.

    ``edges`` are the inner cut points (len = bins - 1); bin i holds values in
    (edges[i-1], edges[i]]; ``shares`` has one entry per bin and sums to 1.
    ``missing_share`` is the share of missing values in training.
    """

    kind: Literal["numeric"] = "numeric"
    edges: list[float]
    shares: list[float]
    mean: float | None = None
    std: float | None = None
    missing_share: float = 0.0


class CategoricalReference(_Frozen):
    """Training distribution of a categorical feature: share per category (sums to 1)."""

    kind: Literal["categorical"] = "categorical"
    shares: dict[str, float]
    missing_share: float = 0.0


Reference = Annotated[NumericReference | CategoricalReference, Field(discriminator="kind")]


class ReferenceStats(_Frozen):
    """Per-feature training distributions, keyed by feature name."""

    features: dict[str, Reference]


def serving_incompatibilities(current: FeatureSchema, new: FeatureSchema) -> list[str]:
    """Why records valid under ``current`` could not be scored by a model trained on ``new``.

    Empty means the new model can take over a running stream without a producer change.
    Workers validate every record against the serving model's schema, so a swap must not
    narrow what producers may send today. Rules:

    - A feature ``new`` needs that ``current`` does not carry is incompatible, unless the new
      model saw it missing in training (``missing_seen``: its imputer fills the absence).
    - A feature ``current`` lets producers omit (``missing_seen``) but ``new`` requires is
      incompatible: records scored today would be dead-lettered as ``missing_feature``.
    - A feature whose kind changes (numeric <-> categorical) is incompatible: today's values
      would be dead-lettered as ``wrong_type``.
    - Compatible: features ``new`` drops (extra keys are ignored), added or removed
      categories (unseen ones are one-hot ignored, and counted), changed min/max
      (informational only), a different feature order (columns are matched by name).
    """
    problems: list[str] = []
    carried = {f.name: f for f in current.features}
    for feature in new.features:
        old = carried.get(feature.name)
        if old is None:
            if not feature.missing_seen:
                problems.append(
                    f"feature {feature.name!r} is required by the new model but not part of "
                    "the current input contract"
                )
        elif old.kind != feature.kind:
            problems.append(
                f"feature {feature.name!r} changes type from {old.kind} to {feature.kind}"
            )
        elif old.missing_seen and not feature.missing_seen:
            problems.append(
                f"feature {feature.name!r} may be missing under the current contract but is "
                "required by the new model"
            )
    return problems
