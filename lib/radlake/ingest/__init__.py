"""DICOM archive → Delta tables (``instances``, ``series``, ``images``, ``quarantine``).

See :mod:`radlake.ingest.job` for the order of work and its guarantees.
"""

from radlake.ingest.job import IngestSummary, run_ingest

__all__ = ["IngestSummary", "run_ingest"]
