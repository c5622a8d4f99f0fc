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
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

#: Task slots (one per core) and memory the worker offers; an executor takes Spark's default 1 GiB heap.
WORKER_CORES = 2
WORKER_MEMORY = "3g"
#: Seconds to wait for the master to come up with the worker registered (about 15 s on 2 cores).
START_TIMEOUT_S = 120.0
#: Seconds a daemon's process group gets to end after SIGTERM, before SIGKILL.
STOP_TIMEOUT_S = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spark_home() -> Path:
    """The pyspark package folder: it has ``bin/spark-class`` and ``jars/``, a Spark distribution's layout."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def session_pids(sid: int) -> list[int]:
    """Processes of session ``sid``: a daemon and every descendant that did not start a session of its own.

    pyspark's worker daemon moves itself into a process group of its own, but not into
    another session. Read from ``/proc`` (Linux); elsewhere only the session leader is seen.
    """
    if not Path("/proc").is_dir():
        return [sid] if _exists(sid) else []
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    pids.append(int(entry.name))
            except ProcessLookupError:
                pass
    return pids


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_session_gone(sid: int, timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := session_pids(sid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def log_tail(path: Path, chars: int = 4000) -> str:
    """The last ``chars`` characters of a log file ('' if there is none)."""
    return path.read_text(errors="replace")[-chars:] if path.is_file() else ""


@dataclass
class Daemon:
    """One ``spark-class`` process (master or worker), leading a session and process group of its own."""

    name: str
    proc: subprocess.Popen
    log: Path

    @classmethod
    def start(cls, name: str, args: list[str], *, env: dict[str, str], log: Path) -> Daemon:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                args, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return cls(name, proc, log)

    def stop(self) -> list[int]:
        """SIGTERM its process group, then SIGKILL what is left of its session; return the pids still there.

        The JVM's shutdown hooks end what it started (a worker its executors, whose
        Python daemons and DDP processes end with them); whatever of the session is still
        running after :data:`STOP_TIMEOUT_S` is killed by pid.
        """
        sid = self.proc.pid  # start_new_session: the daemon leads its session and its process group
        try:
            os.killpg(sid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)  # reaped, so that the leader itself is not listed
        except subprocess.TimeoutExpired:
            pass
        left = _wait_session_gone(sid, STOP_TIMEOUT_S)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        return _wait_session_gone(sid, STOP_TIMEOUT_S)


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
