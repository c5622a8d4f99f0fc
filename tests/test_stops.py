"""Clean stops (:mod:`radlake.stops`): SIGTERM and SIGINT end the MLflow runs KILLED and exit 143 / 130.

The mechanism is tested in this process first (cheap). Then two real ``radlake``
processes are stopped while they train, each with the signal sent to the driver alone,
so that the driver has to take its child processes down itself:

- ``radlake sweep`` (2 trial processes) by SIGTERM: no run of the experiment is left
  RUNNING, the trials end KILLED and marked interrupted (failed, not pruned, for Optuna),
  no process of the sweep is left, and the sweep started again completes its study;
- ``radlake pipeline --steps train_vertebra`` (2 DDP processes under ``torchrun``) by
  SIGINT: the pipeline's run and the nested training run end KILLED, no process is left.

``score``, ``ingest`` and ``train`` stop through the same code (:func:`radlake.cli.main`
runs every command under :func:`~radlake.stops.handle_stops`; ``train`` and ``score`` open
their runs with :func:`~radlake.tracking.run_scope`, as the pipeline's steps do).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest

from radlake.config import load_config
from radlake.stops import Stopped, handle_stops
from radlake.tables import Table, table_ref
from radlake.tracking import configure_mlflow, detector_experiment, run_scope


@pytest.fixture
def store(tmp_path):
    """A fresh sqlite MLflow store as the tracking URI, and an experiment in it; the previous URI comes back after."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = mlflow.create_experiment("stops", artifact_location=(tmp_path / "artifacts").as_uri())
    yield experiment_id
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(previous)


def _status(run_id: str) -> str:
    return mlflow.MlflowClient().get_run(run_id).info.status


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_ends_nested_scoped_runs_killed_and_gives_the_exit_code(store, signum):
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    with pytest.raises(Stopped) as caught:
        with handle_stops():
            with run_scope(experiment_id=store, run_name="outer") as outer:
                with run_scope(nested=True, run_name="inner") as inner:
                    os.kill(os.getpid(), signum)
                    time.sleep(30)  # the handler raises here
    assert caught.value.signum == signum
    assert caught.value.exit_code == {signal.SIGTERM: 143, signal.SIGINT: 130}[signum]
    assert str(caught.value) == f"stopped by {signal.Signals(signum).name}"
    assert _status(outer.info.run_id) == "KILLED" and _status(inner.info.run_id) == "KILLED"
    assert mlflow.active_run() is None
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers


def test_runs_opened_without_a_scope_are_ended_killed_on_the_way_out(store):
    with pytest.raises(Stopped) as caught:
        with handle_stops():
            parent = mlflow.start_run(experiment_id=store)
            child = mlflow.start_run(nested=True)
            signal.raise_signal(signal.SIGTERM)
    assert caught.value.ended_runs == [child.info.run_id, parent.info.run_id]
    assert _status(parent.info.run_id) == "KILLED" and _status(child.info.run_id) == "KILLED"


def test_a_keyboard_interrupt_from_another_handler_is_a_stop_by_sigint(store):
    """PySpark's SparkContext replaces the SIGINT handler with one that raises a plain KeyboardInterrupt."""
    with pytest.raises(Stopped) as caught:
        with handle_stops():
            with run_scope(experiment_id=store) as run:
                raise KeyboardInterrupt
    assert caught.value.exit_code == 130
    assert _status(run.info.run_id) == "KILLED"


def test_a_scope_ends_failed_on_an_error_and_finished_otherwise(store):
    with run_scope(experiment_id=store) as done:
        pass
    with pytest.raises(ValueError), run_scope(experiment_id=store) as crashed:
        raise ValueError("boom")
    assert _status(done.info.run_id) == "FINISHED" and _status(crashed.info.run_id) == "FAILED"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux only")
def test_a_process_armed_with_die_with_parent_ends_with_its_parent(tmp_path):
    pid_file = tmp_path / "child.pid"
    child = tmp_path / "child.py"
    child.write_text(
        "import os, pathlib, time\n"
        "from radlake.stops import die_with_parent\n"
        "assert die_with_parent()\n"
        f"pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))\n"
        "time.sleep(120)\n"
    )
    launcher = f"import subprocess, sys, time; subprocess.Popen([sys.executable, {str(child)!r}]); time.sleep(120)"
    parent = subprocess.Popen([sys.executable, "-c", launcher])
    try:
        pid = int(_wait_for(lambda: pid_file.exists() and pid_file.read_text(), 60, "the child to start"))
        assert _alive(pid)
    finally:
        parent.kill()  # SIGKILL: the parent runs no code of its own on the way out
        parent.wait()
    _wait_for(lambda: not _alive(pid), 30, f"process {pid} to end with its parent")


# Helpers of the command-level tests.


def _wait_for(condition: Callable[[], object], seconds: float, what: str, proc: subprocess.Popen | None = None):
    """Poll ``condition`` every half second until it is truthy; fail naming ``what`` after ``seconds``."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the command ended (exit {proc.returncode}) before {what}")
        time.sleep(0.5)
    pytest.fail(f"timed out after {seconds} s waiting for {what}")


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (Linux ``/proc``)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def _cmdline(pid: int) -> str:
    """The command line of ``pid``, arguments joined by spaces ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children, grandchildren, ...), from ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _start(args: list[str], log: Path) -> subprocess.Popen:
    """``python -m radlake ARGS`` in a session of its own (signals go to the driver alone; cleanup kills all)."""
    return subprocess.Popen(
        [sys.executable, "-m", "radlake", *args],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )


def _stop(proc: subprocess.Popen, signum: int, log: Path, *, timeout: float = 180) -> dict[int, str]:
    """Send ``signum`` to the driver only and wait for it; returns the processes it had started (pid: command line).

    The caller checks that they are gone before :func:`_kill_session`, which would take some of them down too.
    """
    below = {pid: _cmdline(pid) for pid in _descendants(proc.pid)}
    os.kill(proc.pid, signum)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{signal.Signals(signum).name} did not stop the command in {timeout} s:\n{_tail(log)}")
    return below


def _tail(log: Path) -> str:
    return log.read_text()[-4000:]


def _kill_session(proc: subprocess.Popen) -> None:
    """Whatever happened, nothing of the command survives the test."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(timeout=60)


#: On top of :func:`conftest.training_overrides`: a training still running when the signal comes.
SLOW_TRAINING = (
    "train.vertebra.image_size=64",
    "train.vertebra.max_train_minutes=5",
    "train.vertebra.epochs=200",
    "models.vertebra=stops_vertebra",
)


def _experiment(client: mlflow.MlflowClient, name: str, root: Path):
    """The experiment, once the command has set its store up (the Parquet cache is written after that)."""
    if not (root / "cache").exists():  # before: the store may be half created, and this client would race it
        return None
    return client.get_experiment_by_name(name)


def _sets(overrides: list[str]) -> list[str]:
    return [x for item in overrides for x in ("--set", item)]


def _warehouse(labelled_archive) -> Path:
    return Path(table_ref(labelled_archive.config, Table.IMAGES).path).parent


def test_a_sweep_stopped_by_sigterm_ends_its_runs_killed_and_resumes(
    lr_space, tiny_training, spark, labelled_archive, tmp_path
):
    from radlake.train.sweep import INTERRUPTED_TAG, SweepStorage
    from radlake.workflow.sweep import run_sweep

    overrides = tiny_training(tmp_path / "radlake", _warehouse(labelled_archive), *SLOW_TRAINING)
    space = lr_space
    log = tmp_path / "sweep.log"
    args = ["sweep", "vertebra", "--trials", "3", "--parallel", "2", "--space", str(space), "--name", "stopped"]
    proc = _start([*args, "--no-register", *_sets(overrides)], log)
    cfg = load_config("local", overrides=overrides)
    client = mlflow.MlflowClient(cfg.mlflow.resolved_tracking_uri(cfg.storage))
    name = detector_experiment(cfg, "vertebra")

    def a_trial_training():
        experiment = _experiment(client, name, tmp_path / "radlake")
        if experiment is None:
            return None
        running = client.search_runs(
            [experiment.experiment_id], "tags.`radlake.sweep` = 'stopped' and attributes.status = 'RUNNING'"
        )
        return next((r for r in running if "radlake.trial_number" in r.data.tags and r.data.metrics), None)

    try:
        training = _wait_for(a_trial_training, 420, "a trial to log an epoch", proc)
        started = _stop(proc, signal.SIGTERM, log)
        _wait_for(lambda: not [p for p in started if _alive(p)], 60, f"the sweep's processes {sorted(started)} to end")
    finally:
        _kill_session(proc)
    assert sum("spawn_main" in cmd for cmd in started.values()) == 2, "both trial processes ran (and ended, above)"
    assert proc.returncode == 143, _tail(log)
    assert _tail(log).rstrip().endswith("radlake sweep: stopped by SIGTERM; any MLflow run it had open ended KILLED")

    experiment_id = configure_mlflow(cfg, name)
    runs = client.search_runs([experiment_id], "tags.`radlake.sweep` = 'stopped'")
    assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]
    storage = SweepStorage(experiment_id)
    parent = storage.get_study_id_from_name("stopped")
    assert client.get_run(parent).info.status == "KILLED"
    trials = {r.info.run_id: r for r in runs if r.info.run_id != parent}
    assert training.info.run_id in trials and 1 <= len(trials) <= 2
    for run in trials.values():
        assert run.info.status == "KILLED" and run.data.tags[INTERRUPTED_TAG] == "true"
        assert run.data.tags["radlake.error"] == "interrupted: the sweep was stopped by SIGTERM while this trial ran"
    import optuna

    study = optuna.load_study(study_name="stopped", storage=storage)
    assert {t.state for t in study.get_trials()} == {optuna.trial.TrialState.FAIL}  # not pruned

    resume = load_config("local", overrides=[*overrides, "train.vertebra.epochs=1"])
    result = run_sweep(spark, resume, "vertebra", trials=3, parallel=2, space=space, name="stopped", register=False)
    assert result.resumed and result.states == {"FAIL": len(trials), "COMPLETE": 3 - len(trials)}, result.states
    runs = {r.info.run_id: r for r in client.search_runs([experiment_id], "tags.`radlake.sweep` = 'stopped'")}
    assert {r.info.status for r in runs.values()} == {"FINISHED", "KILLED"}
    assert runs[parent].info.status == "FINISHED"
    assert all(runs[run_id].info.status == "KILLED" for run_id in trials)


def test_a_pipeline_stopped_by_sigint_while_training_ends_both_runs_killed(tiny_training, labelled_archive, tmp_path):
    overrides = [
        *tiny_training(tmp_path / "radlake", _warehouse(labelled_archive), *SLOW_TRAINING),
        "train.vertebra.num_processes=2",
    ]
    log = tmp_path / "pipeline.log"
    proc = _start(["pipeline", "--steps", "train_vertebra", *_sets(overrides)], log)
    cfg = load_config("local", overrides=overrides)
    client = mlflow.MlflowClient(cfg.mlflow.resolved_tracking_uri(cfg.storage))

    def training():
        experiment = _experiment(client, cfg.mlflow.experiment, tmp_path / "radlake")
        if experiment is None:
            return None
        runs = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
        return next((r for r in runs if r.data.metrics), None)  # rank 0 logged an epoch

    try:
        train_run = _wait_for(training, 420, "the training run to log an epoch", proc)
        started = _stop(proc, signal.SIGINT, log)
        workers = [p for p, cmd in started.items() if cmd.endswith("train.py ") and " -m " not in cmd]
        _wait_for(
            lambda: not [p for p in started if _alive(p)], 60, f"the pipeline's processes {sorted(started)} to end"
        )
    finally:
        _kill_session(proc)
    assert len(workers) == 2, "both DDP processes ran under the driver (and ended with it, above)"
    assert proc.returncode == 130, _tail(log)
    assert _tail(log).rstrip().endswith("radlake pipeline: stopped by SIGINT; any MLflow run it had open ended KILLED")

    runs = client.search_runs([train_run.info.experiment_id], "")
    assert {r.info.run_name: r.info.status for r in runs} == {"pipeline": "KILLED", "train_vertebra": "KILLED"}
    assert train_run.data.tags["mlflow.parentRunId"] == next(
        r.info.run_id for r in runs if r.info.run_name == "pipeline"
    )
