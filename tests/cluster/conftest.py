"""A standalone Spark cluster on 127.0.0.1 for the cluster tests (``make cluster-test``).

One master and one worker, started from pyspark's own ``bin/spark-class`` (no Spark
installation besides the pip package), on ports free at run time, with every log and
work folder under the test's temporary folder. The worker offers two cores: the two
DDP processes of a ``local_mode: false`` training are one barrier stage of two tasks,
which needs both task slots at once.

Each daemon leads a session of its own, so that stopping it also ends what it started
(executor JVMs, their Python workers, the DDP processes); the fixture checks that no
process of either session is left.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from spark_daemons import Daemon, free_port, log_tail, spark_home

#: Task slots (one per core) and memory the worker offers; an executor takes Spark's default 1 GiB heap.
WORKER_CORES = 2
WORKER_MEMORY = "3g"
#: Seconds to wait for the master to come up with the worker registered (about 15 s on 2 cores).
START_TIMEOUT_S = 120.0


@dataclass
class StandaloneCluster:
    """A running master and worker: where to reach them and the environment a driver needs."""

    master_url: str
    """``spark://127.0.0.1:<port>``: the value of ``--set spark.master=``."""
    webui_url: str
    """``http://127.0.0.1:<port>`` of the master: ``/json/`` lists workers and applications."""
    work_dir: Path
    """The worker's folder: one ``<app id>/<executor id>/`` (stdout, stderr, fetched jars) per executor."""
    driver_env: dict[str, str]
    """Environment for a driver process: binds to 127.0.0.1, executors run this interpreter."""
    daemons: list[Daemon] = field(default_factory=list)

    def state(self) -> dict:
        """The master's state (``/json/``): workers, active and completed applications."""
        with urllib.request.urlopen(f"{self.webui_url}/json/", timeout=10) as response:
            return json.load(response)

    def logs(self) -> str:
        return "\n".join(f"--- {d.name} ({d.log}):\n{log_tail(d.log)}" for d in self.daemons)


def _wait_for_worker(cluster: StandaloneCluster) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        for daemon in cluster.daemons:
            if daemon.proc.poll() is not None:
                raise RuntimeError(f"Spark {daemon.name} exited with {daemon.proc.returncode}:\n{cluster.logs()}")
        try:
            state = cluster.state()
        except (OSError, urllib.error.URLError, ValueError):
            state = {}
        alive = [w for w in state.get("workers", []) if w.get("state") == "ALIVE"]
        if alive and alive[0].get("cores") == WORKER_CORES:
            return
        time.sleep(1.0)
    raise RuntimeError(f"No worker registered with the master within {START_TIMEOUT_S:.0f} s:\n{cluster.logs()}")


@pytest.fixture(scope="session")
def standalone_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandaloneCluster]:
    """Start a master and a worker on 127.0.0.1, wait until the worker is registered, stop both at the end."""
    root = tmp_path_factory.mktemp("spark-cluster")
    for folder in ("conf", "logs", "work", "local"):
        (root / folder).mkdir()
    home = spark_home()
    spark_class = str(home / "bin" / "spark-class")
    env = {
        **os.environ,
        "SPARK_HOME": str(home),
        "SPARK_CONF_DIR": str(root / "conf"),  # empty: none of this machine's Spark settings
        "SPARK_LOG_DIR": str(root / "logs"),
        "SPARK_LOCAL_DIRS": str(root / "local"),  # the executors' shuffle and block files
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,
        # The master's REST submission server would take the fixed port 6066.
        "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",
    }
    port, webui = free_port(), free_port()
    cluster = StandaloneCluster(
        master_url=f"spark://127.0.0.1:{port}",
        webui_url=f"http://127.0.0.1:{webui}",
        work_dir=root / "work",
        driver_env={"SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable},
    )
    try:
        cluster.daemons.append(
            Daemon.start(
                "master",
                [spark_class, "org.apache.spark.deploy.master.Master"]
                + ["--host", "127.0.0.1", "--port", str(port), "--webui-port", str(webui)],
                env=env,
                log=root / "master.log",
            )
        )
        cluster.daemons.append(
            Daemon.start(
                "worker",
                [spark_class, "org.apache.spark.deploy.worker.Worker", cluster.master_url]
                + ["--host", "127.0.0.1", "--cores", str(WORKER_CORES), "--memory", WORKER_MEMORY]
                + ["--webui-port", str(free_port()), "--work-dir", str(cluster.work_dir)],
                env=env,
                log=root / "worker.log",
            )
        )
        _wait_for_worker(cluster)
        yield cluster
    finally:
        # The worker first: it ends its executors; then the master.
        left = {d.name: pids for d in reversed(cluster.daemons) if (pids := d.stop())}
        assert not left, f"processes of the Spark daemons still running after SIGKILL: {left}"
