"""A Spark Connect server on 127.0.0.1 for the Spark Connect tests (``make connect-test``).

pyspark's own ``bin/spark-submit`` (no Spark installation besides the pip package) starts
``SparkConnectServer`` on ``local[2]`` with the Delta jars that ``make setup`` fetched and
Delta's SQL extension and catalog, on a port free at run time, every log and work folder
under the test's temporary folder. Its Python workers run this interpreter, so they
import radlake as the tests do. The server leads a session of its own; the fixture stops
it and checks that no process of that session (JVM, Python workers, decoder sandboxes)
is left.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from radlake.config import load_config
from radlake.spark import _delta_jars, class_archive_path
from spark_daemons import Daemon, free_port, spark_home

#: Seconds to wait for the server to accept connections (about 10 to 20 s on 2 cores).
START_TIMEOUT_S = 180.0
SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"


@dataclass
class ConnectServer:
    """A running Spark Connect server."""

    url: str
    """``sc://127.0.0.1:<port>``: the value of ``--set spark.remote=``."""
    daemon: Daemon

    def logs(self, chars: int = 6000) -> str:
        """The end of the server's log."""
        return self.daemon.logs(chars)

    def stop(self) -> list[int]:
        """SIGTERM its process group, then SIGKILL what is left of its session; return the pids still there."""
        return self.daemon.stop()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def connect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConnectServer]:
    """Start a Spark Connect server with Delta on 127.0.0.1, wait until it accepts connections, stop it at the end."""
    root = tmp_path_factory.mktemp("spark-connect")
    for folder in ("conf", "local", "warehouse", "derby"):
        (root / folder).mkdir()
    jars_dir = load_config(overrides=[f"storage.root={root}"]).spark.resolved_jars_dir
    jars = _delta_jars(jars_dir)
    if not any(j.name.startswith("delta-spark_") for j in jars):
        pytest.fail(f"No Delta jars in {jars_dir}: run `make setup` first.")
    java_options = f"-Dderby.system.home={root / 'derby'}"
    archive = class_archive_path(jars_dir, jars)  # maps the set-up's class archive if it fits this JVM
    if archive is not None and archive.is_file():
        java_options += f" -XX:SharedArchiveFile={archive}"
    port = free_port()
    settings = {
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.connect.grpc.binding.port": str(port),
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.ui.enabled": "false",
        "spark.sql.warehouse.dir": str(root / "warehouse"),
        "spark.local.dir": str(root / "local"),
        # Task slots the clients plan for (radlake.spark.default_parallelism reads it): local[2]'s two cores.
        "spark.default.parallelism": "2",
        "spark.sql.shuffle.partitions": "2",
        "spark.databricks.delta.snapshotPartitions": "2",
    }
    home = spark_home()
    command = [str(home / "bin" / "spark-submit"), "--class", SERVER_CLASS, "--master", "local[2]"]
    command += ["--driver-memory", "2g", "--driver-java-options", java_options, "--jars", ",".join(map(str, jars))]
    for key, value in settings.items():
        command += ["--conf", f"{key}={value}"]
    command.append("spark-internal")
    env = {
        **os.environ,
        "SPARK_HOME": str(home),
        "SPARK_CONF_DIR": str(root / "conf"),  # empty: none of this machine's Spark settings
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,  # the server's Python workers import radlake from this environment
    }
    env.pop("SPARK_REMOTE", None)
    env.pop("SPARK_CONNECT_MODE_ENABLED", None)
    server = ConnectServer(
        f"sc://127.0.0.1:{port}", Daemon.start("Spark Connect server", command, env=env, log=root / "server.log")
    )
    proc = server.daemon.proc
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _accepts(port):
            if proc.poll() is not None:
                raise RuntimeError(f"The Spark Connect server exited with {proc.returncode}:\n{server.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"The Spark Connect server took over {START_TIMEOUT_S:.0f} s:\n{server.logs()}")
            time.sleep(0.5)
        yield server
    finally:
        left = server.stop()
        assert not left, f"processes of the Spark Connect server still running after SIGKILL: {left}"
