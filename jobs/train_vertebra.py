"""Databricks task: train the vertebra detector, log it to MLflow, register it and promote it if it wins.

Parameters (what the bundle passes): ``--conf NAME|PATH`` ``--set KEY=VALUE ...`` ``[--no-register]``.
"""

import sys

from radlake.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "vertebra", *sys.argv[1:]]))
