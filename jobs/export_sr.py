"""Databricks task: write the findings as DICOM Comprehensive 3D SR files (one per study) to the Volume.

Parameters (what the bundle passes): ``--conf NAME|PATH`` ``--set KEY=VALUE ...`` ``[--study UID] [--out DIR]``.
"""

import sys

from radlake.cli import main

if __name__ == "__main__":
    sys.exit(main(["export-sr", *sys.argv[1:]]))
