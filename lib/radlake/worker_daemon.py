"""PySpark's Python worker daemon, with the libraries radlake's executor code needs imported first.

Spark starts one daemon per executor (``python -m <spark.python.daemon.module>``) and forks
a Python worker from it for each task slot; a worker lives until it has been idle for a
while, then the next task forks a new one. With pyspark's own daemon every fork imports
torch, torchvision and MLflow again when it unpickles a scoring UDF: about 6 CPU-seconds a
worker on this project's 2-core machine, paid again after every idle spell. This daemon
imports them once, before it forks; each worker inherits them (copy-on-write pages).

It also imports pyspark and py4j from the installed packages rather than from the copies that
Spark puts first on every Python worker's path (:func:`drop_bundled_zips`).

:func:`radlake.spark.get_spark` names this module as the daemon of local sessions and
standalone clusters when ``spark.worker_preload`` is not empty, and passes the modules in
the ``RADLAKE_WORKER_PRELOAD`` environment variable (comma-separated). A module that
is not installed is skipped: the daemon must start wherever pyspark does.

It imports nothing from radlake: it runs on executors before any task does.
"""

from __future__ import annotations

import importlib
import os
import sys
import zipimport
from importlib.machinery import PathFinder

#: Environment variable holding the modules to import, comma-separated (set by ``get_spark``).
PRELOAD_ENV = "RADLAKE_WORKER_PRELOAD"
#: What the executors of a session that loads no model (ingest, labels) import before forking their
#: Python workers: DICOM reading only, never torch (``get_spark(worker_preload=NO_MODEL_PRELOAD)``).
NO_MODEL_PRELOAD = ("pydicom",)


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


def drop_bundled_zips() -> list[str]:
    """Take the zips of pyspark's own package (``pyspark.zip``, py4j's source zip) off ``sys.path``; return them.

    Spark puts ``$SPARK_HOME/python/lib/pyspark.zip`` and py4j's zip first on every Python
    worker's path. With pyspark installed by pip, ``SPARK_HOME`` is the installed package, so
    the zips hold the very code of site-packages, but served by zipimport: it compiles every
    module from source (it keeps no bytecode), and each time a task calls
    ``importlib.invalidate_caches()`` (pyspark's worker does, for every task) it reads the 3.5 MB
    zip's directory again, once per sub-package imported from it: about 0.25 CPU-seconds a task
    on this project's machine. A zip is dropped only when it lies inside the installed pyspark
    package and the package it holds is importable without it; the zips of another Spark
    distribution and the job's own ``--py-files`` stay. Call before pyspark is imported.
    """
    installed = [p for p in sys.path if not p.endswith(".zip")]
    spec = PathFinder.find_spec("pyspark", installed)
    if spec is None or not spec.submodule_search_locations or "pyspark" in sys.modules:
        return []
    bundled = os.path.join(list(spec.submodule_search_locations)[0], "python", "lib") + os.sep
    dropped = [
        p
        for p in sys.path
        if p.startswith(bundled)
        and p.endswith(".zip")
        and PathFinder.find_spec(os.path.basename(p).split("-")[0].removesuffix(".zip"), installed) is not None
    ]
    sys.path[:] = [p for p in sys.path if p not in dropped]
    for key in [k for k in sys.path_importer_cache if k.startswith(tuple(dropped))]:
        del sys.path_importer_cache[key]
    for key in [k for k in zipimport._zip_directory_cache if k in dropped]:  # type: ignore[attr-defined]
        del zipimport._zip_directory_cache[key]  # type: ignore[attr-defined]
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if os.path.abspath(p) not in dropped)
    return dropped


if __name__ == "__main__":
    drop_bundled_zips()
    preload()
    from pyspark.daemon import manager

    manager()
