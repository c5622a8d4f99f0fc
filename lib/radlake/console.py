"""What a ``radlake`` command prints, and where everything else goes.

A command prints radlake's own lines: one per step (what it is doing), a progress figure
for long steps (files, frames, epochs, trials) and, in front of each line, the time since
the command started; then its summary. Everything else that used to reach the terminal
goes to a log file, ``<storage.root>/logs/radlake-<date>-<time>-<pid>.log``, whose path is
the command's first line:

- Python warnings and the ``logging`` of the libraries (MLflow, py4j, pyspark, torch, ...);
- progress bars (MLflow's artifact downloads are switched off: their thousands of updates
  help nobody, not even in a log);
- what the processes the command starts write: the Spark JVM (log4j, Java's own start-up
  warnings) and its Python workers, ``torchrun`` and the training processes (through
  ``TorchDistributor``), sweep trials, synthetic-archive workers.

``radlake COMMAND --verbose`` leaves all of that on the terminal, as it was, beside
radlake's lines; there is then no log file. On Databricks the command line redirects
nothing either: the runtime owns the process's output and logging.

How (:func:`command_console`, used by :func:`radlake.cli.main` only): file descriptors 1
and 2 are pointed at the log for the length of the command, so that every process
started meanwhile inherits it, and so are ``sys.stdout`` and ``sys.stderr``; radlake's
lines go to a copy of the terminal taken first. Everything is put back when the command
ends, before an error or a traceback is printed.

Library code configures nothing, at import or later: it logs its lines to the ``radlake``
logger (:func:`say`, :class:`Progress`) and warns the user with :class:`RadlakeWarning`
(:func:`warn`). In a notebook, a Databricks job's own code or a test, where no command
console is installed, those are plain ``logging`` records and warnings, shown as the host
shows them (a ``RadlakeWarning`` once, like any warning), and :func:`polling` starts no
thread.

Example
-------
>>> say("ingest: %d files", 3)          # no console installed: an INFO record of logger 'radlake'
>>> with polling(lambda: None):         # no console: the block just runs
...     pass
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

#: The logger of radlake's own lines (and the parent of every ``radlake.*`` module logger).
LOGGER = "radlake"
_logger = logging.getLogger(LOGGER)

#: Environment variables set for the length of a quiet command (and inherited by its processes).
QUIET_ENVIRONMENT = {
    # MLflow's tqdm bar over artifact downloads: one update per file, over a thousand in the demo.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}

#: Seconds between two lines of one progress figure where a line cannot be redrawn in place.
PROGRESS_EVERY_S = 20.0
#: ... and where it can (an interactive terminal, with nothing else written to it).
PROGRESS_EVERY_S_TTY = 0.5

#: The format of the third-party ``logging`` records in the log file.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RadlakeWarning(UserWarning):
    """Something the user should know and can act on, said once in plain words (e.g. a key was created).

    On a command's console it is one line, ``warning: <message>``, never a source location.
    """


def warn(message: str, *, stacklevel: int = 2) -> None:
    """Warn the user: a :class:`RadlakeWarning` (a command's console shows it once, in plain words)."""
    warnings.warn(message, RadlakeWarning, stacklevel=stacklevel + 1)


def say(message: str, *args: Any) -> None:
    """One of radlake's own lines (``logging`` INFO of the ``radlake`` logger); a command's console shows it."""
    _logger.info(message, *args)


def echo(text: str = "", *, err: bool = False, end: str = "\n") -> None:
    """A command's result on the terminal (its summary, a table, JSON): stdout, or stderr with ``err``.

    Without a command console it is ``print``.
    """
    made = _console
    if made is None:
        print(text, file=sys.stderr if err else sys.stdout, end=end)
        return
    made.write(text + end, stream=made.err if err else made.out)


def active() -> bool:
    """Whether a command console is installed (:func:`command_console`): then progress is worth polling for."""
    return _console is not None


class Progress:
    """The progress figure of one long step: ``<what>: <done>/<total> <unit>`` and any detail.

    Each :meth:`update` is an INFO record of the ``radlake`` logger; a command's console
    redraws it in place on an interactive terminal, and elsewhere (a file, a pipe, or with
    ``--verbose``) writes at most one line every :data:`PROGRESS_EVERY_S` seconds. The
    last figure (:meth:`update` with ``final=True``) is always written.

    Example
    -------
    >>> progress = Progress("train vertebra", total=30, unit="epochs")
    >>> progress.update(3)
    """

    def __init__(self, what: str, *, total: int | None = None, unit: str = "") -> None:
        self.what, self.total, self.unit = what, total, unit
        self.key = f"{what}#{id(self)}"

    def text(self, done: int, total: int | None = None, detail: str = "") -> str:
        total = self.total if total is None else total
        figure = f"{done:,}/{total:,}" if total is not None else f"{done:,}"
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.what}: {figure}{unit}{f', {detail}' if detail else ''}"

    def update(self, done: int, total: int | None = None, detail: str = "", *, final: bool = False) -> None:
        _logger.info("%s", self.text(done, total, detail), extra={"radlake_progress": self.key, "radlake_final": final})


@contextmanager
def polling(report: Callable[[], None], every_s: float = 2.0) -> Iterator[None]:
    """Call ``report()`` every ``every_s`` seconds in a daemon thread while the block runs (and once at its end).

    Only under a command console (:func:`active`); otherwise the block runs alone. An
    exception in ``report`` is logged (DEBUG) and ends the polling, never the block.
    """
    if not active():
        yield
        return
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every_s):
            try:
                report()
            except Exception:  # noqa: BLE001 - a progress figure must never break the work it reports on
                _logger.debug("progress report failed", exc_info=True)
                return

    thread = threading.Thread(target=loop, name="radlake-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=every_s + 5)


def elapsed(seconds: float) -> str:
    """``83.4`` → ``'1:23'``; ``3725`` → ``'1:02:05'``."""
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def table(rows: list[list[Any]], header: list[str]) -> str:
    """``rows`` as a plain text table under ``header``: text left-aligned, numbers right-aligned."""
    cells = [[str(c) for c in header], *([("" if c is None else str(c)) for c in row] for row in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    numeric = [all(_is_number(row[i]) for row in rows if row[i] not in (None, "")) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(row, widths, numeric, strict=True)).rstrip()

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *(line(r) for r in cells[1:])])


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# The command console.


class _Redirect:
    """What ``sys.stdout`` / ``sys.stderr`` are during a quiet command: a stream that writes to ``target``.

    When the command ends its target goes back to the original stream, so that anything
    that kept a reference (a logging handler made during the command) writes there again.
    """

    def __init__(self, target: TextIO) -> None:
        self.target = target

    def write(self, text: str) -> int:
        return self.target.write(text)

    def flush(self) -> None:
        self.target.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.target.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)


@dataclass
class Console:
    """A command's console: where radlake's lines go (``out``: results; ``err``: steps, progress, warnings)."""

    out: TextIO
    err: TextIO
    #: The log file of a quiet command (None with ``--verbose``).
    log_path: Path | None
    log: TextIO | None
    #: Whether progress lines may be redrawn in place (an interactive terminal holding radlake's lines only).
    redraw: bool
    started: float = field(default_factory=time.perf_counter)
    _shown: dict[str, float] = field(default_factory=dict)
    _open_line: bool = False

    def line(self, text: str, *, stream: TextIO | None = None) -> None:
        """One line of radlake's own on the terminal (and in the log)."""
        self.write(text + "\n", stream=stream)

    def write(self, text: str, *, stream: TextIO | None = None) -> None:
        """``text`` on the terminal (``stream``, default the status stream) and in the log."""
        self._end_progress()
        stream = stream or self.err
        stream.write(text)
        stream.flush()
        if text.strip():
            self.to_log(text.rstrip("\n"))

    def to_log(self, text: str) -> None:
        if self.log is not None:
            stamp = datetime.now().strftime("%Y/%m/%d %H:%M:%S")
            self.log.write(f"{stamp} radlake: {text}\n")
            self.log.flush()

    def stamp(self) -> str:
        return f"[{elapsed(time.perf_counter() - self.started):>5}]"

    def progress(self, key: str, text: str, *, final: bool) -> None:
        now = time.perf_counter()
        every = PROGRESS_EVERY_S_TTY if self.redraw else PROGRESS_EVERY_S
        if not final and now - self._shown.get(key, -every) < every:
            return
        self._shown[key] = now
        if self.redraw:
            self.err.write(f"\r\x1b[K{text}" + ("\n" if final else ""))
            self.err.flush()
            self._open_line = not final
            if final or now - self._shown.get(f"{key}#log", -PROGRESS_EVERY_S) >= PROGRESS_EVERY_S:
                self._shown[f"{key}#log"] = now
                self.to_log(text)
        else:
            self.line(text)

    def _end_progress(self) -> None:
        if self._open_line:
            self.err.write("\r\x1b[K")
            self._open_line = False


class _ConsoleHandler(logging.Handler):
    """The ``radlake`` logger's records on a command's console: ``[m:ss] message``; warnings said as such."""

    def __init__(self, console: Console) -> None:
        super().__init__(logging.INFO)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.levelno >= logging.WARNING:
                text = f"{record.levelname.lower()}: {text}"
            if record.exc_info and record.levelno >= logging.ERROR:
                self.console.to_log(logging.Formatter().formatException(record.exc_info))
            text = f"{self.console.stamp()} {text}"
            key = getattr(record, "radlake_progress", None)
            if key is not None:
                self.console.progress(key, text, final=bool(getattr(record, "radlake_final", False)))
            else:
                self.console.line(text)
        except Exception:  # noqa: BLE001 - logging's contract: a handler never raises
            self.handleError(record)


#: The console of the command running in this process (None outside :func:`command_console`).
_console: Console | None = None


def log_file_path(root: Path, when: datetime | None = None) -> Path:
    """``<root>/logs/radlake-<YYYYmmdd-HHMMSS>-<pid>.log``: one file per command."""
    when = when or datetime.now()
    return Path(root) / "logs" / f"radlake-{when:%Y%m%d-%H%M%S}-{os.getpid()}.log"


@contextmanager
def command_console(log_root: Path | None, *, verbose: bool = False) -> Iterator[Console]:
    """Install a command's console for the block; see the module docstring.

    Parameters
    ----------
    log_root
        Folder under which ``logs/`` is made (the storage root); None, or ``verbose``: no
        log file and nothing redirected (radlake's lines still get their console).
    verbose
        Leave the libraries' and processes' output on the terminal, as it was.
    """
    global _console
    if _console is not None:  # a command run by another (nested main): the outer console holds
        yield _console
        return
    with ExitStack() as stack:
        quiet = log_root is not None and not verbose
        if quiet:
            log_path = _writable(log_file_path(log_root))
            log = stack.enter_context(open(log_path, "a", buffering=1, encoding="utf-8", errors="backslashreplace"))
            out, err = _terminal(sys.stdout, stack), _terminal(sys.stderr, stack)
            redraw = _interactive(err)
            stack.enter_context(_redirected(log))
            stack.enter_context(_environment(QUIET_ENVIRONMENT))
            stack.enter_context(_root_logging(log))
        else:
            log_path, log, out, err, redraw = None, None, sys.stdout, sys.stderr, False
        made = Console(out=out, err=err, log_path=log_path, log=log, redraw=redraw)
        stack.enter_context(_radlake_logging(made))
        stack.enter_context(_warnings_to(made))
        _console = made
        stack.callback(_clear_console)
        yield made


def _writable(path: Path) -> Path:
    """``path`` with its folder made; under the temporary folder when that cannot be made (a read-only root)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
    except OSError:
        fallback = Path(tempfile.gettempdir()) / "radlake-logs" / path.name
        fallback.parent.mkdir(parents=True, exist_ok=True)
        return fallback


def _clear_console() -> None:
    global _console
    if _console is not None:
        _console._end_progress()
    _console = None


def _terminal(stream: TextIO, stack: ExitStack) -> TextIO:
    """Where ``stream`` writes now, kept for radlake's lines: a copy of its descriptor if it is 1 or 2, else itself."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return stream  # not a file (a test's capture, a notebook): it is not redirected
    if fd not in (1, 2):
        return stream
    try:
        stream.flush()
        copy = open(  # noqa: SIM115 - closed by the stack
            os.dup(fd), "w", buffering=1, encoding=getattr(stream, "encoding", None) or "utf-8", errors="replace"
        )
    except OSError:  # a closed descriptor: keep the stream as it is
        return stream
    stack.callback(copy.close)
    return copy


def _interactive(stream: TextIO) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM", "") not in ("", "dumb")
    except (AttributeError, OSError, ValueError):
        return False


@contextmanager
def _redirected(log: TextIO) -> Iterator[None]:
    """Descriptors 1 and 2, ``sys.stdout`` and ``sys.stderr`` into ``log`` for the block."""
    saved_streams = (sys.stdout, sys.stderr)
    for stream in saved_streams:
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    saved_fds = {}
    for fd in (1, 2):
        try:
            saved_fds[fd] = os.dup(fd)
            os.dup2(log.fileno(), fd)
        except OSError:  # no such descriptor (a daemon): Python's streams are redirected all the same
            saved_fds.pop(fd, None)
    proxies = (_Redirect(log), _Redirect(log))
    sys.stdout, sys.stderr = proxies
    try:
        yield
    finally:
        for proxy in proxies:
            try:
                proxy.flush()
            except (OSError, ValueError):
                pass
        for fd, copy in saved_fds.items():
            os.dup2(copy, fd)
            os.close(copy)
        sys.stdout, sys.stderr = saved_streams
        for proxy, original in zip(proxies, saved_streams, strict=True):
            proxy.target = original


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def _root_logging(log: TextIO) -> Iterator[None]:
    """Third-party ``logging`` records into ``log``, with time, level and logger.

    The levels stay the loggers' own (the root's WARNING for most; a library that asks for INFO,
    as ``TorchDistributor`` does, gets its INFO lines into the log).
    """
    root = logging.getLogger()
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


@contextmanager
def _radlake_logging(made: Console) -> Iterator[None]:
    """The ``radlake`` logger's INFO records on the console (not also wherever the root logger sends them)."""
    handler = _ConsoleHandler(made)
    saved = (_logger.level, _logger.propagate)
    _logger.addHandler(handler)
    _logger.setLevel(logging.INFO)
    _logger.propagate = False
    try:
        yield
    finally:
        _logger.removeHandler(handler)
        _logger.setLevel(saved[0])
        _logger.propagate = saved[1]


@contextmanager
def _warnings_to(made: Console) -> Iterator[None]:
    """:class:`RadlakeWarning` once, in plain words, on the console; every other warning into the log."""
    said: set[str] = set()
    with warnings.catch_warnings():
        original = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
            if issubclass(category, RadlakeWarning):
                text = str(message)
                if text not in said:
                    said.add(text)
                    _logger.warning("%s", text)
            elif made.log is not None:
                made.log.write(warnings.formatwarning(message, category, filename, lineno, line))
            else:
                original(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield
