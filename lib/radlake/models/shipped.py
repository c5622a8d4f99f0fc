"""A pyfunc model shipped with a Spark Connect session, and the pandas UDF that runs it there.

Over a Spark Connect server that is not Databricks' (``sc://host:port``), MLflow 3's
``mlflow.pyfunc.spark_udf`` (``env_manager="local"``) has every Python worker download
the model again from ``model_uri`` with the client's tracking URI, so the executors
must reach the client's MLflow store: a ``sqlite:///`` file or a local artifact folder
on the client is out of their reach. Here the client downloads the model once, packs
it into ``radlake-model-<content digest>.tar.gz`` and adds it to the session as an
archive artifact (``SparkSession.addArtifacts(..., archive=True)``); the server unpacks
it where the session's Python workers run, and each worker loads it once with
``mlflow.pyfunc.load_model``. The archive is the whole model folder: a detector logged from
code travels with its copy of :mod:`radlake.models.detector_model` (see
:mod:`radlake.models.pyfunc`), and loading it there runs that file, which builds the
detector with the radlake the worker already imported for this UDF (the model's own
``code/`` copy is only the fallback); nothing is unpickled. A detector registered before,
a pickled ``DetectorModel``, is unpickled there as on the client.

On Databricks (serverless compute, standard-access clusters, Databricks Connect)
MLflow ships the model itself (the session's artifacts there, or the cluster's NFS) and
:func:`radlake.models.pyfunc.detections_column` keeps ``mlflow.pyfunc.spark_udf``.

Example
-------
>>> udf = shipped_model_udf(spark, "models:/vertebra_detector/3",
...                         result_type=udf_result_type(), fields=fields)      # doctest: +SKIP
>>> model_input_frames(images).select(udf(*INPUT_COLUMNS).detections)          # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Tuple  # noqa: UP035 - pandas_udf reads these hints, not tuple[...]

import pandas as pd

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

#: Archive name prefix of a shipped model (the rest is a digest of its files).
ARCHIVE_PREFIX = "radlake-model-"
#: Archives added to each Spark Connect session by this process: (session id, archive name).
_SHIPPED: set[tuple[str, str]] = set()
#: Models loaded by this Python worker, by archive name.
_LOADED: dict[str, Any] = {}


def _digest(folder: Path) -> str:
    """sha256 over the relative paths and contents of every file below ``folder`` (sorted)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def ship_model(spark: SparkSession, model_uri: str) -> str:
    """Add the model at ``model_uri`` to the Spark Connect session ``spark`` as an archive; return its file name.

    The name carries a digest of the model's files, so a model is sent once per session
    and two models never share a name. Nothing is sent if this process already added it.

    Raises
    ------
    ValueError
        If ``spark`` is not a Spark Connect session (a classic session has no session artifacts).
    """
    import mlflow

    from radlake.spark import is_connect

    if not is_connect(spark):
        raise ValueError(f"Argument 'spark' must be a Spark Connect session, got {type(spark).__name__}.")
    with tempfile.TemporaryDirectory(prefix="radlake-ship-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=os.path.join(tmp, "model")))
        name = f"{ARCHIVE_PREFIX}{_digest(local)[:24]}.tar.gz"
        key = (str(spark.session_id), name)
        if key in _SHIPPED:
            return name
        archive = Path(tmp) / name
        with tarfile.open(archive, "w:gz") as tar:
            for child in sorted(local.iterdir()):
                tar.add(child, arcname=child.name)
        spark.addArtifacts(str(archive), archive=True)
    _SHIPPED.add(key)
    return name


def shipped_model_dir(name: str) -> Path:
    """Where the session's archive ``name`` is unpacked, seen from a Python worker of the session.

    Spark unpacks a session's archives into a folder named like the archive in the
    worker's working directory (the session's file root, :class:`pyspark.SparkFiles`).

    Raises
    ------
    FileNotFoundError
        If neither place holds the unpacked model (no ``MLmodel`` file).
    """
    from pyspark import SparkFiles

    roots = [Path.cwd()]
    try:
        roots.append(Path(SparkFiles.getRootDirectory()))
    except Exception:  # noqa: BLE001 - outside a Spark worker there is no file root
        pass
    for root in roots:
        if (root / name / "MLmodel").is_file():
            return root / name
    raise FileNotFoundError(f"Shipped model {name!r} is not unpacked in {[str(r) for r in roots]}.")


def load_shipped(name: str):
    """The pyfunc model of archive ``name``, loaded once per Python worker."""
    model = _LOADED.get(name)
    if model is None:
        import mlflow

        model = _LOADED[name] = mlflow.pyfunc.load_model(str(shipped_model_dir(name)))
    return model


def shipped_model_udf(
    spark: SparkSession,
    model_uri: str,
    *,
    result_type: str,
    fields: Sequence[str],
    columns: Sequence[str],
    params: dict[str, Any] | None = None,
):
    """An iterator pandas UDF running the detector at ``model_uri`` on the session's Python workers.

    The same contract as ``mlflow.pyfunc.spark_udf(spark, model_uri, result_type=...,
    env_manager="local", params=params)``: called with ``columns`` (the model's inputs,
    in order) it returns a struct with one field, ``detections``, each detection holding
    ``fields``. The model goes to the session with :func:`ship_model`.

    Parameters
    ----------
    spark
        A Spark Connect session.
    model_uri
        Any MLflow model URI the client can read (``models:/name/3``, ``runs:/…``, a path).
    result_type
        Spark SQL type of the result (:func:`radlake.models.pyfunc.udf_result_type`).
    fields
        The detection fields of ``result_type``; any other key a detection has is dropped.
    columns
        Input column names of the model, in the order the UDF is called with them.
    params
        Inference params given to every ``predict`` call (``None``: the model's defaults).
    """
    from pyspark.sql.functions import pandas_udf

    name = ship_model(spark, model_uri)
    names, keep, given = list(columns), list(fields), dict(params) if params else None

    @pandas_udf(result_type)
    def predict(batches: Iterator[Tuple[pd.Series, ...]]) -> Iterator[pd.DataFrame]:  # noqa: UP006
        model = load_shipped(name)
        for batch in batches:
            frame = pd.DataFrame(dict(zip(names, batch, strict=True)))
            found = model.predict(frame, params=given)["detections"]
            yield pd.DataFrame({"detections": [[{f: d.get(f) for f in keep} for d in row] for row in found]})

    return predict
