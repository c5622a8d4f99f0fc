"""The detector pyfunc as MLflow *models from code*: the file MLflow runs to load a detector.

:func:`radlake.models.pyfunc.log_detector` logs this file's path as ``python_model``
instead of a pickled :class:`~radlake.models.pyfunc.DetectorModel`. MLflow copies the file
into the model's folder (beside ``MLmodel``) and records it as the pyfunc flavor's
``model_code_path``; every load (``mlflow.pyfunc.load_model``, ``mlflow.pyfunc.spark_udf``
on each Python worker, a served model, a model shipped to a Spark Connect session) runs the
copy as a fresh module. It imports radlake, from the model's ``code/`` folder (``code_paths``)
when radlake is not installed, and hands MLflow a new :class:`DetectorModel`; MLflow then
calls its ``load_context`` with the model's ``weights`` and ``spec`` artifacts. Nothing is
unpickled: a load runs radlake's own code.

Not imported by radlake itself: importing it registers a model with MLflow
(``mlflow.models.set_model``), which only a model load should do.

Example
-------
>>> mlflow.pyfunc.log_model(name="model", python_model=str(MODEL_CODE), ...)  # doctest: +SKIP
"""

import mlflow

from radlake.models.pyfunc import DetectorModel

mlflow.models.set_model(DetectorModel())
