"""radlake: radiology ML on Spark and Databricks.

DICOM archives become Delta tables, detectors are trained from them with every run
tracked in MLflow, and registered models score the whole archive in batch.

Stages live in subpackages (``radlake.synth``, ``radlake.dicom``, ...); the shared
foundation is here: :mod:`radlake.config` (typed settings), :mod:`radlake.spark`
(the Spark + Delta session), :mod:`radlake.tables` (logical table names) and
:mod:`radlake.tracking` (MLflow set-up).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("radlake")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
