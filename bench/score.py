"""Scoring benchmark: the detector pyfunc as a Spark UDF on ``local[2]`` against a plain torch loop (the limit).

Both sides run the same logged model (``build_detector(vertebra_spec(image_size=256))``,
seed 0, box distances started at ``REGRESSION_BIAS``, logged with ``log_detector`` into a
temporary sqlite MLflow store) on the same ``--images`` or more sagittal 384x384 frames of a
synthetic archive (``--images / 20`` studies of 20 sagittal slices, generated and ingested
once under ``.radlake/bench/``, reused by later runs):

- ``spark``: ``spark.read.format("delta")`` of the ``images`` table (pinned at its version)
  → ``detections_column(spark, uri, params={"batch_size": B, "score_threshold": S})`` (``mlflow.pyfunc.spark_udf``,
  ``env_manager="local"``) on ``local[2]``, with
  ``spark.sql.execution.arrow.maxRecordsPerBatch`` = ``--arrow-batch-size``. Every row goes
  through the UDF: the run is an aggregate (``count``, ``sum(size(detections))``) over its
  output. The first run (Python workers start and each loads the model) is timed apart
  from the warm runs.
- ``limit``: the fastest bare torch set-up of the same threads, in two layouts, both timed:
  one fresh process with ``torch.set_num_threads(T)``, T the threads the Spark side uses in
  all (concurrent tasks x ``torch.get_num_threads()`` probed inside the Python workers), and
  one fresh process per Spark task slot with a worker's threads, each scoring its share of the
  rows (rows i, i+n, ...) at the same time. Each has the rows as stored already read into
  memory as a pandas DataFrame and, in each timed pass, turns them into values as scoring does
  (``model_input_rows``: rescaled or inverted frames decoded) and calls
  ``predict_rows(model, spec, rows, batch_size=B)`` of :mod:`radlake.models.pyfunc` (``spec``
  with ``score_threshold=S``, as the pyfunc's ``predict`` makes it): the pyfunc's own decoding,
  pre- and post-processing, without Spark, Arrow or MLflow. The limit is the faster layout.

The Spark side reads ``images`` split as ``radlake score`` splits it
(``score.scan_tasks_per_slot`` tasks per slot, between the row groups that
``ingest.images_row_group_frames`` bounds); ``tail_idle_share`` is the share of the slots'
time left idle at the end when tasks run in order, each on the next free slot (cost
proportional to rows). The archive is ingested again when that layout changed.

Warm Spark runs and limit runs are alternated ``--repeats`` times (the limit processes stay
up, idle while Spark runs) and the best of each is kept, so that other load on a shared
machine hits both sides alike. Both sides must find the same number of detections.

The targets are ``warm spark / limit >= 0.8`` images per second and a tail idle under 3 %.

Run: ``python -m bench score [--images=2000] [--batch-size=8] [--arrow-batch-size=64]``
(options as ``--name=value``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import SINGLE_SITE, WORK, Timer, TreeMemory, _rss_bytes, synthetic_archive, write_result

SAGITTAL_SLICES = 20
IMAGE_SIZE = 384
MODEL_IMAGE_SIZE = 256
SAGITTAL = "plane = 'SAGITTAL'"


def ensure_sagittal_archive(images: int) -> Path:
    """A synthetic archive with at least ``images`` sagittal 384x384 frames, generated once and reused."""
    from radlake.synth.params import SynthConfig

    studies = math.ceil(images / SAGITTAL_SLICES)
    config = SynthConfig(
        studies=studies,
        seed=2024,
        image_size=IMAGE_SIZE,
        sagittal_slices=SAGITTAL_SLICES,
        axial_slices=1,  # the fewest the generator allows: only the sagittal frames are scored
        coronal_slices=1,
        zip_fraction=0.0,
        **SINGLE_SITE,
    )
    return synthetic_archive(config, f"score-archive-{studies}x{IMAGE_SIZE}")


def _spark(root: Path, *, arrow_batch_size: int):
    from radlake.config import load_config
    from radlake.spark import get_spark

    overrides = [f"storage.root={root}", "spark.master=local[2]", "spark.shuffle_partitions=2"]
    config = load_config(overrides=[*overrides, f"spark.arrow_batch_size={arrow_batch_size}"])
    with Timer() as startup:
        spark = get_spark(config)
        spark.range(1).count()
    return spark, config, startup.seconds


def ensure_ingested(spark, config, archive: Path, root: Path) -> float | None:
    """Ingest ``archive`` into ``root`` unless a previous run did; returns the ingest seconds (``None`` if reused)."""
    from radlake.ingest.job import run_ingest

    marker = root / "bench-ingested.json"
    if _ingested_as_now(root) and json.loads(marker.read_text()).get("archive") == str(archive):
        return None
    with Timer() as timer:
        summary = run_ingest(spark, config, archive=str(archive))
    layout = {"images_row_group_frames": config.ingest.images_row_group_frames}
    marker.write_text(json.dumps({"archive": str(archive), **layout, "summary": summary.as_dict()}))
    return round(timer.seconds, 1)


def _ingested_as_now(root: Path) -> bool:
    """True if ``root`` holds an ingest with today's layout of ``images`` (row groups), to be reused."""
    from radlake.config import load_config

    marker = root / "bench-ingested.json"
    if not marker.is_file():
        return False
    frames = load_config().ingest.images_row_group_frames
    return json.loads(marker.read_text()).get("images_row_group_frames") == frames


def ensure_rows_file(view, path: Path) -> Path:
    """The scored rows as one Parquet folder (as stored), for the limit process; written once per version."""
    if not (path / "_SUCCESS").is_file():
        if path.exists():
            shutil.rmtree(path)
        view.coalesce(1).write.parquet(str(path))
    return path


def log_model(store: Path, example) -> str:
    """Log the benchmark's detector into a sqlite store under ``store``; returns its model URI."""
    import mlflow
    import torch

    from radlake.models.detector import REGRESSION_BIAS, build_detector, vertebra_spec
    from radlake.models.pyfunc import log_detector

    mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
    experiment = mlflow.create_experiment("bench-score", artifact_location=(store / "artifacts").as_uri())
    spec = vertebra_spec(image_size=MODEL_IMAGE_SIZE)
    torch.manual_seed(0)
    model = build_detector(spec)
    # untrained FCOS: start the box distances at one anchor size, as the pyfunc tests do
    torch.nn.init.constant_(model.head.regression_head.bbox_reg.bias, REGRESSION_BIAS)
    with mlflow.start_run(experiment_id=experiment):
        return log_detector(model, spec, input_example=example).model_uri


def _probe_workers(batches):
    """Inside a Spark Python worker: its pid, torch threads, OMP_NUM_THREADS and what it has imported."""
    import pandas as pd

    had_mlflow = "mlflow" in sys.modules  # True in a reused worker that ran the pyfunc UDF
    import torch

    for batch in batches:
        yield pd.DataFrame(
            {
                "partition": batch["id"].astype("int64"),
                "pid": os.getpid(),
                "torch_threads": torch.get_num_threads(),
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
                "had_mlflow": had_mlflow,
            }
        )


def probe_workers(spark, parallelism: int) -> list[dict[str, Any]]:
    schema = "partition long, pid long, torch_threads long, omp_num_threads string, had_mlflow boolean"
    probe = spark.range(0, parallelism, numPartitions=parallelism).mapInPandas(_probe_workers, schema)
    return [r.asDict() for r in probe.orderBy("partition").collect()]


def _java_pid(spark) -> int | None:
    """The pid of Spark's JVM (driver and, in local mode, executors; its children are the Python workers)."""
    proc = getattr(getattr(spark.sparkContext, "_gateway", None), "proc", None)
    if proc is not None and Path(f"/proc/{proc.pid}/comm").is_file():
        return proc.pid
    return None


def spark_run(scored) -> dict[str, Any]:
    """One full pass of the UDF over ``scored`` (a frame with one ``n`` column: the number of detections per row)."""
    from pyspark.sql import functions as F

    with Timer() as timer:
        row = scored.agg(F.count("*").alias("images"), F.sum("n").alias("detections")).first()
    return {
        "images": row.images,
        "detections": row.detections,
        "seconds": round(timer.seconds, 2),
        "images_per_s": row.images / timer.seconds,
    }


# The limit: one plain process, rows in memory, predict_rows.


def limit_main(args: argparse.Namespace) -> None:
    """``--limit``: load rows and model, then answer each ``run`` line on stdin with one timed pass (JSON)."""
    from dataclasses import replace

    import mlflow
    import pandas as pd
    import torch

    from radlake.models.model_input import model_input_rows
    from radlake.models.pyfunc import predict_rows

    torch.set_num_threads(args.threads)
    rows = pd.read_parquet(args.limit)  # images rows as stored: values through their transform, as scoring does
    index, parts = (int(x) for x in args.part.split("/"))
    rows = rows.iloc[index::parts]  # this process's share of the rows
    mlflow.set_tracking_uri(args.tracking_uri)
    wrapper = mlflow.pyfunc.load_model(args.model_uri).unwrap_python_model()
    model, spec = wrapper.model, replace(wrapper.spec, score_threshold=args.score_threshold)  # as predict(params=)
    predict_rows(model, spec, model_input_rows(rows.head(4 * args.batch_size)), batch_size=args.batch_size)  # warm-up
    print(json.dumps({"ready": True, "images": len(rows)}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        with Timer() as timer:
            out = predict_rows(model, spec, model_input_rows(rows), batch_size=args.batch_size)
        result = {
            "images": len(out),
            "detections": sum(len(d) for d in out),
            "seconds": round(timer.seconds, 2),
            "images_per_s": len(out) / timer.seconds,
            "torch_threads": torch.get_num_threads(),
            "rss_mb": round(_rss_bytes(os.getpid()) / 2**20, 1),
        }
        print(json.dumps(result), flush=True)


class LimitProcess:
    """One process of the limit, fresh, kept up between its timed passes: ``part`` = (i, n) scores rows i, i+n, ..."""

    def __init__(
        self,
        rows: Path,
        model_uri: str,
        tracking_uri: str,
        *,
        threads: int,
        params: dict[str, Any],
        part: tuple[int, int] = (0, 1),
    ) -> None:
        command = [sys.executable, "-m", "bench.score", f"--limit={rows}", f"--model-uri={model_uri}"]
        command += [f"--tracking-uri={tracking_uri}", f"--threads={threads}", f"--batch-size={params['batch_size']}"]
        command += [f"--score-threshold={params['score_threshold']}", f"--part={part[0]}/{part[1]}"]
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        self.ready = self._answer()

    def _answer(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            self.stderr.seek(0)
            raise RuntimeError(f"bench score --limit failed:\n{self.stderr.read().decode()[-4000:]}")
        return json.loads(line)

    def start(self) -> None:
        """Start one timed pass; :meth:`_answer` reads its result."""
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


class Limit:
    """The bare-torch limit in one layout: ``processes`` fresh processes of ``threads`` torch threads each,
    each with its share of the rows, all started at once; a pass takes until the last one is done."""

    def __init__(self, rows: Path, model_uri: str, tracking_uri: str, *, processes: int, threads: int, params) -> None:
        self.layout = (
            f"{processes} process{'es' if processes > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}"
        )
        self.parts: list[LimitProcess] = []
        try:
            for i in range(processes):
                self.parts.append(
                    LimitProcess(rows, model_uri, tracking_uri, threads=threads, params=params, part=(i, processes))
                )
        except BaseException:
            self.close()
            raise

    def run(self) -> dict[str, Any]:
        memories = [TreeMemory(root=p.proc.pid) for p in self.parts]
        with Timer() as timer:
            for memory in memories:
                memory.__enter__()
            for part in self.parts:
                part.start()
            answers = [part._answer() for part in self.parts]
        for memory in memories:
            memory.__exit__(None, None, None)
        images = sum(a["images"] for a in answers)
        return {
            "layout": self.layout,
            "processes": len(self.parts),
            "images": images,
            "detections": sum(a["detections"] for a in answers),
            "seconds": round(timer.seconds, 2),
            "images_per_s": images / timer.seconds,
            "process_seconds": [a["seconds"] for a in answers],
            "torch_threads": sum(a["torch_threads"] for a in answers),
            "peak_rss_mb": round(sum(m.peak_bytes for m in memories) / 2**20, 1),
        }

    def close(self) -> None:
        for part in self.parts:
            part.close()


def wave_efficiency(rows_per_partition: list[int], slots: int) -> float:
    """Busy share of ``slots`` task slots when Spark runs the partitions in order, each on the next free slot.

    Cost is taken as proportional to rows; 1.0 means no slot waits at the end (no skew).
    """
    free = [0] * slots
    for rows in rows_per_partition:
        i = free.index(min(free))
        free[i] += rows
    return sum(rows_per_partition) / (slots * max(free)) if rows_per_partition else 1.0


def _say(message: str) -> None:
    print(f"[bench score {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return max(runs, key=lambda r: r["images_per_s"])


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(prog="bench score")
    parser.add_argument("--images", type=int, default=2000, help="at least this many sagittal 384x384 frames")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass, both sides")
    parser.add_argument(
        "--arrow-batch-size", type=int, default=64, help="spark.sql.execution.arrow.maxRecordsPerBatch (rows)"
    )
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=0.1,
        help="lowest score returned, both sides: the untrained model scores ~0.05-0.11, so its logged 0.3 would "
        "return nothing and leave the output path unexercised; 0.1 gives ~17 detections per image",
    )
    parser.add_argument("--repeats", type=int, default=3, help="alternated warm runs of each side; the best is kept")
    parser.add_argument("--limit", help=argparse.SUPPRESS)
    parser.add_argument("--model-uri", help=argparse.SUPPRESS)
    parser.add_argument("--tracking-uri", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--part", default="0/1", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.limit:  # the limit process
        limit_main(args)
        return None
    return run(args)


@dataclass
class _Timed:
    """The Spark runs (first, warm) and the bare-torch limit's runs, interleaved, and what they used."""

    first: dict
    warm: list[dict]
    limits: list[dict]
    workers: list[dict]
    threads_per_worker: int
    threads: int
    memory: Any
    limits_open: list


def _timed_runs(spark, scored, parallelism: int, rows_path, uri: str, store: Path, params: dict, *, repeats: int):
    """A first Spark run, then ``repeats`` warm Spark runs, each followed by a run of the limit in both of its
    layouts: one process with all of Spark's threads, and one process per Spark task slot with a worker's threads."""
    java = _java_pid(spark)
    with TreeMemory(root=java) if java else TreeMemory() as spark_memory:
        first = spark_run(scored)
        _say(f"spark first run: {first}")
        workers = probe_workers(spark, parallelism)
        threads_per_worker = max(w["torch_threads"] for w in workers)
        threads = parallelism * threads_per_worker
        tracking = f"sqlite:///{store}/mlflow.db"
        layouts: list[Limit] = []
        try:
            layouts.append(Limit(rows_path, uri, tracking, processes=1, threads=threads, params=params))
            if parallelism > 1:
                layouts.append(
                    Limit(rows_path, uri, tracking, processes=parallelism, threads=threads_per_worker, params=params)
                )
            warm, limits = [], []
            for _ in range(repeats):
                warm.append(spark_run(scored))
                _say(f"spark warm run: {warm[-1]}")
                for limit in layouts:
                    limits.append(limit.run())
                    _say(f"limit run: {limits[-1]}")
        except BaseException:
            for limit in layouts:
                limit.close()  # the caller closes them after a success only
            raise
    return _Timed(first, warm, limits, workers, threads_per_worker, threads, spark_memory, layouts)


def _memory_mb(memory, driver_rss: int) -> dict[str, Any]:
    """Peak resident memory of Spark's processes (all, and by process name) and the driver's, in MiB."""
    return {
        "peak_rss_mb": round(memory.peak_bytes / 2**20, 1),
        "peak_rss_by_process_mb": {k: round(v / 2**20, 1) for k, v in memory.peak_by_name.items()},
        "driver_rss_mb": round(driver_rss / 2**20, 1),
    }


def _archive_and_root(images: int) -> tuple[Path, float, Path]:
    """The sagittal archive (made once), the seconds that took, and its storage root (emptied if half made)."""
    t0 = time.perf_counter()
    archive = ensure_sagittal_archive(images)
    archive_s = time.perf_counter() - t0
    root = WORK / f"score-root-{archive.name.removeprefix('score-archive-')}"
    if not _ingested_as_now(root) and root.exists():  # half made, or another layout: ingested anew
        shutil.rmtree(root)
    WORK.mkdir(parents=True, exist_ok=True)
    return archive, archive_s, root


def _stored_rows(images):
    """``images`` rows as stored, with what makes them the detector's input: the stored pixels, their
    transform (rescale, inversion) and pixel spacing. Both sides turn them into values first."""
    from radlake.dicom.pixels import VALUE_COLUMNS
    from radlake.ingest.schema import with_value_columns

    return with_value_columns(images).select(*VALUE_COLUMNS, "pixel_spacing")


def _threads(timed: _Timed, parallelism: int, best_limit: dict) -> dict[str, Any]:
    """The torch threads each side used (Spark's probed inside its Python workers)."""
    return {
        "spark_concurrent_tasks": parallelism,
        "spark_torch_threads_per_worker": timed.threads_per_worker,
        "spark_total": timed.threads,
        "limit": best_limit["torch_threads"],
        "workers_probed": timed.workers,
    }


def _agreed_detections(first: dict, warm: list[dict], limits: list[dict]) -> dict[str, list[int]]:
    """Every run's detections, by side; raises if the sides disagree.

    Same model and rows: the same detections, but for boxes whose score sits at the threshold
    within float noise (Spark groups the rows into forward passes differently).
    """
    found = {"spark": [r["detections"] for r in [first, *warm]], "limit": [r["detections"] for r in limits]}
    if max(abs(a - b) for a in found["spark"] for b in found["limit"]) > 0.001 * max(found["limit"]):
        raise RuntimeError(f"the two sides disagree on the number of detections: {found}")
    return found


def run(args: argparse.Namespace) -> dict:
    from pyspark.sql import functions as F

    from radlake.models.model_input import model_input_frames
    from radlake.models.pyfunc import INPUT_COLUMNS, detections_column
    from radlake.spark import scan_tasks_per_slot
    from radlake.tables import Table, table_ref

    os.environ.setdefault("RADLAKE_DEID_KEY", "bench-key")
    archive, archive_s, root = _archive_and_root(args.images)
    store = Path(tempfile.mkdtemp(prefix="score-mlflow-", dir=WORK))
    load_before = os.getloadavg()[0]
    spark, config, startup_s = _spark(root, arrow_batch_size=args.arrow_batch_size)
    layouts: list[Limit] = []
    try:
        ingest_s = ensure_ingested(spark, config, archive, root)
        images = table_ref(config, Table.IMAGES)
        version = images.version(spark)
        stored = _stored_rows(images.read(spark, version=version).where(SAGITTAL))
        view = model_input_frames(stored).select(*INPUT_COLUMNS)
        n_images = view.count()
        if n_images < args.images:
            raise RuntimeError(f"only {n_images} sagittal images in {root}, fewer than --images={args.images}")
        rows_path = ensure_rows_file(stored, root / f"stored-rows-v{version}")
        uri = log_model(store, view.limit(1).toPandas())

        parallelism = spark.sparkContext.defaultParallelism
        arrow_batch = int(spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch"))  # as the session has it
        params = {"batch_size": args.batch_size, "score_threshold": args.score_threshold}
        with Timer() as udf_setup:
            column = detections_column(spark, uri, params=params)
        scored = view.select(F.size(column).alias("n"))
        # The scan split as `radlake score` has it (score.scan_tasks_per_slot), for every Spark run.
        with scan_tasks_per_slot(spark, config.score.scan_tasks_per_slot) as scan_tasks:
            partitions = view.groupBy(F.spark_partition_id().alias("p")).count().orderBy("p").collect()
            timed = _timed_runs(spark, scored, parallelism, rows_path, uri, store, params, repeats=args.repeats)
        layouts = timed.limits_open
        driver_rss = _rss_bytes(os.getpid())
    finally:
        for limit in layouts:
            limit.close()
        spark.stop()
        shutil.rmtree(store, ignore_errors=True)

    first, warm, limits = timed.first, timed.warm, timed.limits
    best_warm, best_limit = _best(warm), _best(limits)  # the limit: the faster of its layouts
    by_layout = {r["layout"]: _best([x for x in limits if x["layout"] == r["layout"]]) for r in limits}
    busy = wave_efficiency([r["count"] for r in partitions], parallelism)
    found = _agreed_detections(first, warm, limits)
    ratio = best_warm["images_per_s"] / best_limit["images_per_s"]
    result = {
        "images": n_images,
        "source_image_size": IMAGE_SIZE,
        "model": f"vertebra_spec(image_size={MODEL_IMAGE_SIZE}), backbone tiny, untrained (seed 0, REGRESSION_BIAS)",
        "batch_size": args.batch_size,
        "arrow_max_records_per_batch": arrow_batch,
        "params": params,
        "detections_per_image": best_limit["detections"] / best_limit["images"],
        "detections": found,
        "threads": _threads(timed, parallelism, best_limit),
        "spark": {
            "master": "local[2]",
            "input_partitions": len(partitions),
            "rows_per_partition": [r["count"] for r in partitions],
            "scan_tasks_asked": scan_tasks,
            "slot_busy_share": round(busy, 3),
            "tail_idle_share": round(1 - busy, 3),
            "startup_seconds": round(startup_s, 1),
            "udf_setup_seconds": round(udf_setup.seconds, 2),
            "first_run": first,
            "warm": best_warm,
            **_memory_mb(timed.memory, driver_rss),
        },
        "limit": best_limit,
        "limit_by_layout": by_layout,
        "images_per_s": {
            "spark_first_run": first["images_per_s"],
            "spark_warm": best_warm["images_per_s"],
            "limit": best_limit["images_per_s"],
        },
        "every_run_images_per_s": {
            "spark_warm": [r["images_per_s"] for r in warm],
            **{f"limit {layout}": [r["images_per_s"] for r in limits if r["layout"] == layout] for layout in by_layout},
        },
        "repeats": args.repeats,
        "ratio": ratio,
        "target": 0.8,
        "tail_idle_target": "< 0.03",
        "met": ratio >= 0.8,
        "tail_idle_met": 1 - busy < 0.03,
        "peak_rss_mb": {"spark": round(timed.memory.peak_bytes / 2**20, 1), "limit": best_limit["peak_rss_mb"]},
        "setup": {
            "archive": str(archive),
            "archive_seconds": round(archive_s, 1),
            "ingest_seconds": ingest_s,
            "images_version": version,
        },
        "load_average_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
    }
    return write_result("score", result)


if __name__ == "__main__":
    main()
