"""Databricks task: ingest the DICOM archive into the Delta tables.

Parameters (what the bundle passes): ``--archive PATH`` ``--conf NAME|PATH`` ``--set KEY=VALUE ...``.
"""

import sys

from radlake.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
