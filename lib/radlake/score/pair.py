"""The model pair a scoring run uses: resolved to concrete versions, checked, and as Spark UDF columns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from radlake.models.resolve import ResolvedModel


@dataclass(frozen=True)
class CheckedModel:
    """A model resolved to a concrete version, with the inference params its signature declares."""

    model: ResolvedModel
    params: tuple[str, ...]


def check_models(vertebra_uri: str, schmorl_uri: str) -> tuple[CheckedModel, CheckedModel]:
    """Resolve both URIs to concrete versions and check their pyfunc signatures (before any scan).

    Raises
    ------
    ModelNotFoundError
        If a URI names no model, alias, version or run.
    ModelSignatureError
        If a model's signature is not the detector pyfunc's.
    """
    from radlake.models.pyfunc import check_detector_signature
    from radlake.models.resolve import resolve_model_uri

    models = []
    for uri in (vertebra_uri, schmorl_uri):
        model = resolve_model_uri(uri)
        models.append(CheckedModel(model, check_detector_signature(model.uri)))
    return models[0], models[1]


def thresholded_detections(spark: SparkSession, checked: CheckedModel, threshold: float, batch_size: int):
    """The model's detections at or above ``threshold``, as a Spark column.

    The threshold goes to the model as a pyfunc param where its signature declares one; the
    output is also filtered in Spark, so a detector logged before params existed is held to
    the same threshold (it cannot go below the threshold it was logged with).
    """
    from radlake.models.pyfunc import detections_column

    params = {k: v for k, v in (("score_threshold", threshold), ("batch_size", batch_size)) if k in checked.params}
    found = detections_column(spark, checked.model.uri, params)
    return F.filter(found, lambda d: d["score"] >= F.lit(float(threshold)))
