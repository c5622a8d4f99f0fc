"""The detector as an MLflow pyfunc: preprocessing, the network and post-processing in one model.

Input: frames — ``pixels`` (bytes of the frame's values, as
:func:`radlake.dicom.pixels.encode_pixels` stores them), ``dtype``, ``height``, ``width`` and
``pixel_spacing`` (row, column mm; a detector with ``input_spacing_mm`` resamples the
frame to that pixel size with it). ``images`` rows hold their frames as stored, with a
rescale and an inversion: pass them through :mod:`radlake.models.model_input` first. Output: per row, an array of detections
``{label, level, score, x0, y0, x1, y1, level_status, level_probability, level_scores}``
with the box ``xyxy`` in pixels of the source frame (x = column, y = row, origin at its
top-left corner). For a vertebra detector ``level`` is the level decoded over the bodies
of this frame (:mod:`radlake.models.levels`), ``None`` unless ``level_status`` is
``identified`` (``uncertain``: no anchor settles the count; ``outside``: not one of the
labelled vertebrae), ``level_probability`` its posterior and ``level_scores`` the body's
evidence per level of :data:`radlake.models.levels.LEVELS`, from which the scoring job
decodes a whole stack of frames at once. Detectors without levels return ``None`` in the
level fields.

Parameters (:data:`PARAMS`, in the signature's param schema): ``score_threshold`` (the
lowest score returned; default the one it was logged with) and ``batch_size`` (images per
forward pass), given to ``predict(..., params=...)``, to ``spark_udf(params=...)`` or in
a served model's request.

The model is logged as MLflow *models from code*: ``python_model`` is the path of
:mod:`radlake.models.detector_model` (:data:`MODEL_CODE`), a file that hands MLflow a
:class:`DetectorModel`, not a pickled object, so a load runs radlake's own code and
unpickles nothing (it loads with ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false``). The
model bundles radlake's code (``code_paths``), so it loads with
``mlflow.pyfunc.load_model`` in a fresh process and as ``mlflow.pyfunc.spark_udf``
(use :func:`udf_result_type` as its ``result_type`` and select ``.detections``;
:func:`detections_column` does this, and gives detectors logged before the level fields
the same struct with those fields null). Detectors logged before as a cloudpickled
``DetectorModel()`` (``python_model.pkl``) still load and score the same way: the pickle
refers to this module's :class:`DetectorModel` by name, whose ``load_context`` reads the
same ``weights`` and ``spec`` artifacts.

Example
-------
>>> import mlflow                                                    # doctest: +SKIP
>>> model = mlflow.pyfunc.load_model("models:/vertebra_detector@champion")  # doctest: +SKIP
>>> model.predict(model_input_rows(images_pdf))["detections"][0][0]["level"]  # doctest: +SKIP
'L3'
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from radlake.errors import RadlakeError

#: Fields of one output detection, in order, with their Spark types.
DETECTION_FIELDS = (
    ("label", "string"),
    ("level", "string"),
    ("score", "double"),
    ("x0", "double"),
    ("y0", "double"),
    ("x1", "double"),
    ("y1", "double"),
    ("level_status", "string"),
    ("level_probability", "double"),
    ("level_scores", "array<double>"),
)
#: Fields a detector may leave out (``None``): the level fields, absent from plain detectors and older models.
OPTIONAL_FIELDS = ("level", "level_status", "level_probability", "level_scores")
INPUT_COLUMNS = ("pixels", "dtype", "height", "width", "pixel_spacing")
#: Inference parameters (``predict(..., params=...)``, ``spark_udf(params=...)``, the ``params`` of a
#: served model's request): the lowest score returned (default: the threshold the model was logged with;
#: it can go down to the detector's candidate floor) and the images per forward pass.
PARAMS = ("score_threshold", "batch_size")
DEFAULT_BATCH_SIZE = 8
#: Distributions the model needs at load time, pinned to the versions it was trained with.
REQUIREMENTS = ("torch", "torchvision", "numpy", "pandas", "pydicom", "mlflow")
#: The file MLflow runs to load a detector logged by :func:`log_detector` (models from code).
MODEL_CODE = Path(__file__).with_name("detector_model.py")


def udf_result_type(fields: tuple[str, ...] | None = None) -> str:
    """The Spark SQL type of the model's output, for ``mlflow.pyfunc.spark_udf(result_type=...)``.

    A struct with one field, ``detections``: MLflow's UDF converts struct results
    field by field, while a bare array of structs is not converted (select
    ``udf(...).detections``). ``fields`` (default all of :data:`DETECTION_FIELDS`) names
    the detection fields the model returns: MLflow needs every field it is asked for.
    """
    wanted = DETECTION_FIELDS if fields is None else [(n, k) for n, k in DETECTION_FIELDS if n in fields]
    return "struct<detections: array<struct<" + ", ".join(f"{name}: {kind}" for name, kind in wanted) + ">>>"


def detection_fields(model_uri: str) -> tuple[str, ...]:
    """The fields of :data:`DETECTION_FIELDS` that the model's signature declares for each detection.

    Detectors logged before the level fields existed declare only the first seven.
    """
    signature = mlflow.models.get_model_info(model_uri).signature
    declared: set[str] = set()
    if signature is not None and signature.outputs is not None:
        for spec in signature.outputs.inputs:
            if spec.name == "detections":
                declared = {p.name for p in getattr(getattr(spec.type, "dtype", None), "properties", [])}
    return tuple(name for name, _ in DETECTION_FIELDS if name in declared) or tuple(
        name for name, _ in DETECTION_FIELDS if name not in OPTIONAL_FIELDS[1:]
    )


class ModelSignatureError(RadlakeError):
    """A model's pyfunc signature is not the detector's (inputs, ``detections`` output, params)."""


def check_detector_signature(model_uri: str) -> tuple[str, ...]:
    """Check that ``model_uri`` is a detector pyfunc that :func:`detections_column` can run.

    Reads only the model's ``MLmodel`` metadata (no weights). Returns the names of the
    inference params the model's signature declares (:data:`PARAMS`; a detector logged
    before params existed declares none, and callers then filter its output themselves).

    Raises
    ------
    ModelSignatureError
        If the model has no signature, lacks an input of :data:`INPUT_COLUMNS` or has no
        ``detections`` output; or if no model is at the URI.
    """
    from mlflow.exceptions import MlflowException

    try:
        signature = mlflow.models.get_model_info(model_uri).signature
    except (MlflowException, OSError) as exc:
        raise ModelSignatureError(
            f"No MLflow model can be read at {model_uri!r}: {str(exc).splitlines()[0][:200]}"
        ) from None
    problems = []
    if signature is None:
        problems.append("it has no signature")
    else:
        missing = [c for c in INPUT_COLUMNS if c not in signature.inputs.input_names()]
        if missing:
            problems.append(f"inputs {missing} missing (has {signature.inputs.input_names()})")
        if signature.outputs is None or "detections" not in signature.outputs.input_names():
            problems.append("no 'detections' output")
    if problems:
        raise ModelSignatureError(f"Model {model_uri!r} is not a radlake detector pyfunc: " + "; ".join(problems) + ".")
    return tuple(p.name for p in signature.params.params if p.name in PARAMS) if signature.params else ()


def detections_column(spark, model_uri: str, params: dict[str, Any] | None = None):
    """The model's ``detections`` as a Spark column over frames that hold their values (a pyfunc Spark UDF).

    ``images`` rows go through :func:`radlake.models.model_input.model_input_frames` first.

    The UDF runs in the executors' Python (``env_manager="local"``: the cluster's
    environment is the training one); ``height`` and ``width`` are cast to the
    signature's ``long``. ``params`` (keys :data:`PARAMS`) go to every ``predict`` call.

    Where the model is loaded: on a classic session and on Databricks (serverless,
    standard-access clusters: MLflow ships the model with the session's artifacts or
    through the cluster's NFS), ``mlflow.pyfunc.spark_udf`` decides. Over any other Spark
    Connect server, whose workers may not reach the client's MLflow store, the model is
    sent with the session (:func:`radlake.models.shipped.shipped_model_udf`).
    """
    from pyspark.sql import functions as F

    from radlake.spark import is_connect

    fields = detection_fields(model_uri)
    if is_connect(spark) and not _mlflow_ships_model(spark):
        from radlake.models.shipped import shipped_model_udf

        udf = shipped_model_udf(
            spark, model_uri, result_type=udf_result_type(fields), fields=fields, columns=INPUT_COLUMNS, params=params
        )
    else:
        udf = mlflow.pyfunc.spark_udf(
            spark, model_uri, result_type=udf_result_type(fields), env_manager="local", params=params or None
        )
    found = udf(*(F.col(c).cast("long") if c in ("height", "width") else F.col(c) for c in INPUT_COLUMNS)).detections
    if len(fields) == len(DETECTION_FIELDS):
        return found
    # An older detector: the same struct, its missing fields null.
    return F.transform(
        found,
        lambda d: F.struct(
            *(d[name] if name in fields else F.lit(None).cast(kind).alias(name) for name, kind in DETECTION_FIELDS)
        ),
    )


def _mlflow_ships_model(spark) -> bool:
    """Whether ``mlflow.pyfunc.spark_udf`` gets the model to this Spark Connect session's workers itself.

    MLflow 3 does on Databricks (serverless compute, standard-access clusters, Databricks
    Connect: its ``is_databricks_connect``); over another Spark Connect server each worker
    downloads the model from the client's tracking URI.
    """
    try:
        from mlflow.utils.databricks_utils import is_databricks_connect
    except ImportError:  # another MLflow layout: ship it ourselves
        return False
    try:
        return bool(is_databricks_connect(spark))
    except Exception:  # noqa: BLE001 - it reads the Connect client's metadata: no answer means not Databricks
        return False


class DetectorModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper; artifacts ``weights`` (a ``state_dict``) and ``spec`` (the :class:`DetectorSpec` JSON).

    Built by :data:`MODEL_CODE` when a detector logged from code is loaded, and named by
    the pickle of a detector logged before (as ``python_model=DetectorModel()``): both
    load through :meth:`load_context`, so keep this class here and under this name.
    """

    def load_context(self, context) -> None:
        import torch

        from radlake.models.detector import DetectorSpec, build_detector

        self.spec = DetectorSpec.from_dict(json.loads(Path(context.artifacts["spec"]).read_text()))
        self.model = build_detector(self.spec)
        self.model.load_state_dict(torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True))
        self.model.eval()

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        params = params or {}
        spec = self.spec
        if params.get("score_threshold") is not None:
            spec = replace(spec, score_threshold=float(params["score_threshold"]))
        batch_size = int(params.get("batch_size") or DEFAULT_BATCH_SIZE)
        return pd.DataFrame({"detections": predict_rows(self.model, spec, model_input, batch_size=batch_size)})


def predict_rows(model, spec, rows: pd.DataFrame, batch_size: int = DEFAULT_BATCH_SIZE) -> list[list[dict]]:
    """Detections in source pixels for every row of ``rows`` (columns :data:`INPUT_COLUMNS`; ``images``
    rows may also carry their transform columns, :data:`radlake.dicom.pixels.TRANSFORM_COLUMNS`).

    ``spec.score_threshold`` is the lowest score returned; ``batch_size`` images go through
    the network at a time.
    """
    import torch

    from radlake.dicom.pixels import TRANSFORM_COLUMNS
    from radlake.models.detector import postprocess
    from radlake.models.preprocess import prepare_frame

    out: list[list[dict]] = []
    records = rows.to_dict("records")
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        prepared = [
            prepare_frame(
                r["pixels"],
                r["dtype"],
                r["height"],
                r["width"],
                spec.image_size,
                pixel_spacing=_spacing(r.get("pixel_spacing")),
                input_spacing_mm=spec.input_spacing_mm,
                **{name: r.get(name) for name in TRANSFORM_COLUMNS},  # absent from a model's input: its values
            )
            for r in chunk
        ]
        with torch.inference_mode():
            outputs = model([image for image, _ in prepared])
        for row, (_, geometry), output in zip(chunk, prepared, outputs, strict=True):
            found = (_as_output(d, geometry, spec, row["height"], row["width"]) for d in postprocess(output, spec))
            out.append([d for d in found if d is not None])
    return out


def _spacing(value) -> list[float] | None:
    """PixelSpacing as a list (Spark hands arrays to pandas as numpy arrays), or ``None``."""
    if value is None:
        return None
    values = [float(v) for v in value]
    return values if len(values) == 2 else None


def _as_output(detection: dict, geometry, spec, height: int, width: int) -> dict | None:
    """A detection in source pixels, clipped to the frame (``None`` if nothing of it is inside)."""
    x0, y0, x1, y1 = (float(v) for v in geometry.boxes_to_source([detection["box_xyxy"]])[0])
    x0, x1 = min(max(x0, 0.0), float(width)), min(max(x1, 0.0), float(width))
    y0, y1 = min(max(y0, 0.0), float(height)), min(max(y1, 0.0), float(height))
    if x1 <= x0 or y1 <= y0:
        return None
    levels = spec.kind == "level"
    return {
        "label": spec.label,
        "level": detection["class_name"] if levels else None,
        "score": float(detection["score"]),
        "x0": x0,
        "y0": y0,
        "x1": x1,
        "y1": y1,
        "level_status": detection.get("level_status") if levels else None,
        "level_probability": detection.get("level_probability") if levels else None,
        "level_scores": detection.get("level_scores") if levels else None,
    }


def _signature(spec, fields: tuple[str, ...] | None = None):
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Object, ParamSchema, ParamSpec, Property, Schema

    inputs = Schema(
        [
            ColSpec("binary", "pixels"),
            ColSpec("string", "dtype"),
            ColSpec("long", "height"),
            ColSpec("long", "width"),
            ColSpec(Array("double"), "pixel_spacing"),
        ]
    )
    kinds = {"string": "string", "double": "double", "array<double>": Array("double")}
    detection = Object(
        [
            Property(name, kinds[kind], required=name not in OPTIONAL_FIELDS)
            for name, kind in DETECTION_FIELDS
            if fields is None or name in fields
        ]
    )
    outputs = Schema([ColSpec(Array(detection), "detections")])
    params = ParamSchema(
        [
            ParamSpec("score_threshold", "double", float(spec.score_threshold)),
            ParamSpec("batch_size", "long", DEFAULT_BATCH_SIZE),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def log_detector(
    model, spec, *, input_example: pd.DataFrame, name: str = "model", registered_model_name: str | None = None
):
    """Log ``model`` (a torchvision detector) as a pyfunc in the active run; returns MLflow's ``ModelInfo``.

    Logged from code (:data:`MODEL_CODE`, see the module docstring) with the weights and the
    spec as artifacts and radlake's package as ``code_paths``.
    """
    with tempfile.TemporaryDirectory() as tmp:
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(MODEL_CODE),
            registered_model_name=registered_model_name,
            **detector_log_arguments(model, spec, input_example=input_example, folder=Path(tmp)),
        )


def detector_log_arguments(model, spec, *, input_example: pd.DataFrame, folder: Path) -> dict:
    """What ``mlflow.pyfunc.log_model`` gets for a detector besides its name and its ``python_model``.

    Writes the weights (``weights.pt``, CPU tensors) and the spec (``spec.json``) into
    ``folder``, which must exist until the model is logged; returns the artifacts, radlake's
    package as ``code_paths``, the signature, a one-row input example and the pinned requirements.
    """
    import torch

    import radlake

    weights = folder / "weights.pt"
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, weights)
    spec_file = folder / "spec.json"
    spec_file.write_text(json.dumps(spec.as_dict(), indent=2))
    return {
        "artifacts": {"weights": str(weights), "spec": str(spec_file)},
        "code_paths": [str(Path(radlake.__file__).parent)],
        "signature": _signature(spec),
        "input_example": input_example[list(INPUT_COLUMNS)].head(1),
        "pip_requirements": [f"{d}=={version(d)}" for d in REQUIREMENTS],
    }
