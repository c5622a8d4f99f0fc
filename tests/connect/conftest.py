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
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from radlake.config import load_config
from radlake.spark import _delta_jars, class_archive_path

#: Seconds to wait for the server to accept connections (about 10 to 20 s on 2 cores).
START_TIMEOUT_S = 180.0
#: Seconds the server's process group gets to end after SIGTERM, before SIGKILL.
STOP_TIMEOUT_S = 30.0
SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spark_home() -> Path:
    """The pyspark package folder: it has ``bin/spark-submit`` and ``jars/``, a Spark distribution's layout."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def session_pids(sid: int) -> list[int]:
    """Processes of session ``sid`` (read from ``/proc``; elsewhere only the leader is seen)."""
    if not Path("/proc").is_dir():
        try:
            os.kill(sid, 0)
        except ProcessLookupError:
            return []
        return [sid]
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    pids.append(int(entry.name))
            except ProcessLookupError:
                pass
    return pids


def _wait_session_gone(sid: int, timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := session_pids(sid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@dataclass
class ConnectServer:
    """A running Spark Connect server."""

    url: str
    """``sc://127.0.0.1:<port>``: the value of ``--set spark.remote=``."""
    proc: subprocess.Popen
    log: Path

    def logs(self, chars: int = 6000) -> str:
        """The end of the server's log."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.is_file() else ""

    def stop(self) -> list[int]:
        """SIGTERM its process group, then SIGKILL what is left of its session; return the pids still there."""
        sid = self.proc.pid  # start_new_session: the server leads its session and its process group
        try:
            os.killpg(sid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        for pid in _wait_session_gone(sid, STOP_TIMEOUT_S):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        return _wait_session_gone(sid, STOP_TIMEOUT_S)


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
    log = root / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = ConnectServer(f"sc://127.0.0.1:{port}", proc, log)
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
