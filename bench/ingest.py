"""Ingest benchmark: radlake's Spark job against the limit (a bare 2-process loop) and the peer (pixels-style).

All three run on the same synthetic archive (384x384, 16-bit, no zip files), each in its
own process so that start-up and memory are measured cleanly. The archive mixes five
transfer syntaxes (explicit and implicit VR, RLE, JPEG-LS, JPEG 2000), as the demo's does:

- ``limit``: ``multiprocessing`` with 2 processes doing the same per-file work as radlake
  (read, parse + de-identify the header with DICOM JSON, decode the sagittal MR frames,
  rescale) and writing the same columns to Parquet with pyarrow (the pixels with the codec of
  radlake's images table, ``ingest.images_compression``);
- ``peer``: Databricks' pixels accelerator approach on ``local[2]`` (pyspark's own Python
  worker daemon, as on any Spark; radlake's imports pydicom once): ``binaryFile`` listing,
  ``mapInPandas`` with ``dcmread(defer_size=1000, stop_before_pixels=True)`` and
  ``to_json_dict()``, appended to a Delta table (headers only, no pixels);
- ``radlake``: ``run_ingest`` on ``local[2]`` (header + pixels + series + de-identification),
  then a no-op re-run; and once more on a quarter of the files for the memory scaling;
- ``radlake_headers_only``: ``run_ingest`` with an image rule that selects nothing
  (``1 = 0``): the same work as the peer plus series, de-identification and the ledger,
  to show how much of the gap to the peer is pixel decoding.

Each contender starts with the archive in the OS page cache (:func:`warm_page_cache`), so
that the figures compare the work, not which run found its input on disk.

The limit, the peer and radlake run in interleaved rounds (``--rounds``, default 2), and each
reports its fastest run with every run's time beside it: noise on a shared machine only adds
time, and interleaving spreads a slow spell over all three. Each run's output is deleted
after it, so that the next starts with as much free memory.

They also run, in the same way, on an uncompressed copy of the same archive
(every compressed instance rewritten as Explicit VR Little Endian, same UIDs and pixels),
the setting in which the issue's own reference figures were taken (2,000 uncompressed 384²
files: the bare loop ~4x the pixels-style job). The limit also reports the CPU seconds its
decoder spent per transfer syntax: half their sum is the least wall time any 2-core
pipeline needs for decoding alone, which the peer (headers only) never spends.

``peer_vs_limit_files_per_s`` shows what "faster than the peer" asks of radlake on each
archive: at least that fraction of the limit's speed. ``met`` checks every target on the
archive it is stated for.

Run: ``python -m bench ingest [--files 10000]``.
"""

from __future__ import annotations

import argparse
import json
import math
import operator
import os
import shutil
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

from bench.common import SINGLE_SITE, WORK, Timer, TreeMemory, synthetic_archive, write_result
from radlake.config import IngestConfig

#: The targets, on both archives: (comparison, bound) of a ratio in ``ratios``. Issue 26 raised two of
#: the first ones (0.5 of the limit, faster than the peer) once ``images`` kept the stored integers:
#: 0.8 of the limit on the uncompressed archive, 1.3x the peer on the mixed one.
TARGETS: dict[str, tuple[str, float]] = {
    "radlake_vs_limit_files_per_s": (">=", 0.5),
    "radlake_vs_limit_files_per_s_uncompressed": (">=", 0.8),
    "radlake_vs_peer_files_per_s": (">=", 1.3),
    "radlake_vs_peer_files_per_s_uncompressed": (">", 1.0),
    "rerun_vs_first_run_time": ("<=", 0.10),
    "peak_memory_growth_4x_files": ("<=", 0.25),
}

#: pyarrow's name for radlake's default ``ingest.images_compression``, so that the limit writes the same bytes.
IMAGES_CODEC = {"lz4_raw": "lz4"}.get(codec := IngestConfig().images_compression, codec)

FILES_PER_STUDY = 22  # 15 sagittal + 4 axial + 3 coronal slices with the default SynthConfig


def ensure_archive(studies: int, *, image_size: int = 384) -> Path:
    """The benchmark archive for ``studies`` studies, generated once and reused."""
    from radlake.synth.params import SynthConfig

    config = SynthConfig(studies=studies, seed=2024, image_size=image_size, zip_fraction=0.0, **SINGLE_SITE)
    return synthetic_archive(config, f"ingest-archive-{studies}x{image_size}")


def _decompress_one(paths: tuple[str, str]) -> bool:
    """Copy one file, rewriting a compressed instance uncompressed; True if it was rewritten."""
    import pydicom

    source, target = paths
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(source, force=True)
    if "TransferSyntaxUID" not in ds.file_meta or not ds.file_meta.TransferSyntaxUID.is_compressed:
        shutil.copyfile(source, target)
        return False
    ds.decompress(generate_instance_uid=False)  # same SOP Instance UID and pixels
    ds.save_as(target, enforce_file_format=False)
    return True


def ensure_uncompressed(archive: Path) -> Path:
    """``<archive>-uncompressed``: every file of ``archive``, compressed instances rewritten uncompressed.

    Made once with 2 processes and reused; ``.complete`` marks a finished copy.
    """
    from multiprocessing import get_context

    out = archive.with_name(archive.name + "-uncompressed")
    done = out / ".complete"
    labels = archive / "labels.json"
    if done.is_file() and done.read_text() == labels.read_text():
        return out
    if out.exists():
        shutil.rmtree(out)
    files = [p for p in sorted(archive.rglob("*")) if p.is_file()]
    pairs = [(str(p), str(out / p.relative_to(archive))) for p in files]
    with get_context("spawn").Pool(2) as pool:
        pool.map(_decompress_one, pairs, chunksize=64)
    done.write_text(labels.read_text())
    return out


def _limit_worker(paths: list[str], out_file: str) -> tuple[int, dict[str, list[float]]]:
    """The limit's work on ``paths``; returns (files, {transfer syntax: [frames, decode CPU seconds]})."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    from radlake.dicom.deid import Deidentifier
    from radlake.dicom.header import parse_header
    from radlake.dicom.pixels import encoded_frames

    deid = Deidentifier(b"bench-key")
    headers, images = [], []
    decode: dict[str, list[float]] = {}
    for path in paths:
        data = Path(path).read_bytes()
        result = parse_header(data, deid=deid)
        if result.error is not None:
            continue
        cols = result.columns
        headers.append(
            {"path": path, "sha": hashlib.sha256(data).hexdigest(), "header_json": result.header_json, **cols}
        )
        if cols.get("modality") == "MR" and cols.get("plane") == "SAGITTAL":
            spent = decode.setdefault(str(cols.get("transfer_syntax_uid")), [0, 0.0])
            frames = encoded_frames(data)  # radlake's own decode + storage encoding, timed per frame
            while True:
                cpu = time.process_time()
                frame = next(frames, None)
                spent[1] += time.process_time() - cpu
                if frame is None:
                    break
                spent[0] += 1
                if frame.error is None:
                    images.append(
                        {
                            "sop": cols["sop_instance_uid"],
                            "frame": frame.frame_index,
                            "dtype": frame.dtype,
                            "pixels": frame.pixels,
                            **frame.transform,
                        }
                    )
    pq.write_table(pa.Table.from_pylist(headers), out_file + ".headers.parquet")
    # The pixels with the Parquet codec radlake's images table uses by default, the headers with pyarrow's.
    pq.write_table(pa.Table.from_pylist(images), out_file + ".images.parquet", compression=IMAGES_CODEC)
    return len(paths), decode


def run_limit(archive: Path, out: Path) -> dict:
    from multiprocessing import get_context

    with TreeMemory() as memory, Timer() as timer:
        paths = sorted(str(p) for p in archive.rglob("*") if p.is_file() and p.name != "labels.json")
        chunks = [paths[i::8] for i in range(8)]
        out.mkdir(parents=True, exist_ok=True)
        with get_context("spawn").Pool(2) as pool:
            parts = pool.starmap(_limit_worker, [(c, str(out / f"part{i}")) for i, c in enumerate(chunks)])
    done = sum(n for n, _ in parts)
    decode: dict[str, dict[str, float]] = {}
    for _, spent in parts:
        for syntax, (frames, seconds) in spent.items():
            entry = decode.setdefault(syntax, {"frames": 0, "cpu_seconds": 0.0})
            entry["frames"] += frames
            entry["cpu_seconds"] += seconds
    for entry in decode.values():
        entry["ms_per_frame"] = 1000 * entry["cpu_seconds"] / max(1, entry["frames"])
    return {
        "files": done,
        "seconds": timer.seconds,
        "files_per_s": done / timer.seconds,
        "peak_rss_mb": memory.peak_bytes / 2**20,
        "decode_by_transfer_syntax": dict(sorted(decode.items())),
        "decode_floor_seconds_2_cores": sum(e["cpu_seconds"] for e in decode.values()) / 2,
    }


def _peer_parse(batches):
    import io

    import pandas as pd
    import pydicom

    for batch in batches:
        rows = []
        for path, content in zip(batch["path"], batch["content"], strict=True):
            try:
                ds = pydicom.dcmread(io.BytesIO(content), defer_size=1000, stop_before_pixels=True)
                rows.append({"path": path, "meta": json.dumps(ds.to_json_dict())})
            except Exception as exc:  # noqa: BLE001
                rows.append({"path": path, "meta": json.dumps({"error": str(exc)})})
        yield pd.DataFrame(rows, columns=["path", "meta"])


def _spark(root: Path, *overrides: str, worker_preload: tuple[str, ...] = ()):
    """A ``local[2]`` session with radlake's settings; ``worker_preload`` as ``get_spark`` takes it.

    ``radlake ingest`` starts its session with ``NO_MODEL_PRELOAD`` (radlake's worker daemon,
    pydicom imported once); the peer runs on pyspark's own worker daemon (``()``), as it would
    on any Spark.
    """
    from radlake.config import load_config
    from radlake.spark import get_spark

    config = load_config(
        overrides=[f"storage.root={root}", "spark.master=local[2]", "spark.shuffle_partitions=2", *overrides]
    )
    with Timer() as startup:
        spark = get_spark(config, worker_preload=worker_preload)
        spark.range(1).count()
    return spark, config, startup.seconds


def run_peer(archive: Path, root: Path) -> dict:
    with TreeMemory() as memory:
        spark, _, startup = _spark(root)
        with Timer() as timer:
            df = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(str(archive))
            df = df.where("NOT path LIKE '%labels.json'")
            parsed = df.select("path", "content").mapInPandas(_peer_parse, "path string, meta string")
            parsed.write.format("delta").mode("append").save(str(root / "peer_table"))
        files = spark.read.format("delta").load(str(root / "peer_table")).count()
        spark.stop()
    return {
        "files": files,
        "spark_startup_seconds": startup,
        "seconds": timer.seconds,
        "files_per_s": files / timer.seconds,
        "peak_rss_mb": memory.peak_bytes / 2**20,
    }


def run_radlake(archive: Path, root: Path, overrides: tuple[str, ...] = ()) -> dict:
    from radlake.ingest.job import run_ingest
    from radlake.worker_daemon import NO_MODEL_PRELOAD

    os.environ.setdefault("RADLAKE_DEID_KEY", "bench-key")
    with TreeMemory() as memory:
        spark, config, startup = _spark(root, *overrides, worker_preload=NO_MODEL_PRELOAD)
        with Timer() as first:
            summary = run_ingest(spark, config, archive=str(archive))
        with Timer() as again:
            rerun = run_ingest(spark, config, archive=str(archive))
        spark.stop()
    files = summary.files_ingested
    return {
        "files": files,
        "spark_startup_seconds": startup,
        "seconds": first.seconds,
        "files_per_s": files / first.seconds,
        "rerun_seconds": again.seconds,
        "rerun_new_instances": rerun.new_instances,
        "summary": summary.as_dict(),
        "peak_rss_mb": memory.peak_bytes / 2**20,
        "peak_rss_by_process_mb": {k: round(v / 2**20, 1) for k, v in memory.peak_by_name.items()},
    }


def warm_page_cache(archive: Path) -> None:
    """Read every file of ``archive`` once, into the OS page cache.

    Every contender reads the whole archive. Without this, whichever runs after another's
    gigabytes of output reads part of it from disk, while that output is still being written
    back: on this machine one header pass took 11 s in one run and 36 s in the next, with
    the same code and files, the slow one just after a run that wrote 2.3 GB.
    """
    for path in archive.rglob("*"):
        if path.is_file():
            with path.open("rb", buffering=0) as handle:
                while handle.read(8 << 20):
                    pass


def _in_subprocess(mode: str, archive: Path, root: Path) -> dict:
    if root.exists():
        shutil.rmtree(root)
    os.sync()  # the previous contender's output is on disk, not still being written back during this run
    warm_page_cache(archive)
    command = [sys.executable, "-m", "bench.ingest", "--mode", mode, "--archive", str(archive), "--root", str(root)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        raise RuntimeError(f"bench ingest --mode {mode} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _best_of(runs: list[dict]) -> dict:
    """The fastest of ``runs`` (each one contender's measurement), with every run's time kept.

    On a shared 2-core machine, noise only ever adds time (the same run took 38 to 50 s
    here), so the least time is the closest to what the work costs, as ``timeit`` does.
    The peak memory kept is the largest of all runs, and so is a re-run's share of its
    first run's time: those are bounded from above, so the worst run is the one to check.
    """
    best = dict(min(runs, key=lambda run: run["seconds"]))
    best["seconds_all_rounds"] = [round(run["seconds"], 2) for run in runs]
    best["peak_rss_mb"] = max(run["peak_rss_mb"] for run in runs)
    if "rerun_seconds" in best:
        best["rerun_vs_first_run_time_worst"] = max(run["rerun_seconds"] / run["seconds"] for run in runs)
    return best


def _rounds(archive: Path, suffix: str, rounds: int) -> tuple[dict, dict, dict]:
    """The limit, the peer and radlake on ``archive``, interleaved, ``rounds`` times; each its best run.

    Interleaving spreads any slow spell of the machine over all three contenders instead
    of landing it on whichever ran last.
    """
    runs: dict[str, list[dict]] = {"limit": [], "peer": [], "radlake": []}
    roots = {"limit": "limit-out", "peer": "peer-root", "radlake": "radlake-root"}
    for _ in range(rounds):
        for mode, found in runs.items():
            root = WORK / f"{roots[mode]}{suffix}"
            found.append(_in_subprocess(mode, archive, root))
            shutil.rmtree(root, ignore_errors=True)  # read no more: the next contender starts with as much free memory
    return _best_of(runs["limit"]), _best_of(runs["peer"]), _best_of(runs["radlake"])


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(prog="bench ingest")
    parser.add_argument("--files", type=int, default=10_000, help="at least this many DICOM files (384x384, 16-bit)")
    parser.add_argument(
        "--rounds", type=int, default=2, help="interleaved runs of each contender per archive; each reports its best"
    )
    parser.add_argument("--mode", choices=["limit", "peer", "radlake", "radlake_headers"], help=argparse.SUPPRESS)
    parser.add_argument("--archive", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.mode:  # one measurement, in this fresh process
        runner = {
            "limit": run_limit,
            "peer": run_peer,
            "radlake": run_radlake,
            "radlake_headers": partial(run_radlake, overrides=("ingest.image_rule=1 = 0",)),
        }[args.mode]
        print(json.dumps(runner(Path(args.archive), Path(args.root))))
        return None

    studies = math.ceil(args.files / FILES_PER_STUDY)
    t0 = time.perf_counter()
    archive = ensure_archive(studies)
    quarter = ensure_archive(max(1, studies // 4))
    generate_s = time.perf_counter() - t0
    plain = ensure_uncompressed(archive)
    limit, peer, ours = _rounds(archive, "", args.rounds)
    plain_limit, plain_peer, plain_ours = _rounds(plain, "-uncompressed", args.rounds)
    small = _in_subprocess("radlake", quarter, WORK / "radlake-root-quarter")
    headers = _in_subprocess("radlake_headers", archive, WORK / "radlake-root-headers")
    memory_growth = ours["peak_rss_mb"] / small["peak_rss_mb"] - 1
    result = {
        "files": ours["files"],
        "image_size": 384,
        "rounds": args.rounds,
        "archive_generation_seconds": round(generate_s, 1),
        "limit": limit,
        "peer": peer,
        "radlake": ours,
        "radlake_quarter_files": small,
        "radlake_headers_only": headers,
        "uncompressed": {"limit": plain_limit, "peer": plain_peer, "radlake": plain_ours},
        "ratios": {
            "radlake_vs_limit_files_per_s": ours["files_per_s"] / limit["files_per_s"],
            "radlake_vs_peer_files_per_s": ours["files_per_s"] / peer["files_per_s"],
            "rerun_vs_first_run_time": ours["rerun_vs_first_run_time_worst"],
            "peak_memory_growth_4x_files": memory_growth,
            "peer_vs_limit_files_per_s": peer["files_per_s"] / limit["files_per_s"],
            "radlake_headers_only_vs_peer_files_per_s": headers["files_per_s"] / peer["files_per_s"],
            "radlake_vs_limit_files_per_s_uncompressed": plain_ours["files_per_s"] / plain_limit["files_per_s"],
            "radlake_vs_peer_files_per_s_uncompressed": plain_ours["files_per_s"] / plain_peer["files_per_s"],
            "peer_vs_limit_files_per_s_uncompressed": plain_peer["files_per_s"] / plain_limit["files_per_s"],
            # radlake without pixels plus the least decoding time, against the peer (>= 1: cannot win)
            "headers_only_plus_decode_floor_vs_peer_time": (headers["seconds"] + limit["decode_floor_seconds_2_cores"])
            / peer["seconds"],
        },
    }
    result["targets"] = {name: f"{op} {bound}" for name, (op, bound) in TARGETS.items()}
    compare = {">=": operator.ge, "<=": operator.le, ">": operator.gt}
    result["met"] = {name: compare[op](result["ratios"][name], bound) for name, (op, bound) in TARGETS.items()}
    return write_result("ingest", result)


if __name__ == "__main__":
    main()
