"""Shared fixtures: one local Spark + Delta session for the whole test run, in a temporary root."""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml

from radlake.config import RadlakeConfig, load_config
from radlake.tables import Table, table_ref

#: Fixtures that make a test slow (minutes each): the whole pipeline through ``mlflow run``
#: (``project_run``), a vertebra training (``trained``), a sweep (``sweep``) and the stopped
#: trainings of ``tests/test_stops.py`` (``tiny_training``).
SLOW_FIXTURES = {"project_run", "trained", "sweep", "tiny_training"}


TESTS = Path(__file__).resolve().parent


def _files_naming(fixture: str) -> set[str]:
    """The test files (``tests/...``, as in node ids) whose source names ``fixture``: a test's
    parameter, or a fixture of the file that uses it."""
    return {
        f"tests/{path.relative_to(TESTS).as_posix()}"
        for path in TESTS.rglob("test_*.py")
        if fixture in path.read_text(encoding="utf-8")
    }


#: The test files over the session's pipeline run (:func:`project_run`), found by their source
#: (the scheduler sees node ids, not fixtures): under pytest-xdist they share one worker, so the
#: whole pipeline runs once per session.
PIPELINE_FILES = _files_naming("project_run")


PIPELINE_UNIT = "pipeline"
#: The units of work that take longest (minutes each on 2 cores), in the order they start: the longest
#: first, but the ingest job's tests (no labelled archive) second, so that the second worker has work
#: while the first builds the labelled archive every other unit waits for (:func:`labelled_archive`).
LONGEST_UNITS = (
    PIPELINE_UNIT,
    "tests/ingest/test_ingest_job.py",
    "tests/test_stops.py",
    "tests/train/test_sweep.py",
    "tests/score/test_score_job.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``spark`` every test that uses the Spark session, and ``slow`` every one that uses a
    fixture of :data:`SLOW_FIXTURES`, directly or through another fixture.

    ``make test-fast`` leaves the slow ones out; ``make test`` runs everything. A test that uses
    :func:`project_run` outside :data:`PIPELINE_FILES` fails the collection (it would run the
    pipeline a second time on another worker).
    """
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if "spark" in used:
            item.add_marker(pytest.mark.spark)
        if used & SLOW_FIXTURES:
            item.add_marker(pytest.mark.slow)
        if "project_run" in used and _test_file(item.nodeid) not in PIPELINE_FILES:  # through another conftest
            raise pytest.UsageError(f"{item.nodeid} uses project_run, but its file does not name it")


def _test_file(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``make test``'s pytest-xdist schedule: each test file is one unit of work, on one worker (its
    module fixtures are built once), and the files of :data:`PIPELINE_FILES` are one unit together.

    (xdist's ``loadgroup`` marks would say the same, but pytest 9.2 ignores how xdist 3.8 applies them.)
    """
    from xdist.scheduler import LoadScopeScheduling

    class _FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = _test_file(nodeid)
            return PIPELINE_UNIT if path in PIPELINE_FILES else path

        def _assign_work_unit(self, node: Any) -> None:
            # The longest units first, so that neither worker is left with one of them at the end.
            for unit in reversed(LONGEST_UNITS):
                if unit in self.workqueue:
                    self.workqueue.move_to_end(unit, last=False)
            super()._assign_work_unit(node)

    return _FileScheduling(config, log)


@pytest.fixture(scope="session")
def radlake_root(tmp_path_factory: pytest.TempPathFactory):
    """A fresh ``storage.root`` for the session: warehouse, MLflow store and caches go here."""
    return tmp_path_factory.mktemp("radlake-root")


@pytest.fixture(scope="session")
def config(radlake_root) -> RadlakeConfig:
    """The local configuration with everything stored under the session's temporary root."""
    return data_config(radlake_root, "spark.driver_memory=2g")


@pytest.fixture(scope="session")
def spark(config):
    """The local Delta-enabled Spark session (built once, stopped at the end)."""
    from radlake.spark import get_spark

    session = get_spark(config)
    yield session
    session.stop()


# A labelled synthetic archive, shared by the data, training and registry tests.

#: A small archive: 4 studies (one with row spacing != column spacing), 5 sagittal slices of 128 px,
#: one zipped study and Schmorl's nodes in most studies.
SYNTH = {
    "studies": 4,
    "seed": 3,
    "image_size": 128,
    "sagittal_slices": 5,
    "axial_slices": 1,
    "coronal_slices": 1,
    "zip_fraction": 0.25,
    "node_fraction": 0.5,
}


#: Spark SQL evaluated without generated code, as Spark's own tests may (``spark.sql.codegen.factoryMode``
#: is a setting for tests): on the tests' few rows, compiling each query's Java code costs more than it
#: saves. Measured on 2 cores, in a new session: the labelled archive's ingest, labels import and split,
#: then the ingest and import again: the JVM's CPU 77-85 s -> 54-67 s (two runs each). Commands,
#: benchmarks, ``make cluster-test`` and ``make connect-test`` keep Spark's default, and so does
#: ``tests/ingest/test_real_files.py``.
INTERPRETED_SQL = {"spark.sql.codegen.factoryMode": "NO_CODEGEN", "spark.sql.codegen.wholeStage": "false"}

#: What every test configuration sets: the ``test`` environment, Spark on 2 local cores, 2 shuffle
#: partitions, SQL interpreted (:data:`INTERPRETED_SQL`).
TEST_SETTINGS = (
    "environment=test",
    "spark.master=local[2]",
    "spark.shuffle_partitions=2",
    *(f"spark.extra.{key}={value}" for key, value in INTERPRETED_SQL.items()),
)


def data_config(root: Path, *overrides: str) -> RadlakeConfig:
    """The tests' configuration factory: ``conf/local.yml`` for tests (``environment=test``, ``local[2]``,
    2 shuffle partitions) with its own ``storage.root`` and any extra ``key=value``."""
    return load_config("local", overrides=[f"storage.root={root}", *TEST_SETTINGS, *overrides])


@dataclass(frozen=True)
class LabelledArchive:
    """The synthetic archive after ``ingest``, ``labels import`` and ``labels split``."""

    config: RadlakeConfig
    archive: Path
    labels_path: Path
    labels: dict[str, Any]
    ingest: Any  # radlake.ingest.job.IngestSummary
    imported: Any  # radlake.data.labels.LabelsImportSummary
    splits: Any  # radlake.data.splits.SplitSummary


@pytest.fixture(scope="session")
def labelled_archive(spark, tmp_path_factory, worker_id) -> LabelledArchive:
    """Generate, ingest and label a 4-study archive once per test run, in a storage root of its own.

    Under pytest-xdist the first worker that needs it builds it in the run's shared temporary
    folder while the others wait on a file lock; then each worker takes its own copy of the
    storage root (tests write their own tables and MLflow runs there). The archive's files
    are shared: tests read them, none writes them.
    """
    if worker_id == "master":  # no xdist: build it where this process works
        return _build_labelled_archive(spark, tmp_path_factory.mktemp("data-archive"))
    shared = tmp_path_factory.getbasetemp().parent / "labelled-archive"
    built = shared / "built.pickle"
    with open(f"{shared}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if the build fails
        if not built.is_file():
            shutil.rmtree(shared, ignore_errors=True)  # what a failed build left
            # Its fields, not the object: each worker may import this file under another module name.
            built.parent.mkdir(parents=True)
            built.write_bytes(pickle.dumps(vars(_build_labelled_archive(spark, shared))))
    archive = LabelledArchive(**pickle.loads(built.read_bytes()))
    root = tmp_path_factory.mktemp("data-archive") / "radlake"
    shutil.copytree(archive.config.storage.root_dir, root, ignore=shutil.ignore_patterns("spark-tmp"))
    return replace(archive, config=data_config(root))


def _build_labelled_archive(spark, root: Path) -> LabelledArchive:
    from radlake.data.labels import import_labels
    from radlake.data.splits import assign_splits
    from radlake.ingest.job import run_ingest
    from radlake.synth.archive import generate_archive
    from radlake.synth.params import SynthConfig

    archive = root / "archive"
    summary = generate_archive(archive, SynthConfig(**SYNTH))
    cfg = data_config(root / "radlake")
    ingest = run_ingest(spark, cfg, archive=str(archive))
    imported = import_labels(spark, cfg, summary.labels_path)
    splits = assign_splits(spark, cfg)
    labels = json.loads(summary.labels_path.read_text())
    return LabelledArchive(cfg, archive, summary.labels_path, labels, ingest, imported, splits)


#: (sop_instance_uid, frame_index, study_instance_uid, height, width, pixel_spacing [row, column] mm)
Frame = tuple[str, int, str, int, int, Sequence[float] | None]


@pytest.fixture(scope="session")
def add_images(spark) -> Callable[[RadlakeConfig, Sequence[Frame]], None]:
    """Append hand-made rows (metadata only, no pixels) to a configuration's ``images`` table."""
    from radlake.ingest.schema import IMAGES

    def add(config: RadlakeConfig, frames: Sequence[Frame]) -> None:
        ref = table_ref(config, Table.IMAGES)
        ref.ensure(spark, IMAGES)
        values = {f.name: None for f in IMAGES.fields}
        rows = []
        for sop, frame, study, height, width, spacing in frames:
            row = dict(values)
            row.update(
                sop_instance_uid=sop,
                frame_index=frame,
                study_instance_uid=study,
                series_instance_uid=f"{study}.1",
                series_key=f"{study}.1/SAGITTAL",
                slice_index=frame,
                plane="SAGITTAL",
                height=height,
                width=width,
                pixel_spacing=list(spacing) if spacing is not None else None,
                dtype="float16",
            )
            rows.append(tuple(row[f.name] for f in IMAGES.fields))
        spark.createDataFrame(rows, IMAGES).write.format("delta").mode("append").save(ref.path)

    return add


def training_overrides(root: Path, warehouse: Path, *extra: str) -> list[str]:
    """Overrides for a tiny vertebra training on the labelled archive's tables (``warehouse``), its MLflow
    store and caches under ``root``: validation every epoch, no images logged, no loader workers, one DDP
    process (under ``torchrun``, as with two). The tests of two processes (their gradients averaged, the
    torchrun banner, a stop taking both down) say ``train.vertebra.num_processes=2`` in ``extra``."""
    return [
        f"storage.root={root}",
        f"storage.warehouse={warehouse}",
        *TEST_SETTINGS,
        f"loader.cache_dir={root / 'cache'}",
        "loader.num_workers=0",
        "train.vertebra.batch_size=2",
        "train.vertebra.val_every_epochs=1",
        "train.vertebra.val_images_logged=0",
        "train.vertebra.num_processes=1",
        *extra,
    ]


@pytest.fixture(scope="session")
def test_settings() -> tuple[str, ...]:
    """:data:`TEST_SETTINGS` as a fixture, for the tests that build their own overrides or command lines."""
    return TEST_SETTINGS


@pytest.fixture(scope="session")
def tiny_training() -> Callable[..., list[str]]:
    """:func:`training_overrides` as a fixture: ``tiny_training(root, warehouse, "train.vertebra.epochs=2")``."""
    return training_overrides


@pytest.fixture
def lr_space(tmp_path) -> Path:
    """A sweep search space over the learning rate alone, random sampler (seed 1), no pruner."""
    space = tmp_path / "space.yml"
    space.write_text(
        yaml.safe_dump(
            {
                "direction": "maximize",
                "metric": "map_50",
                "pruner": {"type": "none"},
                "sampler": {"type": "random", "seed": 1},
                "params": {"learning_rate": {"type": "float", "low": 1.0e-3, "high": 5.0e-3, "log": True}},
            }
        )
    )
    return space


@pytest.fixture(scope="session")
def make_config() -> Callable[..., RadlakeConfig]:
    """:func:`data_config` as a fixture: ``make_config(root, "labels.split_seed=1", ...)``."""
    return data_config


# The whole pipeline through its MLflow Projects entry point, once per session: the pipeline
# tests check its runs and tables, the notebook tests run the notebooks over a copy of its store.

REPO = Path(__file__).resolve().parents[1]

#: Tiny training settings for the pipeline run (what is checked is traceability, not model quality; one
#: DDP process each: two are tested by the vertebra training's tests and the stopped pipeline's).
PIPELINE_SETTINGS = {
    "environment": "test",
    "spark": {"master": "local[2]", "shuffle_partitions": 2, "driver_memory": "2g", "extra": INTERPRETED_SQL},
    "loader": {"num_workers": 0},
    "train": {
        "vertebra": {
            "epochs": 2,
            "image_size": 128,
            "batch_size": 2,
            "max_train_minutes": 4,
            "num_processes": 1,
            "val_images_logged": 1,
            "score_threshold": 0.05,  # an undertrained model still gives boxes to crop
            "promotion_floors": {},  # and is promoted, so that every later step runs
        },
        "schmorl": {
            "epochs": 1,
            "image_size": 64,
            "batch_size": 8,
            "max_train_minutes": 4,
            "num_processes": 1,
            "val_images_logged": 1,
            "promotion_floors": {},
        },
    },
    "crops": {"size": 64, "source": "both", "min_score": 0.05},
}


@pytest.fixture(scope="session")
def project_run(spark, labelled_archive, tmp_path_factory):
    """Run the MLproject's ``main`` entry point in a subprocess, in a storage root of its own.

    Returns ``(config, parent_run)``; the configuration file is ``<storage.root>/../conf.yml``.
    """
    from radlake.tracking import configure_mlflow

    root = tmp_path_factory.mktemp("pipeline")
    conf = root / "conf.yml"
    conf.write_text(yaml.safe_dump({**PIPELINE_SETTINGS, "storage": {"root": str(root / "radlake")}}))
    cfg = load_config(str(conf))
    configure_mlflow(cfg)  # the experiment, with its artifact root under storage.root
    inherited = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")
    }
    env = {
        **inherited,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
    }
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "run",
        str(REPO),
        "-e",
        "main",
        "--env-manager",
        "local",
        "--experiment-name",
        cfg.mlflow.experiment,
        "-P",
        f"conf={conf}",
        "-P",
        f"archive={labelled_archive.archive}",
        "-P",
        f"labels={labelled_archive.labels_path}",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1500, cwd=root)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-5000:])
    configure_mlflow(cfg)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    [parent] = client.search_runs([experiment.experiment_id], "tags.`radlake.pipeline_steps` != ''")
    return cfg, parent
