"""Shared by the benchmarks: result files, timing and process-tree memory sampling (Linux /proc)."""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
WORK = Path(os.environ.get("RADLAKE_BENCH_DIR", Path(__file__).resolve().parents[1] / ".radlake" / "bench"))


def machine() -> dict:
    """Where a result was measured: the CPU's model matters (torch's kernels differ by vector unit)."""
    return {
        "cpus": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _cpu_model() -> str:
    """The CPU's model name and vector extensions from /proc/cpuinfo (Linux), else platform's word for it."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    first_cpu = text.split("\n\n", 1)[0]  # every processor's block repeats the same model and flags
    fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in first_cpu.splitlines() if ":" in line)}
    vector = [f for f in ("avx2", "avx512f", "amx_tile") if f in fields.get("flags", "").split()]
    return " ".join([fields.get("model name", platform.processor()), *vector]).strip()


def write_result(name: str, result: dict) -> dict:
    """Print ``result`` as JSON and keep it as ``bench/results/<name>.json``."""
    result = {"benchmark": name, "finished_at": datetime.now(UTC).isoformat(timespec="seconds"), **result}
    result.setdefault("machine", machine())
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2, sort_keys=False)
    (RESULTS / f"{name}.json").write_text(text + "\n")
    print(text)
    return result


_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def _read(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("ascii", "replace")
    except OSError:
        return ""


def _processes() -> dict[int, tuple[int, str]]:
    """Every process on the machine: pid -> (parent pid, name), from one read of each ``/proc/<pid>/stat``.

    One file a process, not one a thread: the JVM alone runs a hundred threads, and reading each
    thread's ``children`` list five times a second cost several CPU-seconds a run, taken from the
    run being measured.
    """
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _read(f"/proc/{entry}/stat")
            name_end = stat.rfind(")")
            if name_end > 0:  # "pid (name) state ppid ..."; the name may hold spaces and parentheses
                found[int(entry)] = (int(stat[name_end + 2 :].split()[1]), stat[stat.find("(") + 1 : name_end])
    return found


def _rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` (``/proc/<pid>/statm``'s resident pages, as ``VmRSS``); 0 if it is gone."""
    fields = _read(f"/proc/{pid}/statm").split()
    return int(fields[1]) * _PAGE_BYTES if len(fields) > 1 else 0


class TreeMemory:
    """Samples the resident memory of this process and all its descendants (the JVM, Python workers).

    ``peak_bytes`` is the largest sum seen; ``peak_by_name`` the largest RSS per process name
    (e.g. ``java`` is Spark's driver and, in local mode, its executors).
    """

    def __init__(self, interval_s: float = 0.2, root: int | None = None) -> None:
        self.interval_s = interval_s
        self.root = root or os.getpid()
        self.peak_bytes = 0
        self.peak_by_name: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            processes = _processes()
            children: dict[int, list[int]] = {}
            for pid, (parent, _) in processes.items():
                children.setdefault(parent, []).append(pid)
            pids, frontier = [self.root], [self.root]
            while frontier:
                frontier = [kid for pid in frontier for kid in children.get(pid, [])]
                pids.extend(frontier)
            total = 0
            by_name: dict[str, int] = {}
            for pid in pids:
                rss = _rss_bytes(pid)
                total += rss
                if pid in processes:
                    name = processes[pid][1]
                    by_name[name] = by_name.get(name, 0) + rss
            self.peak_bytes = max(self.peak_bytes, total)
            for name, rss in by_name.items():
                self.peak_by_name[name] = max(self.peak_by_name.get(name, 0), rss)
            self._stop.wait(self.interval_s)


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


#: The benchmarks' archives keep one site's look (the generator's defaults before it drew a site per
#: study: SNR 10-40, 240-340 mm, blur 0.6 px, no contrast change), so that their figures compare with
#: earlier runs; the matrix is fixed by each benchmark's ``image_size``.
SINGLE_SITE = {"snr": (10.0, 40.0), "fov_mm": (240.0, 340.0), "blur_px": (0.6, 0.6), "contrast_gamma": (1.0, 1.0)}


def synthetic_archive(config, name: str) -> Path:
    """``WORK/<name>``: the synthetic archive of ``config`` (a ``SynthConfig``), generated once and reused."""
    import shutil

    from radlake.synth.archive import generate_archive

    out = WORK / name
    labels = out / "labels.json"
    if labels.is_file() and json.loads(labels.read_text()).get("config") == config.model_dump(mode="json"):
        return out
    if out.exists():
        shutil.rmtree(out)
    generate_archive(out, config, workers=os.cpu_count() or 2)
    return out
