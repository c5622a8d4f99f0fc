"""Batch scoring of the archive with the registered models, and what is built on its findings.

- :mod:`.schema`: the ``predictions`` and ``study_findings`` Delta tables.
- :mod:`.job`: ``radlake score`` — both detectors as MLflow pyfunc Spark UDFs over ``images``.
- :mod:`.sr`: ``radlake export-sr`` — the findings as DICOM Comprehensive 3D SR (TID 1500).
- :mod:`.review`: ``radlake review`` — PNGs of the sagittal slices with the boxes drawn.
"""
