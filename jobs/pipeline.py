"""Databricks task: the whole pipeline (or ``--steps`` of it) under one MLflow parent run.

Parameters (what the bundle passes): ``--conf NAME|PATH`` ``--set KEY=VALUE ...`` ``[--steps a,b]``
``[--archive URI]`` ``[--labels FILE]`` ``[--vertebra-model URI]`` ``[--vertebra-run-id ID]`` ``[--schmorl-run-id ID]``.
"""

import sys

from radlake.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
