"""Databricks task: score every image with the registered models (predictions and study_findings tables).

Parameters (what the bundle passes): ``--conf NAME|PATH`` ``--set KEY=VALUE ...``
``[--vertebra-model URI] [--schmorl-model URI]``.
"""

import sys

from radlake.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
