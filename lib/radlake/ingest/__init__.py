"""DICOM archive -> Delta tables (``instances``, ``series``, ``images``, ``quarantine``, ``duplicates``).

- :mod:`.job`: ``radlake ingest`` (:func:`radlake.ingest.job.run_ingest`); its docstring gives the
  order of work and its guarantees.
- :mod:`.executors`: what runs on the executors (header, copies and pixel passes).
- :mod:`.listing`: listing an archive and packing files into tasks.
- :mod:`.series`: series stacks and slice order.
- :mod:`.schema`: the tables' Spark schemas.

May import: the foundation (:mod:`radlake.config`, :mod:`radlake.tables`, :mod:`radlake.spark`,
:mod:`radlake.errors`) and :mod:`radlake.dicom`.
"""
