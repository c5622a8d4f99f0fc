"""Databricks task: external validation of the registered models on a labelled archive (``radlake evaluate``).

Parameters (what the bundle passes): ``--conf NAME|PATH`` ``--set KEY=VALUE ...``
``--archive PATH --labels FILE [--vertebra-model URI] [--schmorl-model URI]``.
"""

import sys

from radlake.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
