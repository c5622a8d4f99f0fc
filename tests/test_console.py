"""A quiet console: a command prints radlake's own lines; warnings, library logs, progress bars and what
Spark and the training processes write go to ``<storage.root>/logs/``; ``--verbose`` prints them as before.

The commands run as real subprocesses (``python -m radlake``), their stdout and stderr captured as a
terminal would show them: every stderr line must be radlake's (its log-file line or a ``[m:ss]`` status
line), stdout the command's summary.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path

import pytest

from radlake import console
from radlake.console import RadlakeWarning, command_console, echo, polling, say, table

#: stderr lines radlake writes: the log file's path (or a failure naming it), a ``[m:ss]`` status line.
OWN_LINE = re.compile(r"^(radlake [\w-]+( [\w-]+)?: |\[\s*\d+:\d\d(:\d\d)?\] )")
#: What third-party output looks like, for the log-file side of the checks.
THIRD_PARTY = re.compile(
    r"log4j|\bWARN\b|jdk\.incubator|Warning:|warnings\.warn|Downloading artifacts|OMP_NUM_THREADS|CloudPickle"
    r"|^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (INFO|WARNING) |Started local training|\*{10}",
    re.MULTILINE,
)


def _env(**extra: str) -> dict[str, str]:
    """The test process's environment without MLflow run state, the de-identification key or a verbosity switch."""
    drop = (
        "MLFLOW_RUN_ID",
        "MLFLOW_EXPERIMENT_ID",
        "MLFLOW_EXPERIMENT_NAME",
        "MLFLOW_TRACKING_URI",
        "RADLAKE_DEID_KEY",
    )
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
    return {**env, **extra}


def _radlake(args: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "radlake", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-5000:])
    return done


def foreign_lines(stderr: str) -> list[str]:
    """The lines of a command's stderr that are not radlake's own."""
    return [line for line in stderr.splitlines() if line.strip() and not OWN_LINE.match(line)]


def logs(root: Path) -> list[Path]:
    return sorted((root / "logs").glob("radlake-*.log"))


def _log_named(stderr: str) -> Path:
    """The log file a quiet command named on its first line."""
    first = stderr.splitlines()[0]
    match = re.match(r"radlake [\w-]+( [\w-]+)?: log file (\S+) ", first)
    assert match, first
    return Path(match.group(2))


# The console itself, in a process of its own (descriptors 1 and 2 are redirected there, not in pytest's).

SCRIPT = textwrap.dedent(
    """
    import logging, os, subprocess, sys, warnings
    from pathlib import Path
    from radlake.console import RadlakeWarning, command_console, echo, say, Progress

    verbose = sys.argv[2] == "verbose"
    with command_console(Path(sys.argv[1]), verbose=verbose) as made:
        say("step one: %d files", 3)
        Progress("step two", total=4, unit="frames").update(2)
        echo('{"summary": 1}')
        warnings.warn("a library's warning", UserWarning)
        logging.getLogger("mlflow.something").warning("a library's log record")
        print("a library's print")
        os.write(2, b"a line written on descriptor 2\\n")
        subprocess.run([sys.executable, "-c", "import sys; print('a child process line', file=sys.stderr)"])
        for _ in range(2):
            warnings.warn("a key was created in .radlake/deid.key", RadlakeWarning)
        print(made.log_path, file=sys.__stderr__ if verbose else open(os.devnull, "w"))
    print("after the command")
    """
)


@pytest.mark.parametrize("verbose", [False, True])
def test_the_console_keeps_radlake_lines_and_the_log_everything_else(tmp_path, verbose):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), "verbose" if verbose else "quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"^\[\s*0:00\] step one: 3 files$", done.stderr, re.MULTILINE)
    assert re.search(r"^\[\s*0:00\] step two: 2/4 frames$", done.stderr, re.MULTILINE)
    said = re.findall(r"warning: a key was created in \.radlake/deid\.key$", done.stderr, re.MULTILINE)
    assert len(said) == 1  # once, in plain words: no file name, line number or category
    assert done.stdout.splitlines()[0] == '{"summary": 1}'
    assert done.stdout.splitlines()[-1] == "after the command"  # stdout is the terminal again
    third_party = (
        "a library's warning",
        "a library's log record",
        "a library's print",
        "descriptor 2",
        "child process",
    )
    if verbose:
        assert logs(tmp_path) == []
        shown = done.stdout + done.stderr
        assert all(text in shown for text in third_party)
    else:
        assert foreign_lines(done.stderr) == []
        assert done.stdout.splitlines() == ['{"summary": 1}', "after the command"]
        [log] = logs(tmp_path)
        text = log.read_text()
        assert all(t in text for t in third_party)
        assert "UserWarning: a library's warning" in text and "WARNING mlflow.something: a library's log record" in text
        assert "step one: 3 files" in text  # radlake's lines are in the log too, for context


def test_without_a_console_library_lines_are_logging_records(capsys, caplog):
    """In a notebook or a test nothing is configured: ``say`` is an INFO record, ``polling`` starts no thread."""
    threads = threading.active_count()
    with caplog.at_level(logging.INFO, logger="radlake"), polling(lambda: None, every_s=0.01):
        assert threading.active_count() == threads and not console.active()
        say("ingest: %d files", 3)
        echo("a result")
    assert capsys.readouterr().out == "a result\n"
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("radlake", logging.INFO, "ingest: 3 files")
    ]
    with pytest.warns(RadlakeWarning, match="created"):
        console.warn("a key was created")


def _process_state() -> tuple:
    """What a command console changes for its length: streams, descriptors 1 and 2, logging, warnings, env."""
    radlake_logger = logging.getLogger("radlake")
    return (
        sys.stdout,
        sys.stderr,
        os.fstat(1).st_ino,
        os.fstat(2).st_ino,
        list(radlake_logger.handlers),
        radlake_logger.propagate,
        list(logging.getLogger().handlers),
        warnings.showwarning,
        os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"),
    )


def test_a_command_console_puts_everything_back(tmp_path):
    """In the same process (a job calling ``main``): streams, descriptors, logging, warnings and env are restored."""
    before = _process_state()
    with command_console(tmp_path) as made:
        assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
        assert sys.stderr is not before[1] and console.active()
    after = _process_state()
    assert after == before and not console.active()
    assert made.log_path.parent == tmp_path / "logs"


def test_table_aligns_text_left_and_numbers_right():
    assert table([["ingest", 28.3, "v1"], ["train_vertebra", 69.7, ""]], ["step", "seconds", "outputs"]) == (
        "step            seconds  outputs\n"
        "--------------  -------  -------\n"
        "ingest             28.3  v1\n"
        "train_vertebra     69.7"
    )


# Real commands: Spark, and a DDP training.


@pytest.mark.spark
def test_synth_and_ingest_print_radlake_lines_only_and_verbose_shows_the_rest(test_settings, tmp_path):
    """``synth`` and ``ingest``: the JVM's and the libraries' lines go to the log; ``--verbose`` prints them."""
    sets = [x for item in (*test_settings, "spark.driver_memory=1g") for x in ("--set", item)]
    archive = tmp_path / "archive"
    small = ["--set", "synth.image_sizes=[128]", "--set", "synth.sagittal_slices=5"]
    synth = _radlake(["synth", "--out", str(archive), "--studies", "2", "--image-size", "128", *small], tmp_path)
    assert foreign_lines(synth.stderr) == [] and synth.stdout.startswith("Wrote ")

    ingest = _radlake(["ingest", "--archive", str(archive), *sets], tmp_path)
    assert foreign_lines(ingest.stderr) == [], ingest.stderr
    assert json.loads(ingest.stdout)["new_instances"] > 0
    said = ingest.stderr
    assert re.search(r"\] ingest: \d+ files, \d+ of them new or changed$", said, re.MULTILINE)
    assert said.count("warning: RADLAKE_DEID_KEY is not set, so radlake created a local de-identification key") == 1
    log = tmp_path / _log_named(ingest.stderr)  # relative to the working directory
    assert log.parent == tmp_path / ".radlake" / "logs"
    text = log.read_text()
    assert "log4j" in text and re.search(r"\bWARN\b", text)  # the JVM's start-up and log4j lines

    quiet_logs = logs(tmp_path / ".radlake")
    again = _radlake(["ingest", "--archive", str(archive), "--verbose", *sets], tmp_path)
    assert logs(tmp_path / ".radlake") == quiet_logs  # --verbose writes no log file
    assert THIRD_PARTY.search(again.stderr), again.stderr  # the JVM's lines are on the terminal again
    assert re.search(r"\] ingest: \d+ files, 0 of them new or changed$", again.stderr, re.MULTILINE)


def test_a_training_prints_epochs_and_the_promotion_verdict_only(tiny_training, spark, labelled_archive, tmp_path):
    """``train vertebra``: the torchrun banner, TorchDistributor's and MLflow's lines are in the log; the
    console has the steps, the epochs and, said once, why the model was not promoted."""
    from radlake.tables import Table, table_ref

    warehouse = Path(table_ref(labelled_archive.config, Table.IMAGES).path).parent
    overrides = tiny_training(
        tmp_path / "radlake",
        warehouse,
        "train.vertebra.epochs=2",
        "train.vertebra.image_size=64",
        "train.vertebra.num_processes=2",  # torchrun's banner is for more than one process
        "train.vertebra.val_images_logged=1",
        "train.vertebra.promotion_floors={test_map_50: 1.01}",  # never reached: the verdict is a warning
        "models.vertebra=console_vertebra",
    )
    sets = [x for item in overrides for x in ("--set", item)]
    done = _radlake(["train", "vertebra", *sets], tmp_path, timeout=1200)
    assert foreign_lines(done.stderr) == [], done.stderr
    summary = json.loads(done.stdout)
    assert summary["registry"]["promoted"] is False
    assert re.search(r"\] train vertebra: .*2 epochs", done.stderr)
    verdict = re.findall(r"^\[\s*\d+:\d\d\] warning: console_vertebra version 1 .* not promoted .*$", done.stderr, re.M)
    assert len(verdict) == 1 and "test_map_50" in verdict[0]
    text = (tmp_path / _log_named(done.stderr)).read_text()
    assert "OMP_NUM_THREADS" in text and "Started local training" in text  # torchrun and TorchDistributor
    assert "Downloading artifacts" not in text  # MLflow's progress bars are off, not only hidden
    assert "Hint: Inferred schema contains integer" not in text  # the datasets' schemas are inferred quietly
    assert "has no artifacts at artifact path" not in text  # registered by the logged model's id
