"""Databricks task: crop every vertebra of the labelled frames with the vertebra model (vertebra_crops table).

Parameters (what the bundle passes): ``--conf NAME|PATH`` ``--set KEY=VALUE ...`` ``[--vertebra-model URI]``.
"""

import sys

from radlake.cli import main

if __name__ == "__main__":
    sys.exit(main(["crops", *sys.argv[1:]]))
