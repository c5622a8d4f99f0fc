"""Detectors logged the way radlake logged them before models from code: a cloudpickled ``DetectorModel()``.

Registered detectors of that form live on in every store that had them; the tests log
one with :func:`log_pickled_detector` (what ``radlake.models.pyfunc.log_detector`` did
then, call for call) and check that it still loads and scores.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import pandas as pd


def log_pickled_detector(
    model, spec, *, input_example: pd.DataFrame, name: str = "model", registered_model_name: str | None = None
):
    """Log ``model`` as the pickled pyfunc of before (``python_model=DetectorModel()``); returns the ``ModelInfo``.

    The artifacts, code paths, signature, example and requirements are what ``log_detector`` gives
    (:func:`radlake.models.pyfunc.detector_log_arguments`): only the ``python_model`` differs.
    """
    from radlake.models.pyfunc import DetectorModel, detector_log_arguments

    with tempfile.TemporaryDirectory() as tmp:
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=DetectorModel(),
            registered_model_name=registered_model_name,
            **detector_log_arguments(model, spec, input_example=input_example, folder=Path(tmp)),
        )


def is_pickled(model_uri: str) -> bool:
    """True if the pyfunc at ``model_uri`` is a pickled Python object, False if it is logged from code."""
    flavor = mlflow.models.get_model_info(model_uri).flavors["python_function"]
    if ("python_model" in flavor) == ("model_code_path" in flavor):
        raise AssertionError(f"{model_uri}: neither or both of python_model and model_code_path: {flavor}")
    return "python_model" in flavor
