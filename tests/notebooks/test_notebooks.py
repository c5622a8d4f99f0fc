"""The four notebooks, run as plain Python files over a copy of the pipeline run's store.

The store of the session's pipeline run (``project_run`` in ``conftest.py``: ingested,
labelled, both detectors trained and promoted, archive scored) is copied, so the
notebooks' training run, registration and alias move leave the pipeline tests' store as
it was. All four notebooks run in one Python process (one Spark session), in order, each
with its own command line and captured output; then each test checks what its notebook
printed, saved and changed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from PIL import Image

from radlake.config import load_config
from radlake.models.levels import LEVELS
from radlake.models.resolve import ModelNotFoundError
from radlake.registry.versions import HISTORY_TAG, model_versions, move_alias
from radlake.tables import Table, table_ref
from radlake.tracking import configure_mlflow, detector_experiment

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = ("01_explore_archive", "02_train", "03_review_findings", "04_models")

#: Runs every notebook in turn with ``runpy`` (as ``__main__``, its own ``sys.argv``), its output in
#: ``<out>/<name>.out``; a notebook that raises is recorded in ``results.json`` and the next one runs.
RUNNER = """
import contextlib, json, runpy, sys, traceback
from pathlib import Path
out, plan = Path(sys.argv[1]), json.loads(sys.argv[2])
results = {}
for name, path, args in plan:
    with open(out / f"{name}.out", "w") as stream, contextlib.redirect_stdout(stream):
        sys.argv = [path, *args]
        try:
            runpy.run_path(path, run_name="__main__")
            results[name] = "ok"
        except BaseException:
            results[name] = traceback.format_exc()
(out / "results.json").write_text(json.dumps(results))
"""


@pytest.fixture(scope="module")
def notebooks_run(project_run, tmp_path_factory):
    """Copy the pipeline's store, run the four notebooks over it; ``(config, out_dir, results, before)``."""
    cfg, _ = project_run
    root = tmp_path_factory.mktemp("notebooks")
    shutil.copytree(cfg.storage.root_dir, root / "radlake", ignore=shutil.ignore_patterns("spark-tmp", "derby"))
    settings = yaml.safe_load((cfg.storage.root_dir.parent / "conf.yml").read_text())
    settings["storage"] = {"root": str(root / "radlake")}
    conf = root / "conf.yml"
    conf.write_text(yaml.safe_dump(settings))
    config = load_config(str(conf))
    configure_mlflow(config)
    client = mlflow.MlflowClient()
    before = {
        "champion": str(client.get_model_version_by_alias(config.models.vertebra, "champion").version),
        "versions": len(client.search_model_versions(f"name = '{config.models.vertebra}'")),
    }
    out = root / "out"
    out.mkdir()
    common = ["--conf", str(conf)]
    plan = [
        ("01_explore_archive", ["--thumbnails", "3"]),
        ("02_train", ["--detector", "vertebra", "--set", "train.vertebra.epochs=1", "--register", "yes"]),
        ("03_review_findings", ["--slices", "1"]),
        ("04_models", ["--detector", "vertebra", "--version", "1", "--reason", "test: roll back to version 1"]),
    ]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
        "RADLAKE_NOTEBOOK_OUT": str(out / "figures"),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            RUNNER,
            str(out),
            json.dumps([(name, str(REPO / "notebooks" / f"{name}.py"), common + args) for name, args in plan]),
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    results = json.loads((out / "results.json").read_text())
    configure_mlflow(config)  # this process reads the copied store from here on
    yield config, out, results, before
    configure_mlflow(cfg)


def _output(out: Path, results: dict, name: str) -> str:
    text = (out / f"{name}.out").read_text()
    assert results[name] == "ok", f"{name} failed:\n{results[name]}\n--- output:\n{text[-3000:]}"
    return text


def _section(text: str, title: str) -> str:
    """The lines a notebook printed under ``== title`` (up to the next section)."""
    match = re.search(rf"^== {re.escape(title)}\n(.*?)(?=^== |\Z)", text, flags=re.S | re.M)
    assert match, f"no section {title!r} in:\n{text[-2000:]}"
    return match.group(1)


def test_notebooks_are_databricks_source_files():
    found = sorted(p.stem for p in (REPO / "notebooks").glob("*.py"))
    assert found == sorted(NOTEBOOKS)
    for name in NOTEBOOKS:
        text = (REPO / "notebooks" / f"{name}.py").read_text()
        assert text.startswith("# Databricks notebook source\n"), name
        cells = text.split("\n# COMMAND ----------\n")
        assert len(cells) >= 5, name
        assert "Notebook.start(" in text, name  # widgets with defaults, read the same way everywhere


def test_explore_archive_counts_planes_syntaxes_quarantine_and_thumbnails(spark, notebooks_run):
    config, out, results, _ = notebooks_run
    text = _output(out, results, "01_explore_archive")
    counts = json.loads(_section(text, "archive"))
    instances = table_ref(config, Table.INSTANCES).read(spark)
    assert counts["studies"] == instances.select("study_instance_uid").distinct().count() == 4
    assert counts["frames"] == table_ref(config, Table.IMAGES).read(spark).count()
    assert counts["quarantined"] == table_ref(config, Table.QUARANTINE).read(spark).count()
    planes = _section(text, "series stacks by plane")
    assert "SAGITTAL" in planes and "AXIAL" in planes
    syntaxes = _section(text, "transfer syntaxes")
    for uid in {r[0] for r in instances.select("transfer_syntax_uid").distinct().collect()}:
        assert uid in syntaxes
    assert "Little Endian" in syntaxes  # names from pydicom's UID dictionary
    assert "stage" in _section(text, "quarantine reasons")
    sheet = Image.open(out / "figures" / "thumbnails_SAGITTAL.png")
    assert sheet.size == (3 * 128, 128 + 14)  # three 128 px stacks side by side, a caption strip under them


def test_train_notebook_tracks_a_run_and_registers_it(notebooks_run):
    config, out, results, before = notebooks_run
    text = _output(out, results, "02_train")
    run_id = json.loads(_section(text, "training run"))["run_id"]
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["radlake.notebook"] == "02_train"
    assert run.data.params["config.train.vertebra.epochs"] == "1"
    assert "test_map_50" in run.data.metrics
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == detector_experiment(config, "vertebra")
    promotion = json.loads(_section(text, "promotion"))
    assert promotion["run_id"] == run_id
    assert int(promotion["version"]) == before["versions"] + 1
    assert client.get_model_version(config.models.vertebra, promotion["version"]).run_id == run_id
    assert (out / "figures" / "vertebra_training_curves.png").is_file()


def test_review_notebook_shows_coverage_findings_levels_and_a_drawn_study(spark, notebooks_run):
    config, out, results, _ = notebooks_run
    text = _output(out, results, "03_review_findings")
    predictions = table_ref(config, Table.PREDICTIONS).read(spark)
    [pair] = predictions.select("vertebra_model_uri", "schmorl_model_uri").distinct().collect()
    assert f"model pair: {pair[0]} + {pair[1]}" in text
    assert re.search(rf"\|{predictions.count()}\s*\|", _section(text, "scoring coverage"))  # frames scored
    levels = _section(text, "per-level counts").strip().splitlines()
    assert [line.split()[0] for line in levels[1:]] == list(LEVELS)  # every level, head to feet
    assert (out / "figures" / "nodes_per_level.png").is_file()
    drawn = list((out / "figures").glob("review_*.png"))
    assert drawn, text[-2000:]
    assert Image.open(drawn[0]).size[0] >= 512  # magnified for reading


def test_models_notebook_compares_versions_and_moves_the_champion_by_hand(notebooks_run):
    config, out, results, before = notebooks_run
    text = _output(out, results, "04_models")
    listed = _section(text, f"{config.models.vertebra}: registered versions")
    assert "test_map_50" in listed and "test_level_id_rate" in listed
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias(config.models.vertebra, "champion").version) == "1"
    [move] = json.loads(client.get_model_version(config.models.vertebra, "1").tags[HISTORY_TAG])
    champion_after_training = (
        "2" if json.loads(_section(_output(out, results, "02_train"), "promotion"))["promoted"] else before["champion"]
    )
    assert move["previous_version"] == champion_after_training
    assert move["reason"] == "test: roll back to version 1" and move["alias"] == "champion"
    versions = model_versions(config, "vertebra")
    assert versions.loc[versions.version == 1, "aliases"].item() == "champion"
    assert (out / "figures" / "vertebra_versions.png").is_file()


def test_an_alias_move_to_a_missing_version_or_without_reason_changes_nothing(notebooks_run):
    config, *_ = notebooks_run
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias(config.models.vertebra, "champion").version
    with pytest.raises(ModelNotFoundError, match="has no version 99: nothing moved"):
        move_alias(config, "vertebra", 99, reason="typo")
    with pytest.raises(ValueError, match="needs a reason"):
        move_alias(config, "vertebra", 1, reason="  ")
    assert client.get_model_version_by_alias(config.models.vertebra, "champion").version == champion
