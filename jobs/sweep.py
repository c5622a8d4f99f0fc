"""Databricks task: a hyperparameter sweep, its trials spread over the executors, the best model registered.

Parameters (what the bundle passes): ``DETECTOR --trials N --parallel P [--space FILE] [--metric NAME]
[--timeout S] [--name STUDY] [--on-executors]`` ``--conf NAME|PATH`` ``--set KEY=VALUE ...``.
"""

import sys

from radlake.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
