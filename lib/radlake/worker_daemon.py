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
import zipfile
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
    """Take the archives of pyspark's own package off ``sys.path``; return them.

    Spark puts ``$SPARK_HOME/python/lib/pyspark.zip``, py4j's source zip and its own
    ``spark-core`` jar (a relic of when the jar carried pyspark) first on every Python worker's
    path. With pyspark installed by pip, ``SPARK_HOME`` is the installed package: the zips hold
    the very code of site-packages, and the jar (5,000 entries) holds no Python at all. Served
    by zipimport, they cost every task: it compiles modules from source (it keeps no bytecode),
    and each ``importlib.invalidate_caches()`` (pyspark's worker calls it for every task) reads
    each archive's directory again, once per package looked up in it: about 0.4 CPU-seconds a
    task on this project's machine. Dropped: a zip inside the installed pyspark package whose
    package is importable without it, and a jar there that holds no Python module. The archives
    of another Spark distribution and the job's own ``--py-files`` stay. Call before pyspark is
    imported.
    """
    installed = [p for p in sys.path if not p.endswith((".zip", ".jar"))]
    spec = PathFinder.find_spec("pyspark", installed)
    if spec is None or not spec.submodule_search_locations or "pyspark" in sys.modules:
        return []
    home = list(spec.submodule_search_locations)[0] + os.sep
    dropped = [p for p in sys.path if p.startswith(home) and _bundled_archive_is_redundant(p, installed)]
    sys.path[:] = [p for p in sys.path if p not in dropped]
    for key in [k for k in sys.path_importer_cache if k.startswith(tuple(dropped))]:
        del sys.path_importer_cache[key]
    for key in [k for k in zipimport._zip_directory_cache if k in dropped]:  # type: ignore[attr-defined]
        del zipimport._zip_directory_cache[key]  # type: ignore[attr-defined]
    if "PYTHONPATH" in os.environ:  # what the workers' own children (the decoder sandbox) start with
        paths = os.environ["PYTHONPATH"].split(os.pathsep)
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if os.path.abspath(p) not in dropped)
    return dropped


def _bundled_archive_is_redundant(path: str, installed: list[str]) -> bool:
    """Whether ``path`` (inside the installed pyspark) is a zip of an installed package or a jar without Python."""
    if path.endswith(".zip"):
        package = os.path.basename(path).split("-")[0].removesuffix(".zip")  # pyspark.zip, py4j-0.10.9.9-src.zip
        return PathFinder.find_spec(package, installed) is not None
    if path.endswith(".jar"):
        try:
            with zipfile.ZipFile(path) as jar:
                return not any(name.endswith((".py", ".pyc")) for name in jar.namelist())
        except (OSError, zipfile.BadZipFile):
            return False
    return False


if __name__ == "__main__":
    drop_bundled_zips()
    preload()
    from pyspark.daemon import manager

    manager()
