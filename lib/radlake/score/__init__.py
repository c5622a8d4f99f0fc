"""Batch scoring of the archive with the registered models, and what is built on its findings.

- :mod:`.schema`: the ``predictions`` and ``study_findings`` Delta tables, the model-pair filter.
- :mod:`.job`: ``radlake score`` — the driver: frames to score, the MLflow run, the summary.
- :mod:`.pair`: the model pair, resolved, checked, and as pyfunc Spark UDF columns.
- :mod:`.executors`: what runs on the executors beside the UDFs (vertebra crops).
- :mod:`.stacks`: per series stack, levels decoded at once, nodes merged, boxes in mm and patient space.
- :mod:`.findings`: ``study_findings`` rebuilt from ``predictions``; the findings summary.
- :mod:`.sr`: ``radlake export-sr`` — the findings as DICOM Comprehensive 3D SR (TID 1500).
- :mod:`.review`: ``radlake review`` — PNGs of the sagittal slices with the boxes drawn.

May import: the foundation, :mod:`radlake.dicom`, :mod:`radlake.ingest.schema` (the ``images``
table's columns) and :mod:`radlake.models` (not training or the registry: scoring needs a
resolved model URI only).
"""
