"""Running a decoder in a child process, so that a crash, a hang or a memory blow-up on a hostile file is that file's failure.

Compressed pixel data is decoded by native code (OpenJPEG, CharLS, libjpeg, a Rust RLE
decoder). Errors those libraries report are ordinary exceptions, but a segmentation
fault, an abort, an endless loop or an allocation of many gigabytes on crafted data is
not: in the Spark Python worker it would end the worker, fail the task and with it the
whole ingest (``local[*]`` does not retry a task; a cluster retries it on the same file
and fails again), or stall the job, or bring the executor down with the kernel's
out-of-memory killer.

:class:`Sandbox` keeps one long-lived child process (``python -m radlake.dicom.sandbox``)
per parent process and sends it one call at a time; the child streams back what the
target yields. What can go wrong in the child becomes a :class:`SandboxError` in the
parent, which starts a fresh child on the next call:

- the child ends (a signal such as SIGSEGV or SIGABRT, or an exit): :class:`ChildCrashed`;
- no item for ``timeout_s`` seconds (measured per item, so a long multi-frame file is
  fine as long as each frame comes in time; a new child's start-up and import of its
  target have their own :data:`START_TIMEOUT_S`): the child is killed, :class:`ChildTimeout`;
- the target raises, including ``MemoryError`` when the child's address space
  (``RLIMIT_AS``, set per call to its current size plus ``memory_headroom_bytes``) runs
  out: :class:`TargetRaised`, naming the exception's class. The child lives on.

Messages are length-prefixed pickles (protocol 5) over two pipes; the child's standard
output goes to ``/dev/null`` so that a library printing there cannot corrupt them. The
child is killed if its parent dies (Linux ``PR_SET_PDEATHSIG``) and exits when its
request pipe closes.

Example
-------
>>> box = Sandbox("radlake.dicom.integrity:decoded_size_bytes", timeout_s=60)
>>> list(box.call(512, 512, 1, 1, 16))  # a target's return value that is not an iterator is one item
[524288]
>>> box.close()

"""

from __future__ import annotations

import importlib
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["ChildCrashed", "ChildTimeout", "Sandbox", "SandboxError", "TargetRaised", "shared_sandbox"]

_LENGTH = struct.Struct("<Q")
_CHUNK = 1 << 20
_READY, _ITEM, _END, _RAISED = "ready", "item", "end", "raised"
#: Seconds a new child may take to start and import its target (not counted in ``timeout_s``).
START_TIMEOUT_S = 120.0


class SandboxError(RuntimeError):
    """A call in the child did not complete. ``error_class`` names why, for the quarantine."""

    error_class = "SandboxError"


class ChildCrashed(SandboxError):
    """The child process ended during the call (a signal, or an exit)."""

    error_class = "DecoderCrashed"


class ChildTimeout(SandboxError):
    """The child sent nothing for ``timeout_s`` seconds and was killed."""

    error_class = "DecoderTimeout"


class TargetRaised(SandboxError):
    """The target raised in the child; ``error_class`` is the exception's class name."""

    def __init__(self, error_class: str, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class


def _write_message(fd: int, obj: Any) -> None:
    payload = pickle.dumps(obj, protocol=5)
    _write_all(fd, memoryview(_LENGTH.pack(len(payload))))
    _write_all(fd, memoryview(payload))


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view[:_CHUNK]) :]


def _widen_pipes(*fds: int) -> None:
    """Linux: 1 MiB pipe buffers (default 64 KiB), so a frame crosses in a few reads, not dozens."""
    import fcntl

    for fd in fds:
        try:
            fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
        except OSError:  # not Linux, or over /proc/sys/fs/pipe-max-size: keep the default
            pass


def _read_exact(fd: int, size: int, deadline: float | None) -> bytearray:
    """``size`` bytes from ``fd``; EOFError if it closes first, TimeoutError past ``deadline`` (monotonic)."""
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    poller = None
    if deadline is not None:
        poller = select.poll()  # not select.select: no limit on descriptor numbers
        poller.register(fd, select.POLLIN)
    while got < size:
        if poller is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(remaining * 1000):
                raise TimeoutError
        n = os.readv(fd, [view[got : got + _CHUNK]])
        if n == 0:
            raise EOFError
        got += n
    return buf


def _read_message(fd: int, deadline: float | None = None) -> Any:
    (size,) = _LENGTH.unpack(_read_exact(fd, _LENGTH.size, deadline))
    return pickle.loads(_read_exact(fd, size, deadline))


def _resolve(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _exit_reason(returncode: int | None) -> str:
    if returncode is None:
        return "the decoding process stopped answering"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"the decoding process ended with {name}"
    return f"the decoding process exited with status {returncode}"


class Sandbox:
    """Calls of ``target`` (``"module:function"``) in one long-lived child process.

    Parameters
    ----------
    target: str
        The function to run in the child, as ``"module:function"``; it must be
        importable there (the child gets this process's ``sys.path``). Its arguments
        and what it yields must pickle. A return value that is not an iterator is sent
        as one item.
    timeout_s: float
        Seconds the child may take to send the next item (or the end) of a call.
    memory_headroom_bytes: int | None
        Address space the child may grow by during a call, beyond its size when the
        call arrives (which includes the call's arguments); None for no limit. Applied
        on Linux (``RLIMIT_AS``) only.

    Not thread-safe: one call at a time (each Python worker of Spark has its own).
    """

    def __init__(self, target: str, *, timeout_s: float, memory_headroom_bytes: int | None = None) -> None:
        if timeout_s <= 0:
            raise ValueError(f"Argument 'timeout_s' must be positive, got {timeout_s}.")
        module, _, name = target.partition(":")
        if not module or not name:
            raise ValueError(f"Argument 'target' must be 'module:function', got {target!r}.")
        self.target = target
        self.timeout_s = float(timeout_s)
        self.memory_headroom_bytes = memory_headroom_bytes
        self._proc: subprocess.Popen | None = None
        self._to_child = self._from_child = -1

    @property
    def pid(self) -> int | None:
        """The child's process id, or None when no child is running."""
        return self._proc.pid if self._proc is not None else None

    def call(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """Run ``target(*args, **kwargs)`` in the child; yield what it yields, in order.

        Raises
        ------
        ChildCrashed, ChildTimeout, TargetRaised
            As in the module docstring, after the items that did arrive. A generator
            closed before its end kills the child (it would still be sending).
        """
        self._start()  # a child that cannot start or import the target raises here
        finished = False
        try:
            try:
                _write_message(self._to_child, (args, kwargs))
            except OSError as exc:  # the child is gone (BrokenPipeError)
                raise self._crashed() from exc
            while True:
                try:
                    kind, value = _read_message(self._from_child, time.monotonic() + self.timeout_s)
                except TimeoutError:
                    self._stop(kill=True)
                    raise ChildTimeout(f"the decoding process sent nothing for {self.timeout_s:g} s") from None
                except EOFError:
                    raise self._crashed() from None
                if kind == _ITEM:
                    yield value
                elif kind == _END:
                    finished = True
                    return
                else:
                    finished = True
                    raise TargetRaised(*value)
        finally:
            if not finished:
                self._stop(kill=True)

    def close(self) -> None:
        """End the child (it exits when its request pipe closes)."""
        self._stop(kill=False)

    def _start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        self._stop(kill=True)
        request_r, request_w = os.pipe()
        reply_r, reply_w = os.pipe()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        headroom = "" if self.memory_headroom_bytes is None else str(int(self.memory_headroom_bytes))
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "radlake.dicom.sandbox", self.target, str(request_r), str(reply_w), headroom],
                pass_fds=(request_r, reply_w),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=env,
                close_fds=True,
            )
        finally:
            os.close(request_r)
            os.close(reply_w)
        self._to_child, self._from_child = request_w, reply_r
        _widen_pipes(request_w, reply_r)
        try:
            kind, value = _read_message(self._from_child, time.monotonic() + START_TIMEOUT_S)
        except TimeoutError:
            self._stop(kill=True)
            raise ChildTimeout(f"the decoding process did not start within {START_TIMEOUT_S:g} s") from None
        except EOFError:
            raise self._crashed() from None
        if kind != _READY:
            self._stop(kill=True)
            raise TargetRaised(*value)

    def _crashed(self) -> ChildCrashed:
        proc = self._proc
        try:
            returncode = proc.wait(timeout=5) if proc is not None else None
        except subprocess.TimeoutExpired:
            returncode = None
        self._stop(kill=True)
        return ChildCrashed(_exit_reason(returncode))

    def _stop(self, *, kill: bool) -> None:
        for fd in (self._to_child, self._from_child):
            if fd >= 0:
                os.close(fd)
        self._to_child = self._from_child = -1
        proc, self._proc = self._proc, None
        if proc is not None:
            if kill and proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=None if kill else 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


_SHARED: dict[tuple, Sandbox] = {}
_SHARED_LOCK = threading.Lock()


def shared_sandbox(target: str, *, timeout_s: float, memory_headroom_bytes: int | None = None) -> Sandbox:
    """This process's :class:`Sandbox` for these settings, created on first use and reused.

    A Spark Python worker is reused across tasks, so its child starts once, not per task.
    Nothing needs to close it: the child ends with this process (its request pipe
    closes, and on Linux the parent-death signal covers a child busy decoding).
    """
    key = (target, float(timeout_s), memory_headroom_bytes)
    with _SHARED_LOCK:
        box = _SHARED.get(key)
        if box is None:
            box = _SHARED[key] = Sandbox(target, timeout_s=timeout_s, memory_headroom_bytes=memory_headroom_bytes)
        return box


# --- the child -------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent ends (a hung decoder must not outlive it)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return


def _address_space_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _limit_memory(headroom: int | None) -> None:
    if headroom is None:
        return
    try:
        import resource
    except ImportError:  # not a Unix
        return
    current = _address_space_bytes()
    if current is None:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = current + headroom
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _serve(target: str, request_fd: int, reply_fd: int, headroom: int | None) -> None:
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:  # the parent ended before the death signal was armed
        return
    try:
        function = _resolve(target)
    except Exception as exc:  # noqa: BLE001 - told to the parent, which raises it from the call
        _write_message(reply_fd, (_RAISED, (type(exc).__name__, str(exc)[:1000] or type(exc).__name__)))
        return
    _write_message(reply_fd, (_READY, None))
    while True:
        try:
            args, kwargs = _read_message(request_fd)
        except EOFError:
            return
        _limit_memory(headroom)
        try:
            result = function(*args, **kwargs)
            if isinstance(result, Iterator):
                for item in result:
                    _write_message(reply_fd, (_ITEM, item))
            else:
                _write_message(reply_fd, (_ITEM, result))
            reply = (_END, None)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - the caller decides (a Rust panic too); the child serves on
            reply = (_RAISED, (type(exc).__name__, str(exc)[:1000] or type(exc).__name__))
        del args, kwargs
        _write_message(reply_fd, reply)


if __name__ == "__main__":
    _serve(
        sys.argv[1],
        int(sys.argv[2]),
        int(sys.argv[3]),
        int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[4] else None,
    )
