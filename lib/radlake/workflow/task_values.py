"""Hand a pipeline step's outputs to the next task of a Databricks job (task values).

In the ``radlake_train`` job of the bundle (``resources/train.yml``) every step is its own task, so the
outputs of one step (``vertebra_run_id``, ``vertebra_model``, ``schmorl_run_id``, ...; see
the table in :mod:`radlake.workflow.pipeline`) must reach the tasks after it. The upstream
task sets them with ``dbutils.jobs.taskValues.set(key, value)``; a downstream task's
parameters read them with a dynamic value reference such as
``{{tasks.train_vertebra.values.vertebra_run_id}}``.

:func:`publish` does that on Databricks and nothing elsewhere, so the same pipeline code runs
locally, under ``mlflow run`` and in tests unchanged.

Example
-------
>>> publish({"vertebra_run_id": "abc123"})   # locally: nothing to publish to
False
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from radlake.spark import on_databricks

#: Databricks limits a task value to 48 KiB of JSON; a longer output would fail the task.
MAX_VALUE_BYTES = 48 * 1024


def get_dbutils() -> Any | None:
    """The ``dbutils`` of this Databricks process, or None where there is none.

    Tried in order: the notebook's ``dbutils`` (IPython user namespace), then
    ``pyspark.dbutils.DBUtils`` over the active Spark session (a ``spark_python_task`` or
    ``python_wheel_task``), then ``databricks.sdk.runtime.dbutils``.
    """
    try:  # a notebook, or a notebook-like REPL: dbutils is a global there
        from IPython import get_ipython  # type: ignore[import-not-found]

        shell = get_ipython()
        if shell is not None and "dbutils" in shell.user_ns:
            return shell.user_ns["dbutils"]
    except ImportError:
        pass
    try:
        from pyspark.dbutils import DBUtils  # type: ignore[import-not-found]  # Databricks runtime only
        from pyspark.sql import SparkSession

        spark = SparkSession.getActiveSession()
        if spark is not None:
            return DBUtils(spark)
    except ImportError:
        pass
    try:
        from databricks.sdk.runtime import dbutils  # type: ignore[import-not-found]

        return dbutils
    except Exception:  # outside Databricks the SDK's runtime shim raises on import or use
        return None


def publish(outputs: Mapping[str, Any], *, dbutils: Any | None = None) -> bool:
    """Set every ``key: value`` of ``outputs`` as a task value of the current job task.

    Parameters
    ----------
    outputs
        A step's outputs; values are published as strings (``None`` is skipped), since the
        pipeline's command-line options that read them back take strings.
    dbutils
        Use this ``dbutils`` (tests inject a fake); by default the runtime's, on Databricks only.

    Returns
    -------
    bool
        True when the values were set; False, having done nothing, when not on Databricks or
        when no ``dbutils`` could be found.

    Raises
    ------
    ValueError
        If a value is longer than :data:`MAX_VALUE_BYTES` (Databricks would fail the task later,
        with a less helpful message).
    """
    if dbutils is None:
        if not on_databricks():
            return False
        dbutils = get_dbutils()
        if dbutils is None:
            return False
    items = {str(k): str(v) for k, v in outputs.items() if v is not None}
    for key, value in items.items():
        if len(value.encode()) > MAX_VALUE_BYTES:
            raise ValueError(f"Task value '{key}' is {len(value.encode())} bytes; the limit is {MAX_VALUE_BYTES}")
    for key, value in items.items():
        dbutils.jobs.taskValues.set(key=key, value=value)
    return True
