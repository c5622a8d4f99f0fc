"""The pipeline on a real Spark cluster: a standalone master and worker on 127.0.0.1 (``make cluster-test``).

radlake's own command line, each command a driver process of its own with
``--set spark.master=spark://127.0.0.1:<port>``, runs synth, ingest, labels import,
both trainings with ``local_mode: false`` (TorchDistributor's DDP processes in a barrier
stage on the executor), crops and score, every table and the MLflow store under one
temporary ``storage.root``. Then the tests check the tables, the MLflow runs, and that
the work ran on the cluster's executor: each command is an application the master
lists as finished, and each training's event log has a barrier stage of
``num_processes`` tasks that all succeeded on the executor.

8.5 to 13 minutes on 2 cores shared with other work; marked ``cluster``, which ``make test``
leaves out.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml

from radlake.config import RadlakeConfig, load_config
from radlake.tables import Table, table_ref
from spark_daemons import run_command

pytestmark = pytest.mark.cluster

#: DDP processes per training: one barrier task each, so at most the worker's cores.
NUM_PROCESSES = 2
#: Seconds one command may take (each took 30 to 110 s on 2 cores).
COMMAND_TIMEOUT_S = 420

#: A tiny archive and tiny trainings (what is checked is where the work ran, not model quality).
SETTINGS: dict[str, Any] = {
    "environment": "test",
    "spark": {
        "shuffle_partitions": 2,
        "driver_memory": "2g",
        "extra": {
            "spark.driver.host": "127.0.0.1",
            # One plain JSON file per application, read back by the tests.
            "spark.eventLog.enabled": "true",
            "spark.eventLog.compress": "false",
            "spark.eventLog.rolling.enabled": "false",
        },
    },
    "synth": {"sagittal_slices": 5, "axial_slices": 1, "coronal_slices": 1, "node_fraction": 0.5},
    "loader": {"num_workers": 0},
    "train": {
        detector: {
            "local_mode": False,
            "num_processes": NUM_PROCESSES,
            "epochs": 1,
            "image_size": size,
            "batch_size": batch,
            "max_train_minutes": 3,
            "val_images_logged": 1,
            "score_threshold": 0.05,  # an undertrained model still gives boxes to crop and score
            "promotion_floors": {},  # and becomes champion, which crops and score use
        }
        for detector, size, batch in (("vertebra", 128, 2), ("schmorl", 64, 8))
    },
    "crops": {"size": 64, "source": "both", "min_score": 0.05},
    "score": {"vertebra_threshold": 0.05},
}

#: The archive: 4 studies (one zipped), each 5 sagittal, 1 axial and 1 coronal instance of 128 px.
SYNTH_ARGS = ["--studies", "4", "--seed", "3", "--image-size", "128", "--zip-fraction", "0.25"]


@dataclass(frozen=True)
class ClusterRun:
    """What the commands left: their summaries and logs, the configuration, the event logs."""

    config: RadlakeConfig
    instances_written: int
    frames_labelled: int
    summaries: dict[str, dict[str, Any]]
    stderr: dict[str, str]
    #: Each command's log file (library and Spark logs, which its console leaves out), by step.
    logs: dict[str, str]
    events_dir: Path


def radlake(step: str, *args: str, cluster, run_dir: Path, conf: Path) -> tuple[str, str]:
    """Run ``python -m radlake <args>`` as a driver on ``cluster``; return its stdout and stderr.

    The application is named ``radlake-<step>`` on the master. The command leads a session
    of its own, killed as a whole if it runs past :data:`COMMAND_TIMEOUT_S`.
    """
    logs = run_dir / "logs"
    logs.mkdir(exist_ok=True)
    out, err = logs / f"{step}.out", logs / f"{step}.err"
    command = [sys.executable, "-m", "radlake", *args, "--conf", str(conf)]
    command += ["--set", f"spark.master={cluster.master_url}", "--set", f"spark.extra.spark.app.name=radlake-{step}"]
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    returncode = run_command(
        command, cwd=run_dir, env={**inherited, **cluster.driver_env}, out=out, err=err, timeout_s=COMMAND_TIMEOUT_S
    )
    if returncode != 0:
        pytest.fail(
            f"radlake {step} exited with {returncode}:\n{err.read_text(errors='replace')[-6000:]}\n"
            f"cluster logs:\n{cluster.logs()}"
        )
    return out.read_text(errors="replace"), err.read_text(errors="replace")


def _log_file(stderr: str, cwd: Path) -> str:
    """The text of the log file a quiet command named on its first line (``radlake <step>: log file <path> ...``)."""
    found = re.search(r"log file (\S+)", stderr)
    assert found, stderr[:500]
    return (cwd / found.group(1)).read_text(errors="replace")


def _last_json_object(text: str) -> dict[str, Any]:
    """The JSON object a command printed last (it starts with a line that is just ``{``)."""
    start = text.rindex("\n{\n") + 1 if "\n{\n" in text else text.index("{\n")
    return json.loads(text[start:])


@pytest.fixture(scope="module")
def cluster_run(standalone_cluster, tmp_path_factory) -> ClusterRun:
    """Synth, ingest, labels import, train vertebra, crops, train schmorl and score on the cluster."""
    run_dir = tmp_path_factory.mktemp("cluster-run")
    events = run_dir / "events"
    events.mkdir()
    settings = {**SETTINGS, "storage": {"root": str(run_dir / "radlake")}}
    settings["spark"] = {
        **SETTINGS["spark"],
        "extra": {**SETTINGS["spark"]["extra"], "spark.eventLog.dir": events.as_uri()},
    }
    conf = run_dir / "conf.yml"
    conf.write_text(yaml.safe_dump(settings))

    def run(step: str, *args: str) -> tuple[str, str]:
        return radlake(step, *args, cluster=standalone_cluster, run_dir=run_dir, conf=conf)

    summaries: dict[str, dict[str, Any]] = {}
    stderr: dict[str, str] = {}
    archive = run_dir / "archive"
    out, _ = run("synth", "synth", "--out", str(archive), *SYNTH_ARGS)
    written = re.search(r"Wrote (\d+) DICOM instances", out)
    assert written, out
    labels = json.loads((archive / "labels.json").read_text())
    steps = {
        "ingest": ["ingest", "--archive", str(archive)],
        "labels": ["labels", "import", "--file", str(archive / "labels.json")],
        "train-vertebra": ["train", "vertebra"],
        "crops": ["crops"],
        "train-schmorl": ["train", "schmorl"],
        "score": ["score"],
    }
    seconds: dict[str, float] = {}
    for step, args in steps.items():
        summary = run_dir / f"{step}.json"
        started = time.monotonic()
        out, stderr[step] = run(step, *args, *([] if step == "crops" else ["--summary-json", str(summary)]))
        seconds[step] = round(time.monotonic() - started, 1)
        summaries[step] = _last_json_object(out) if step == "crops" else json.loads(summary.read_text())
    (run_dir / "seconds.json").write_text(json.dumps(seconds, indent=2))  # each command's wall time
    logs = {step: _log_file(err, run_dir) for step, err in stderr.items()}
    return ClusterRun(
        config=load_config(str(conf)),
        instances_written=int(written.group(1)),
        frames_labelled=len(labels["images"]),
        summaries=summaries,
        stderr=stderr,
        logs=logs,
        events_dir=events,
    )


def _rows(config: RadlakeConfig, table: Table) -> int:
    from deltalake import DeltaTable  # a reader without a JVM: the files the executor wrote are complete

    return DeltaTable(table_ref(config, table).path).to_pyarrow_dataset().count_rows()


def test_tables_hold_every_step_result(cluster_run):
    cfg, s = cluster_run.config, cluster_run.summaries
    assert s["ingest"]["new_instances"] == cluster_run.instances_written > 0
    assert _rows(cfg, Table.INSTANCES) == cluster_run.instances_written
    frames = _rows(cfg, Table.IMAGES)
    assert frames == s["ingest"]["new_images"] == cluster_run.frames_labelled > 0  # every sagittal frame
    assert _rows(cfg, Table.ANNOTATIONS) == s["labels"]["labels"]["inserted"] > 0
    assert _rows(cfg, Table.SPLITS) == 4
    assert _rows(cfg, Table.VERTEBRA_CROPS) == s["crops"]["new_crops"] > 0
    assert s["score"]["frames_scored"] == frames
    assert _rows(cfg, Table.PREDICTIONS) == frames  # one row per frame and model pair
    assert _rows(cfg, Table.STUDY_FINDINGS) > 0


def test_runs_finished_and_trainings_were_distributed(cluster_run):
    s = cluster_run.summaries
    client = mlflow.MlflowClient(cluster_run.config.mlflow.resolved_tracking_uri(cluster_run.config.storage))
    run_ids = [s["score"]["run_id"]]  # ingest, labels and crops name their table writes, not MLflow runs
    for detector in ("vertebra", "schmorl"):
        summary = s[f"train-{detector}"]
        run = client.get_run(summary["train"]["run_id"])
        params = run.data.params
        assert params[f"config.train.{detector}.local_mode"] == "false"
        assert params[f"config.train.{detector}.num_processes"] == str(NUM_PROCESSES)
        assert params["config.spark.master"].startswith("spark://127.0.0.1:")
        assert "test_map_50" in run.data.metrics  # logged by rank 0, a DDP process on the executor
        assert summary["registry"]["version"] == "1" and summary["registry"]["promoted"]
        # TorchDistributor's own words for local_mode=False (local mode says "local training"), in the
        # command's log file: its console holds radlake's lines only
        started = f"Started distributed training with {NUM_PROCESSES} executor processes"
        assert started in cluster_run.logs[f"train-{detector}"]
        assert started not in cluster_run.stderr[f"train-{detector}"]
        run_ids.append(run.info.run_id)
    assert {client.get_run(r).info.status for r in run_ids} == {"FINISHED"}


def test_every_command_was_an_application_of_the_cluster(cluster_run, standalone_cluster):
    state = standalone_cluster.state()
    finished = {app["name"]: app for app in state["completedapps"]}
    for step in cluster_run.summaries:
        app = finished[f"radlake-{step}"]
        assert app["state"] == "FINISHED" and app["cores"] == 2, app
        # The worker ran an executor for it: the app's folder holds the executor's logs and the Delta jars.
        executor_dirs = list((standalone_cluster.work_dir / app["id"]).iterdir())
        assert executor_dirs and any(p.name.startswith("delta-spark_") for p in executor_dirs[0].iterdir())
    assert not state["activeapps"]


def _events(events_dir: Path, app_name: str) -> list[dict[str, Any]]:
    """The event log of the application named ``app_name``."""
    for path in sorted(events_dir.iterdir()):
        with path.open() as lines:
            events = [json.loads(line) for line in lines]
        if any(e["Event"] == "SparkListenerApplicationStart" and e["App Name"] == app_name for e in events):
            return events
    raise AssertionError(f"no event log of {app_name} in {events_dir}: {sorted(p.name for p in events_dir.iterdir())}")


@pytest.mark.parametrize("detector", ["vertebra", "schmorl"])
def test_ddp_processes_ran_in_a_barrier_stage_on_the_executor(cluster_run, detector):
    events = _events(cluster_run.events_dir, f"radlake-train-{detector}")
    barrier = {
        e["Stage Info"]["Stage ID"]: e["Stage Info"]
        for e in events
        if e["Event"] == "SparkListenerStageSubmitted" and any(r.get("Barrier") for r in e["Stage Info"]["RDD Info"])
    }
    assert len(barrier) == 1, barrier  # TorchDistributor's one job, a task per DDP process
    ((stage_id, stage),) = barrier.items()
    assert stage["Number of Tasks"] == NUM_PROCESSES
    tasks = [e for e in events if e["Event"] == "SparkListenerTaskEnd" and e["Stage ID"] == stage_id]
    assert len(tasks) == NUM_PROCESSES
    for task in tasks:
        assert task["Task End Reason"]["Reason"] == "Success"
        assert task["Task Info"]["Executor ID"] != "driver" and task["Task Info"]["Host"] == "127.0.0.1"
