"""Databricks task: write a synthetic spine-MRI archive (e.g. into a Volume) for a demo workspace.

Parameters: ``--out PATH`` ``--studies N`` ``--seed S`` ``--conf NAME|PATH`` ``--set KEY=VALUE ...``.
"""

import sys

from radlake.cli import main

if __name__ == "__main__":
    sys.exit(main(["synth", *sys.argv[1:]]))
