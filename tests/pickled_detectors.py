"""Detectors logged the way radlake logged them before models from code: a cloudpickled ``DetectorModel()``.

Registered detectors of that form live on in every store that had them; the tests log
one with :func:`log_pickled_detector` (what ``radlake.models.pyfunc.log_detector`` did
then, call for call) and check that it still loads and scores.
"""

from __future__ import annotations

import json
import tempfile
from importlib.metadata import version
from pathlib import Path

import mlflow
import pandas as pd


def log_pickled_detector(
    model, spec, *, input_example: pd.DataFrame, name: str = "model", registered_model_name: str | None = None
):
    """Log ``model`` as the pickled pyfunc of before (``python_model=DetectorModel()``); returns the ``ModelInfo``."""
    import torch

    import radlake
    from radlake.models.pyfunc import INPUT_COLUMNS, REQUIREMENTS, DetectorModel, _signature

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights.pt"
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, weights)
        spec_file = Path(tmp) / "spec.json"
        spec_file.write_text(json.dumps(spec.as_dict(), indent=2))
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=DetectorModel(),
            artifacts={"weights": str(weights), "spec": str(spec_file)},
            code_paths=[str(Path(radlake.__file__).parent)],
            signature=_signature(spec),
            input_example=input_example[list(INPUT_COLUMNS)].head(1),
            pip_requirements=[f"{d}=={version(d)}" for d in REQUIREMENTS],
            registered_model_name=registered_model_name,
        )


def is_pickled(model_uri: str) -> bool:
    """True if the pyfunc at ``model_uri`` is a pickled Python object, False if it is logged from code."""
    flavor = mlflow.models.get_model_info(model_uri).flavors["python_function"]
    if ("python_model" in flavor) == ("model_code_path" in flavor):
        raise AssertionError(f"{model_uri}: neither or both of python_model and model_code_path: {flavor}")
    return "python_model" in flavor
