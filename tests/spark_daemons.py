"""Spark processes the tests start from pyspark's own ``bin/`` scripts, on 127.0.0.1.

Shared by the standalone cluster (``tests/cluster``) and the Spark Connect server
(``tests/connect``). A daemon leads a session and process group of its own, so that
stopping it also ends what it started (executor JVMs, Python workers, DDP processes,
decoder sandboxes); :meth:`Daemon.stop` says which processes of that session are left.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

#: Seconds a daemon's process group gets to end after SIGTERM, before SIGKILL.
STOP_TIMEOUT_S = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spark_home() -> Path:
    """The pyspark package folder: it has ``bin/spark-class``, ``bin/spark-submit`` and ``jars/``."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def session_pids(sid: int) -> list[int]:
    """Processes of session ``sid``: a daemon and every descendant that did not start a session of its own.

    pyspark's worker daemon moves itself into a process group of its own, but not into
    another session. Read from ``/proc`` (Linux); elsewhere only the session leader is seen.
    """
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


def wait_session_gone(sid: int, timeout_s: float) -> list[int]:
    """Wait up to ``timeout_s`` for session ``sid`` to end; the pids still in it."""
    deadline = time.monotonic() + timeout_s
    while (left := session_pids(sid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def log_tail(path: Path, chars: int = 4000) -> str:
    """The last ``chars`` characters of a log file ('' if there is none)."""
    return path.read_text(errors="replace")[-chars:] if path.is_file() else ""


@dataclass
class Daemon:
    """One Spark process (a master, a worker, a Connect server), leading a session and process group of its own."""

    name: str
    proc: subprocess.Popen
    log: Path

    @classmethod
    def start(cls, name: str, args: list[str], *, env: dict[str, str], log: Path) -> Daemon:
        """Start ``args`` with ``env``, standard output and error into ``log``."""
        with log.open("wb") as out:
            proc = subprocess.Popen(
                args, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return cls(name, proc, log)

    def logs(self, chars: int = 4000) -> str:
        """The end of its log."""
        return log_tail(self.log, chars)

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
        for pid in wait_session_gone(sid, STOP_TIMEOUT_S):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        return wait_session_gone(sid, STOP_TIMEOUT_S)


def run_command(command: list[str], *, cwd: Path, env: dict[str, str], out: Path, err: Path, timeout_s: float) -> int:
    """Run ``command`` in a session of its own, standard output and error into ``out`` and ``err``; its exit status.

    Past ``timeout_s`` seconds the whole session is killed and the test fails with the end of ``err``.
    """
    import pytest

    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"{' '.join(command[2:4])} ran past {timeout_s:g} s:\n{log_tail(err)}")
    return proc.returncode
