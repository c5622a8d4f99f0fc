"""Ingest benchmark: radlake's Spark job against the limit (a bare 2-process loop) and the peer (pixels-style).

All three run on the same synthetic archive (384x384, 16-bit, no zip files), each in its
own process so that start-up and memory are measured cleanly:

- ``limit``: ``multiprocessing`` with 2 processes doing the same per-file work as radlake
  (read, parse + de-identify the header with DICOM JSON, decode the sagittal MR frames,
  rescale) and writing the same columns to Parquet with pyarrow;
- ``peer``: Databricks' pixels accelerator approach on ``local[2]``: ``binaryFile`` listing,
  ``mapInPandas`` with ``dcmread(defer_size=1000, stop_before_pixels=True)`` and
  ``to_json_dict()``, appended to a Delta table (headers only, no pixels);
- ``radlake``: ``run_ingest`` on ``local[2]`` (header + pixels + series + de-identification),
  then a no-op re-run; and once more on a quarter of the files for the memory scaling;
- ``radlake_headers_only``: ``run_ingest`` with an image rule that selects nothing
  (``1 = 0``): the same work as the peer plus series, de-identification and the ledger,
  to show how much of the gap to the peer is pixel decoding.

Run: ``python -m bench ingest [--files 10000]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

from bench.common import WORK, Timer, TreeMemory, synthetic_archive, write_result

FILES_PER_STUDY = 22  # 15 sagittal + 4 axial + 3 coronal slices with the default SynthConfig


def ensure_archive(studies: int, *, image_size: int = 384) -> Path:
    """The benchmark archive for ``studies`` studies, generated once and reused."""
    from radlake.synth import SynthConfig

    config = SynthConfig(studies=studies, seed=2024, image_size=image_size, zip_fraction=0.0)
    return synthetic_archive(config, f"ingest-archive-{studies}x{image_size}")


def _limit_worker(paths: list[str], out_file: str) -> int:
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    from radlake.dicom.deid import Deidentifier
    from radlake.dicom.header import parse_header
    from radlake.dicom.pixels import decode_frames, encode_pixels

    deid = Deidentifier(b"bench-key")
    headers, images = [], []
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
            for frame in decode_frames(data):
                if frame.error is None:
                    buf, dtype = encode_pixels(frame.pixels)
                    images.append(
                        {"sop": cols["sop_instance_uid"], "frame": frame.frame_index, "dtype": dtype, "pixels": buf}
                    )
    pq.write_table(pa.Table.from_pylist(headers), out_file + ".headers.parquet")
    pq.write_table(pa.Table.from_pylist(images), out_file + ".images.parquet")
    return len(paths)


def run_limit(archive: Path, out: Path) -> dict:
    from multiprocessing import get_context

    with TreeMemory() as memory, Timer() as timer:
        paths = sorted(str(p) for p in archive.rglob("*") if p.is_file() and p.name != "labels.json")
        chunks = [paths[i::8] for i in range(8)]
        out.mkdir(parents=True, exist_ok=True)
        with get_context("spawn").Pool(2) as pool:
            done = sum(pool.starmap(_limit_worker, [(c, str(out / f"part{i}")) for i, c in enumerate(chunks)]))
    return {
        "files": done,
        "seconds": timer.seconds,
        "files_per_s": done / timer.seconds,
        "peak_rss_mb": memory.peak_bytes / 2**20,
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


def _spark(root: Path, *overrides: str):
    from radlake.config import load_config
    from radlake.spark import get_spark

    config = load_config(
        overrides=[f"storage.root={root}", "spark.master=local[2]", "spark.shuffle_partitions=2", *overrides]
    )
    with Timer() as startup:
        spark = get_spark(config)
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
    from radlake.ingest import run_ingest

    os.environ.setdefault("RADLAKE_DEID_KEY", "bench-key")
    with TreeMemory() as memory:
        spark, config, startup = _spark(root, *overrides)
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


def _in_subprocess(mode: str, archive: Path, root: Path) -> dict:
    if root.exists():
        shutil.rmtree(root)
    command = [sys.executable, "-m", "bench.ingest", "--mode", mode, "--archive", str(archive), "--root", str(root)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        raise RuntimeError(f"bench ingest --mode {mode} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(prog="bench ingest")
    parser.add_argument("--files", type=int, default=10_000, help="at least this many DICOM files (384x384, 16-bit)")
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
    limit = _in_subprocess("limit", archive, WORK / "limit-out")
    peer = _in_subprocess("peer", archive, WORK / "peer-root")
    ours = _in_subprocess("radlake", archive, WORK / "radlake-root")
    small = _in_subprocess("radlake", quarter, WORK / "radlake-root-quarter")
    headers = _in_subprocess("radlake_headers", archive, WORK / "radlake-root-headers")
    memory_growth = ours["peak_rss_mb"] / small["peak_rss_mb"] - 1
    result = {
        "files": ours["files"],
        "image_size": 384,
        "archive_generation_seconds": round(generate_s, 1),
        "limit": limit,
        "peer": peer,
        "radlake": ours,
        "radlake_quarter_files": small,
        "radlake_headers_only": headers,
        "ratios": {
            "radlake_vs_limit_files_per_s": ours["files_per_s"] / limit["files_per_s"],
            "radlake_vs_peer_files_per_s": ours["files_per_s"] / peer["files_per_s"],
            "rerun_vs_first_run_time": ours["rerun_seconds"] / ours["seconds"],
            "peak_memory_growth_4x_files": memory_growth,
            "radlake_headers_only_vs_peer_files_per_s": headers["files_per_s"] / peer["files_per_s"],
        },
        "targets": {
            "radlake_vs_limit_files_per_s": ">= 0.5",
            "radlake_vs_peer_files_per_s": "> 1.0",
            "rerun_vs_first_run_time": "<= 0.10",
            "peak_memory_growth_4x_files": "<= 0.25",
        },
    }
    return write_result("ingest", result)


if __name__ == "__main__":
    main()
