"""Clean stops: SIGTERM and SIGINT end a command's MLflow runs as KILLED, and it exits 143 or 130.

Every ``radlake`` command runs inside :func:`handle_stops` (:func:`radlake.cli.main`).
While it runs, SIGTERM raises :class:`Stopped` in the main thread, as SIGINT raises
:class:`KeyboardInterrupt` (``Stopped`` is one, so every ``except Exception`` lets it
through and every ``finally`` runs). The stop then unwinds the command like any
exception, with one difference for MLflow:

- a run opened with :func:`radlake.tracking.run_scope` ends KILLED (not FAILED, which is
  what ``with mlflow.start_run()`` writes for any exception), innermost first;
- on the way out, :func:`handle_stops` ends every run still on this process's active run
  stack KILLED (runs opened without a scope, and what a scope could not end);
- runs this process made through ``MlflowClient`` are ended by their owner: a sweep ends
  its trials KILLED, marked interrupted (:func:`radlake.train.sweep.stop_trials`), so that
  Optuna reads them as failed, not pruned, and the sweep resumes.

Child processes end with their parent: a sweep terminates its trial processes (each ends
its own trial the same way), ``TorchDistributor`` terminates ``torchrun`` and its workers,
and :func:`die_with_parent` makes sure a worker never outlives the process that started it.

A second signal during the unwinding raises again (to force a stop that hangs); while the
runs are being ended at the very end, further signals are ignored. Delta tables need
nothing here: a stop interrupts a write no worse than SIGKILL does, and radlake's writes
are safe against that (a commit is atomic; an interrupted ingest resumes without
duplicates).

Example
-------
>>> import signal
>>> from radlake.stops import Stopped, handle_stops
>>> try:
...     with handle_stops():
...         signal.raise_signal(signal.SIGTERM)
... except Stopped as stop:
...     print(stop.signal_name, stop.exit_code)
SIGTERM 143
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

#: The signals :func:`handle_stops` turns into :class:`Stopped`.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """The process was asked to stop by a signal (SIGTERM or SIGINT) while :func:`handle_stops` was active."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = int(signum)
        #: MLflow run ids that :func:`handle_stops` ended KILLED on the way out (runs ended by their
        #: :func:`radlake.tracking.run_scope` during the unwinding are not listed).
        self.ended_runs: list[str] = []

    @property
    def signal_name(self) -> str:
        """``SIGTERM``, ``SIGINT``, ... (``signal N`` for a number without a name)."""
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by the signal: 128 + its number (SIGINT 130, SIGTERM 143)."""
        return 128 + self.signum

    def __str__(self) -> str:
        return f"stopped by {self.signal_name}"


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signum)


@contextmanager
def handle_stops() -> Iterator[None]:
    """Run the block with SIGTERM and SIGINT raising :class:`Stopped`; a stop ends the open MLflow runs KILLED.

    The handlers are installed only in the main thread (Python delivers signals there);
    the previous handlers are restored on the way out. A ``KeyboardInterrupt`` raised by
    another SIGINT handler (PySpark's ``SparkContext`` installs one that cancels the Spark
    jobs first) counts as a stop by SIGINT.

    Raises
    ------
    Stopped
        When the block was stopped, after every run on this process's active MLflow run
        stack was ended KILLED (listed in ``ended_runs``).
    """
    in_main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in STOP_SIGNALS} if in_main else {}
    try:
        yield
    except KeyboardInterrupt as exc:
        stop = exc if isinstance(exc, Stopped) else Stopped(signal.SIGINT)
        if in_main:  # the last writes are short: let them finish
            for sig in STOP_SIGNALS:
                signal.signal(sig, signal.SIG_IGN)
        if "mlflow" in sys.modules:  # a command that never imported MLflow opened no run
            from radlake.tracking import end_active_runs

            stop.ended_runs = end_active_runs("KILLED")
        if stop is exc:
            raise
        raise stop from exc
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


#: ``prctl`` option: the signal this process gets when its parent ends (``<linux/prctl.h>``).
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Have the kernel send ``sig`` to this process when the process that started it ends (Linux only).

    For processes that must not outlive their launcher: a training worker whose
    ``torchrun`` was killed, a sweep's trial process whose driver was. If the parent is
    already gone when this is called, ``sig`` is sent at once.

    Returns
    -------
    bool
        True when armed; False where ``prctl`` is not available (not Linux).
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:  # the parent ended before the death signal was armed
        os.kill(os.getpid(), sig)
    return True
