"""PySpark's Python worker daemon, with the libraries radlake's executor code needs imported first.

Spark starts one daemon per executor (``python -m <spark.python.daemon.module>``) and forks
a Python worker from it for each task slot; a worker lives until it has been idle for a
while, then the next task forks a new one. With pyspark's own daemon every fork imports
torch, torchvision and MLflow again when it unpickles a scoring UDF: about 6 CPU-seconds a
worker on this project's 2-core machine, paid again after every idle spell. This daemon
imports them once, before it forks; each worker inherits them (copy-on-write pages).

:func:`radlake.spark.get_spark` names this module as the daemon of local sessions and
standalone clusters when ``spark.worker_preload`` is not empty, and passes the modules in
the ``RADLAKE_WORKER_PRELOAD`` environment variable (comma-separated). A module that
is not installed is skipped: the daemon must start wherever pyspark does.

It imports nothing from radlake: it runs on executors before any task does.
"""

from __future__ import annotations

import importlib
import os

#: Environment variable holding the modules to import, comma-separated (set by ``get_spark``).
PRELOAD_ENV = "RADLAKE_WORKER_PRELOAD"


def preload(modules: str | None = None) -> list[str]:
    """Import each module named in ``modules`` (default: ``$RADLAKE_WORKER_PRELOAD``); return those imported.

    Importing starts no thread in these libraries (torch creates its thread pools on first
    use), so forking after it is safe.
    """
    names = [m.strip() for m in (os.environ.get(PRELOAD_ENV, "") if modules is None else modules).split(",")]
    imported = []
    for name in filter(None, names):
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        imported.append(name)
    return imported


if __name__ == "__main__":
    preload()
    from pyspark.daemon import manager

    manager()
