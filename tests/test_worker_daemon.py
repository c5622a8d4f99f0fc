"""The executors' Python worker daemon (``radlake.worker_daemon``): the heavy libraries are imported
once, in the daemon, and every forked worker has them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from radlake.spark import _preload_modules, _worker_daemon_settings
from radlake.worker_daemon import PRELOAD_ENV, drop_bundled_zips, preload


def test_preload_imports_what_is_installed_and_skips_the_rest(monkeypatch):
    assert preload("json, radlake_no_such_module ,,colorsys") == ["json", "colorsys"]
    monkeypatch.setenv(PRELOAD_ENV, "radlake_no_such_module,json")
    assert preload() == ["json"]


def test_no_modules_keep_pysparks_own_daemon():
    assert _worker_daemon_settings([]) == {}
    settings = _worker_daemon_settings(["torch", "mlflow.pyfunc"])
    assert settings == {
        "spark.python.daemon.module": "radlake.worker_daemon",
        f"spark.executorEnv.{PRELOAD_ENV}": "torch,mlflow.pyfunc",
    }


def test_a_command_narrows_the_preload_but_cannot_turn_the_daemon_back_on():
    default = ["torch", "mlflow.pyfunc"]
    assert _preload_modules(default, None) == default
    assert _preload_modules(default, ("pydicom",)) == ["pydicom"]  # radlake ingest, radlake labels
    assert _preload_modules([], ("pydicom",)) == []  # --set spark.worker_preload=[]: pyspark's daemon


def test_the_zips_of_the_installed_pyspark_leave_the_path_and_others_stay(monkeypatch, tmp_path):
    import pyspark

    home = Path(pyspark.__file__).parent
    zips = sorted(str(p) for p in (home / "python" / "lib").glob("*.zip"))
    assert any(p.endswith("pyspark.zip") for p in zips) and any("py4j" in p for p in zips)
    core_jar = str(next((home / "jars").glob("spark-core_*.jar")))  # on the workers' path too; no Python in it
    bundled = [*zips, core_jar]
    other = str(tmp_path / "job_py_files.zip")  # a job's --py-files: not pyspark's, kept
    monkeypatch.setattr(sys, "path", [*bundled, other, *sys.path])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([*bundled, other]))
    monkeypatch.delitem(sys.modules, "pyspark")
    assert drop_bundled_zips() == bundled
    assert other in sys.path and not set(bundled) & set(sys.path)
    assert os.environ["PYTHONPATH"] == other


@pytest.mark.spark
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_are_forked_from_a_daemon_that_imported_torch(spark, config):
    """The session's daemon is radlake's, its process has torch loaded (its shared library is mapped), and
    the workers are its forks: none of them pays for the import."""
    assert config.spark.worker_preload and "torch" in config.spark.worker_preload

    # Defined here, so that it is pickled by value (the tests are no package the workers can import).
    def daemon_of_this_worker(batches):
        """Run in a Spark task: the worker's parent (the daemon), its command line and whether it has torch."""
        import os
        import sys

        import pandas as pd
        import pyspark

        daemon = os.getppid()
        cmdline = Path(f"/proc/{daemon}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        maps = Path(f"/proc/{daemon}/maps").read_text()
        for batch in batches:
            zips = [p for p in sys.path if p.endswith((".zip", ".jar"))]
            yield pd.DataFrame(
                {
                    "id": batch["id"],
                    "cmdline": cmdline,
                    "daemon_has_torch": "libtorch_cpu" in maps,
                    "pyspark_file": pyspark.__file__,
                    "zips_on_path": ",".join(zips),
                }
            )

    rows = (
        spark.range(4, numPartitions=2)
        .mapInPandas(
            daemon_of_this_worker,
            "id long, cmdline string, daemon_has_torch boolean, pyspark_file string, zips_on_path string",
        )
        .collect()
    )
    assert len(rows) == 4
    assert all("-m radlake.worker_daemon" in r.cmdline for r in rows), rows[0].cmdline
    assert all(r.daemon_has_torch for r in rows)
    # pyspark comes from the installed package, not from the pyspark.zip Spark puts on the workers' path,
    # and the spark-core jar Spark puts there too is gone
    assert all(".zip" not in r.pyspark_file for r in rows), rows[0]
    assert all("pyspark.zip" not in r.zips_on_path and ".jar" not in r.zips_on_path for r in rows), rows[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_stage_that_loads_no_model_gets_a_daemon_without_torch_in_a_session_that_has_one(spark):
    """``executor_imports``: the functions made in the block run under a daemon of their own that did not
    import torch; those made after it (and a DataFrame made in it, computed later) keep their daemon."""
    from pyspark.sql import SparkSession

    from radlake.spark import executor_imports

    def daemon_of_this_worker(batches):
        import os

        import pandas as pd

        daemon = os.getppid()
        maps = Path(f"/proc/{daemon}/maps").read_text()
        for batch in batches:
            yield pd.DataFrame({"id": batch["id"], "daemon": daemon, "has_torch": "libtorch_cpu" in maps})

    def probe(session: SparkSession):
        return session.range(2, numPartitions=2).mapInPandas(
            daemon_of_this_worker, "id long, daemon long, has_torch boolean"
        )

    environment = spark.sparkContext.environment
    before = environment[PRELOAD_ENV]
    with executor_imports(spark, ("pydicom",)):
        light = probe(spark)
        assert environment[PRELOAD_ENV] == "pydicom"
    assert environment[PRELOAD_ENV] == before  # the session's own again
    full = probe(spark).collect()
    light_rows = light.collect()  # computed after the block: still the light daemon
    assert {r.has_torch for r in full} == {True} and {r.has_torch for r in light_rows} == {False}
    assert not {r.daemon for r in full} & {r.daemon for r in light_rows}
