"""Databricks task: train the Schmorl's-node detector on the vertebra crops, register it and promote it if it wins.

Parameters (what the bundle passes): ``--conf NAME|PATH`` ``--set KEY=VALUE ...`` ``[--vertebra-model URI]``
``[--no-register]``.
"""

import sys

from radlake.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", "schmorl", *sys.argv[1:]]))
