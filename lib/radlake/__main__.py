"""``python -m radlake``: the same command line as the ``radlake`` console script."""

import sys

from radlake.cli import main

sys.exit(main())
