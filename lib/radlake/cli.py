"""The ``radlake`` command line (also ``python -m radlake``).

Every subcommand takes ``--conf NAME|PATH`` and any number of ``--set key=value``;
the configuration is loaded and validated before anything else runs, so a wrong key
fails in a second with a message naming it. A command prints radlake's own lines (steps,
progress, its summary) and sends the libraries' warnings and logs and Spark's output to
``<storage.root>/logs/`` (:mod:`radlake.console`); ``--verbose`` prints them. Errors in radlake's input
(:class:`~radlake.errors.RadlakeError`) print one line and exit with status 2.
SIGTERM and SIGINT stop a command cleanly (:mod:`radlake.stops`): the MLflow runs it
opened end KILLED, and it prints one line and exits with 143 or 130.

``get_args_parser()`` is reusable: ``jobs/*.py`` call :func:`main` with their own
arguments, so a Databricks task and a terminal run the same code.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from radlake import __version__
from radlake.config import RadlakeConfig, config_as_yaml, load_config
from radlake.console import Console, command_console, echo
from radlake.errors import RadlakeError
from radlake.stops import Stopped, handle_stops
from radlake.worker_daemon import NO_MODEL_PRELOAD

Command = Callable[[argparse.Namespace, RadlakeConfig], int]


def _summary_text(summary: Any) -> str:
    """A command's summary as JSON text: a dataclass with ``as_dict``, or plain data (values JSON cannot hold as strings)."""
    data = summary.as_dict() if hasattr(summary, "as_dict") else summary
    return json.dumps(data, indent=2, default=str)


def _write_summary_json(path: str | None, summary: Any) -> None:
    """``--summary-json``: the summary as JSON in ``path`` (nothing when the option is not given)."""
    if path:
        Path(path).write_text(_summary_text(summary))


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--conf",
        default="local",
        metavar="NAME|PATH",
        help="configuration: local (default), dev, prod, or a YAML file path",
    )
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show the libraries' warnings and logs, progress bars and Spark's output here, "
        "not in the log file under <storage.root>/logs/",
    )
    common.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set spark.driver_memory=8g (repeatable)",
    )
    return common


#: What ``ArgumentParser.add_subparsers`` returns (its class is private to argparse).
Subcommands = Any


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The full argument parser, with one sub-parser per command."""
    parser = argparse.ArgumentParser(
        prog="radlake",
        description="Radiology ML on Spark and Databricks: DICOM to Delta, MLflow-tracked detectors, batch scoring.",
        add_help=add_help,
    )
    parser.add_argument("--version", action="version", version=f"radlake {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common_options()
    for add in (
        _add_synth,
        _add_ingest,
        _add_labels,
        _add_train,
        _add_sweep,
        _add_runs,
        _add_reproduce,
        _add_promote,
        _add_crops,
        _add_score,
        _add_evaluate,
        _add_export_sr,
        _add_review,
        _add_pipeline,
        _add_cache,
        _add_demo,
        _add_tables,
        _add_config,
        _add_setup_jars,
    ):
        add(sub, common)
    return parser


def _add_synth(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """``radlake synth``."""
    p = sub.add_parser(
        "synth",
        parents=[common],
        help="write a synthetic spine-MRI DICOM archive with ground-truth labels",
        description="Write a synthetic sagittal spine-MRI archive (plus axial and coronal series) and labels.json.",
    )
    p.add_argument("--out", required=True, help="output folder (created; must be empty or absent)")
    p.add_argument("--studies", type=int, help="number of studies (one patient each)")
    p.add_argument("--seed", type=int, help="random seed; the same seed writes the same bytes")
    p.add_argument("--image-size", type=int, help="matrix size in pixels (square)")
    p.add_argument("--zip-fraction", type=float, help="fraction of studies packed into .zip files (0-1)")
    p.add_argument("--workers", type=int, default=1, help="processes to generate studies in parallel")
    p.set_defaults(func=_cmd_synth)


def _add_ingest(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """``radlake ingest``."""
    p = sub.add_parser(
        "ingest",
        parents=[common],
        help="ingest a DICOM archive into the Delta tables (incremental)",
        description="Turn a DICOM archive (folders, .zip, .tar, .tar.gz) into the instances, series, "
        "images and quarantine Delta tables. Re-runs only ingest files that are new or changed.",
    )
    p.add_argument("--archive", help="archive folder, Volume path or URI (default: ingest.archive)")
    p.add_argument("--summary-json", help="also write the run summary as JSON to this file")
    p.set_defaults(func=_cmd_ingest)


def _add_labels(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """``radlake labels``."""
    p = sub.add_parser(
        "labels",
        help="import box annotations and assign the train / val / test split by study",
        description="Annotations (synth labels.json or COCO-style JSON keyed by SOPInstanceUID) into the "
        "annotations Delta table, checked against images; studies into the splits table, fixed by seed.",
    )
    labels_sub = p.add_subparsers(dest="labels_command", required=True, metavar="ACTION")
    q = labels_sub.add_parser(
        "import",
        parents=[common],
        help="import a labels file (boxes in pixels), then assign splits to new studies",
        description="Check every box against the images table (unknown frames, degenerate boxes and boxes more "
        "than 1 pixel outside the image are rejected and listed), MERGE the rest into annotations (re-imports "
        "add nothing; a corrected file of the same name replaces its boxes per frame), then assign splits.",
    )
    q.add_argument("--file", help="labels file: synth labels.json or COCO-style JSON (default: labels.file)")
    q.add_argument("--summary-json", help="also write both summaries as JSON to this file")
    q.set_defaults(func=_cmd_labels_import)
    q = labels_sub.add_parser(
        "split",
        parents=[common],
        help="assign train / val / test to studies that have none yet (by labels.split_seed)",
        description="Give every study in images without a split its split; assigned studies keep theirs.",
    )
    q.add_argument(
        "--force",
        action="store_true",
        help="redraw every study when labels.split_seed differs from the table's seed (changes the test set)",
    )
    q.set_defaults(func=_cmd_labels_split)


def _add_train(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """``radlake train``."""
    p = sub.add_parser(
        "train",
        parents=[common],
        help="train a detector with DDP, log it to MLflow, register it and promote it if it wins",
        description="Train a detector (vertebra) from the images, annotations and splits tables at pinned "
        "Delta versions, with TorchDistributor; log params, metrics, plots, data versions and the pyfunc model "
        "to MLflow; register it as models.<detector> with the alias challenger, and champion if it beats the "
        "current champion on the frozen test split.",
    )
    p.add_argument("detector", help="which detector: vertebra or schmorl")
    p.add_argument(
        "--vertebra-model",
        metavar="URI",
        help="schmorl: train on the crops of this vertebra model (default crops.vertebra_model, else the champion)",
    )
    p.add_argument("--no-register", action="store_true", help="log the run only; do not register or promote")
    p.add_argument("--summary-json", help="also write the run and promotion summary as JSON to this file")
    p.set_defaults(func=_cmd_train)


def _add_sweep(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """``radlake sweep``."""
    p = sub.add_parser(
        "sweep",
        parents=[common],
        help="hyperparameter sweep: an Optuna study, trials P at a time as nested MLflow runs, best one registered",
        description="Run (or continue, by --name) an Optuna study over the search space: every trial trains on the "
        "same pinned Parquet caches, reports val_<metric> each epoch and is pruned when it falls behind (run KILLED, "
        "tag radlake.pruned_reason); a crash ends its run FAILED (tag radlake.error) and the sweep goes on. The best "
        "complete trial is registered as challenger and goes through the promotion gate; the parent run holds "
        "leaderboard/leaderboard.csv and .png.",
    )
    p.add_argument("detector", help="which detector: vertebra or schmorl")
    p.add_argument("--trials", type=int, required=True, help="total trials the study should hold (resumes count)")
    p.add_argument("--parallel", type=int, default=2, help="trials at a time: local processes or Spark tasks")
    p.add_argument("--space", metavar="FILE", help="search-space YAML (default conf/sweep/<detector>.yml)")
    p.add_argument("--metric", help="base metric, e.g. map_50 (default the space's, else the detector's primary)")
    p.add_argument("--timeout", type=float, metavar="S", help="no new trial starts after this many seconds")
    p.add_argument("--name", help="study name (default <detector>-sweep); the same name continues the study")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--on-executors",
        dest="on_executors",
        action="store_true",
        default=None,
        help="trials as Spark tasks on the executors (default on dev/prod)",
    )
    where.add_argument(
        "--local-processes",
        dest="on_executors",
        action="store_false",
        help="trials in local processes (default locally)",
    )
    p.add_argument("--no-register", action="store_true", help="do not register or promote the best trial")
    p.add_argument("--summary-json", help="also write the sweep summary as JSON to this file")
    p.set_defaults(func=_cmd_sweep)


def _add_runs(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """``radlake runs``."""
    p = sub.add_parser(
        "runs",
        parents=[common],
        help="leaderboard of an experiment's runs: status, key params, metrics, registered version",
    )
    p.add_argument("--experiment", required=True, help="MLflow experiment name, e.g. radlake-vertebra")
    p.add_argument("--metric", help="full metric name to rank by (default test_<primary metric of the detector>)")
    p.add_argument("--top", type=int, help="only the K best runs")
    p.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    p.set_defaults(func=_cmd_runs)


def _add_reproduce(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """``radlake reproduce``."""
    p = sub.add_parser(
        "reproduce",
        parents=[common],
        help="retrain a logged run from its config and data versions and compare the metrics",
    )
    p.add_argument("--run-id", required=True, help="MLflow run id of a radlake training run")
    p.set_defaults(func=_cmd_reproduce)


def _add_promote(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """``radlake promote``."""
    p = sub.add_parser(
        "promote",
        parents=[common],
        help="register a training run's model and promote it to champion if it beats the current one",
    )
    p.add_argument("detector", help="which detector: vertebra or schmorl")
    p.add_argument("--run-id", required=True, help="MLflow run id of the training run")
    p.set_defaults(func=_cmd_promote)


def _add_crops(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """``radlake crops``."""
    p = sub.add_parser(
        "crops",
        parents=[common],
        help="crop every vertebra of the labelled frames for the Schmorl's-node stage (vertebra_crops table)",
        description="Run the vertebra model over the labelled images as a pyfunc Spark UDF (or take the labelled "
        "boxes: crops.source), crop each vertebra with crops.margin_fraction, resample to crops.size pixels, map "
        "the Schmorl's-node labels into the crop and append the crops to the vertebra_crops Delta table.",
    )
    p.add_argument(
        "--vertebra-model",
        metavar="URI",
        help="models:/<name>@<alias>, models:/<name>/<version> or runs:/<run>/model "
        "(default crops.vertebra_model, else models:/<models.vertebra>@champion)",
    )
    p.set_defaults(func=_cmd_crops)


def _add_model_pair(p: argparse.ArgumentParser) -> None:
    """``--vertebra-model`` and ``--schmorl-model``: the model pair that scores (defaults as the score job's)."""
    p.add_argument(
        "--vertebra-model", metavar="URI", help="default score.vertebra_model, else models:/<models.vertebra>@champion"
    )
    p.add_argument(
        "--schmorl-model", metavar="URI", help="default score.schmorl_model, else models:/<models.schmorl>@champion"
    )


def _add_score(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """``radlake score``."""
    p = sub.add_parser(
        "score",
        parents=[common],
        help="score every image with the registered models (predictions and study_findings tables)",
        description="Run the vertebra detector on every frame of images and the Schmorl's-node detector on each "
        "found vertebra, both as MLflow pyfunc Spark UDFs; append the findings (pixels, mm, patient coordinates) "
        "to predictions and rebuild study_findings. Only frames not yet scored by this model pair are scored.",
    )
    _add_model_pair(p)
    p.add_argument("--summary-json", help="also write the run summary as JSON to this file")
    p.set_defaults(func=_cmd_score)


def _add_evaluate(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """``radlake evaluate``."""
    p = sub.add_parser(
        "evaluate",
        parents=[common],
        help="external validation: score a labelled archive with a model pair in tables of its own and measure it",
        description="Ingest a labelled archive into tables of its own (never the training tables), import its "
        "labels, score it with the vertebra and Schmorl's-node models as the score job does, and report vertebra "
        "AP@0.5, level identification, the share of series with every level right, the share marked uncertain and "
        "Schmorl's-node FROC (0.25-4 false positives per frame), over the archive and per study; logged as an "
        "MLflow run in <mlflow.experiment>-evaluation, linked to both model versions.",
    )
    p.add_argument("--archive", required=True, help="the labelled DICOM archive (folder, Volume path or URI)")
    p.add_argument("--labels", required=True, dest="labels_file", help="its labels: synth labels.json or COCO-style")
    _add_model_pair(p)
    p.add_argument(
        "--root",
        help="storage root of the evaluation's own tables (default <storage.root>/evaluation/<archive>-<hash>)",
    )
    p.add_argument("--summary-json", help="also write the metrics and the per-study rows as JSON to this file")
    p.set_defaults(func=_cmd_evaluate)


def _add_export_sr(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """``radlake export-sr``."""
    p = sub.add_parser(
        "export-sr",
        parents=[common],
        help="write the findings as DICOM Comprehensive 3D SR (TID 1500), one file per study",
        description="Build a TID 1500 measurement report per study from predictions with highdicom: one "
        "measurement group per vertebra (its level as finding site), Schmorl's nodes as image regions "
        "referencing the source instances.",
    )
    p.add_argument("--study", metavar="UID", help="only this StudyInstanceUID (default every scored study)")
    p.add_argument("--out", help="output folder (default <storage work dir>/sr)")
    p.set_defaults(func=_cmd_export_sr)


def _add_review(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """``radlake review``."""
    p = sub.add_parser(
        "review",
        parents=[common],
        help="write PNGs of a study's sagittal slices with the found boxes drawn",
    )
    p.add_argument("--study", metavar="UID", required=True, help="StudyInstanceUID")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--max-slices", type=int, help="at most this many slices per series")
    p.set_defaults(func=_cmd_review)


def _add_pipeline(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """``radlake pipeline``."""
    p = sub.add_parser(
        "pipeline",
        parents=[common],
        help="ingest, labels, train and promote both detectors, score: one MLflow parent run, a child run per step",
        description="Run the pipeline steps in order (ingest, labels, train_vertebra, promote_vertebra, crops, "
        "train_schmorl, promote_schmorl, score), each a child MLflow run that receives its inputs (table versions, run "
        "ids, model URIs) as params and publishes its outputs for the next. --steps runs some of them alone; "
        "inputs of earlier steps are then given with the options below (else the current table versions and "
        "the configured model URIs).",
    )
    p.add_argument("--steps", help="comma-separated steps to run (default all)")
    p.add_argument("--archive", help="ingest: DICOM archive folder or URI (default ingest.archive)")
    p.add_argument("--labels", dest="labels_file", help="labels: labels file (default labels.file)")
    p.add_argument("--vertebra-run-id", help="promote_vertebra: training run to register")
    p.add_argument("--vertebra-model", metavar="URI", help="crops, train_schmorl: the vertebra model")
    p.add_argument("--schmorl-run-id", help="promote_schmorl: training run to register")
    p.add_argument("--schmorl-model", metavar="URI", help="score: the Schmorl's-node model")
    p.add_argument("--summary-json", help="also write every step's inputs and outputs as JSON to this file")
    p.set_defaults(func=_cmd_pipeline)


def _add_cache(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """``radlake cache``."""
    p = sub.add_parser("cache", help="the Parquet cache of training data")
    cache_sub = p.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    q = cache_sub.add_parser("clean", parents=[common], help="remove cached training views (all, or older ones)")
    q.add_argument("--older-than-days", type=float, help="only entries not written for this many days")
    q.set_defaults(func=_cmd_cache_clean)


def _add_demo(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """``radlake demo``."""
    p = sub.add_parser(
        "demo",
        parents=[common],
        help="the pipeline end to end on a synthetic archive (what make demo runs); its trainings run a fixed "
        "number of epochs with no time cap",
    )
    p.add_argument("--out", required=True, help="folder of the synthetic archive (reused when already written)")
    p.add_argument("--studies", type=int, help="number of synthetic studies")
    p.add_argument("--workers", type=int, default=2, help="processes for the synthetic archive")
    p.set_defaults(func=_cmd_demo)


def _add_tables(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """``radlake tables``."""
    p = sub.add_parser("tables", parents=[common], help="list radlake's Delta tables with location and version")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_tables)


def _add_config(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """``radlake config``."""
    p = sub.add_parser("config", parents=[common], help="print the resolved configuration (all defaults filled in)")
    p.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    p.set_defaults(func=_cmd_config)


def _add_setup_jars(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    """``radlake setup-jars``."""
    p = sub.add_parser(
        "setup-jars",
        parents=[common],
        help="fetch the Delta Lake jars beside the installed pyspark and build the JVM class archive (make setup runs this)",
    )
    p.set_defaults(func=_cmd_setup_jars)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit status.

    radlake's own lines go to the terminal and everything else to a log file
    (:mod:`radlake.console`), except with ``--verbose``, on Databricks (its runtime owns the
    process's output and logging) and for ``radlake config``.
    """
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        config = command_config(args)
        with command_console(_log_root(args, config), verbose=args.verbose) as console:
            if console.log_path is not None:
                console.line(
                    f"radlake {args.command}: log file {_shown_path(console.log_path)} "
                    "(warnings, library and Spark logs; --verbose prints them here)"
                )
            return _run(args, config, console)
    except RadlakeError as exc:
        print(f"radlake {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Stopped as stop:
        print(f"radlake {args.command}: {stop}; any MLflow run it had open ended KILLED", file=sys.stderr)
        return stop.exit_code


def _run(args: argparse.Namespace, config: RadlakeConfig, console: Console) -> int:
    """The command, stopped cleanly by SIGTERM and SIGINT; an unexpected error names the log before its traceback."""
    try:
        with handle_stops():
            return int(args.func(args, config) or 0)
    except Exception as exc:
        if console.log_path is not None and not isinstance(exc, RadlakeError):
            console.line(f"radlake {args.command}: failed; the log file {_shown_path(console.log_path)} has the rest")
        raise


def _log_root(args: argparse.Namespace, config: RadlakeConfig) -> Path | None:
    """Where the command's log file goes (``<storage.root>``), or None: output left where it is."""
    from radlake.spark import on_databricks

    if args.command == "config" or on_databricks():
        return None
    return config.storage.root_dir


def _shown_path(path: Path) -> str:
    """``path`` relative to the working directory when it is under it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def command_config(args: argparse.Namespace) -> RadlakeConfig:
    """The configuration a parsed command runs with: ``--conf``, the command's defaults, ``--set``, its flags."""
    return load_config(args.conf, overrides=_command_defaults(args) + list(args.overrides) + _flag_overrides(args))


def _command_defaults(args: argparse.Namespace) -> list[str]:
    """Configuration a command sets before the user's ``--set`` overrides (which win): the demo's trainings."""
    if args.command != "demo":
        return []
    from radlake.workflow.demo import DEMO_TRAINING

    return list(DEMO_TRAINING)


def _flag_overrides(args: argparse.Namespace) -> list[str]:
    """Command flags that are shorthands for configuration keys (validated with the rest)."""
    if args.command not in {"synth", "demo"}:
        return []
    pairs = {
        "synth.studies": args.studies,
        "synth.seed": getattr(args, "seed", None),
        "synth.image_size": getattr(args, "image_size", None),
        "synth.zip_fraction": getattr(args, "zip_fraction", None),
    }
    return [f"{key}={value}" for key, value in pairs.items() if value is not None]


def _cmd_synth(args: argparse.Namespace, config: RadlakeConfig) -> int:
    from radlake.synth.archive import generate_archive

    summary = generate_archive(args.out, config.synth, workers=args.workers)
    echo(
        f"Wrote {summary.n_files} DICOM instances for {summary.n_studies} studies "
        f"({summary.n_zip_files} zip files) to {summary.out_dir}; labels: {summary.labels_path}"
    )
    return 0


def _cmd_ingest(args: argparse.Namespace, config: RadlakeConfig) -> int:
    from radlake.ingest.job import run_ingest
    from radlake.spark import get_spark

    # run_ingest says itself what its executors import (pydicom only): the session keeps the configured list.
    summary = run_ingest(get_spark(config), config, archive=args.archive)
    echo(json.dumps(summary.as_dict(), indent=2))
    _write_summary_json(args.summary_json, summary)
    return 0


def _cmd_labels_import(args: argparse.Namespace, config: RadlakeConfig) -> int:

    from radlake.data.splits import import_labels_and_split
    from radlake.spark import get_spark

    labels, splits = import_labels_and_split(get_spark(config, worker_preload=NO_MODEL_PRELOAD), config, args.file)
    for rejected in labels.rejections:
        echo(f"rejected {rejected.item}: {rejected.reason}", err=True)
    summaries = {"labels": labels.as_dict(), "splits": splits.as_dict()}
    echo(json.dumps(summaries, indent=2))
    _write_summary_json(args.summary_json, summaries)
    return 0


def _cmd_labels_split(args: argparse.Namespace, config: RadlakeConfig) -> int:
    from radlake.data.splits import assign_splits
    from radlake.spark import get_spark

    summary = assign_splits(get_spark(config, worker_preload=NO_MODEL_PRELOAD), config, force=args.force)
    echo(json.dumps(summary.as_dict(), indent=2))
    return 0


def _cmd_train(args: argparse.Namespace, config: RadlakeConfig) -> int:

    from radlake.registry.promote import register_and_promote
    from radlake.spark import get_spark
    from radlake.train.run import get_stage, train_detector

    stage = get_stage(args.detector)
    if args.vertebra_model:
        config = config.with_vertebra_model(args.vertebra_model)
    result = train_detector(get_spark(config), config, stage.name)
    summary = {"train": result.as_dict()}
    if not args.no_register:
        summary["registry"] = register_and_promote(config, stage, result.run_id).as_dict()
    echo(json.dumps(summary, indent=2))
    _write_summary_json(args.summary_json, summary)
    return 0


def _cmd_sweep(args: argparse.Namespace, config: RadlakeConfig) -> int:

    from radlake.spark import get_spark
    from radlake.train.run import get_stage
    from radlake.train.space import default_space_path, load_space
    from radlake.workflow.sweep import run_sweep

    stage = get_stage(args.detector)
    load_space(args.space or default_space_path(stage.name))  # a bad space file fails before Spark starts
    result = run_sweep(
        get_spark(config),
        config,
        stage.name,
        trials=args.trials,
        parallel=args.parallel,
        space=args.space,
        metric=args.metric,
        timeout=args.timeout,
        name=args.name,
        on_executors=args.on_executors,
        register=not args.no_register,
    )
    summary = {k: v for k, v in result.as_dict().items() if k != "leaderboard"}
    echo(json.dumps(summary, indent=2))
    _write_summary_json(args.summary_json, result)
    return 0


def _cmd_runs(args: argparse.Namespace, config: RadlakeConfig) -> int:
    from radlake.registry.leaderboard import experiment_leaderboard, format_leaderboard

    frame, metric = experiment_leaderboard(config, args.experiment, metric=args.metric, top=args.top)
    if args.json:
        echo(frame.to_json(orient="records", indent=2))
    else:
        echo(format_leaderboard(frame, metric))
    return 0


def _cmd_reproduce(args: argparse.Namespace, config: RadlakeConfig) -> int:
    from radlake.spark import get_spark
    from radlake.train.reproduce import reproduce

    result = reproduce(get_spark(config), config, args.run_id)
    echo(f"run {result.original_run_id} reproduced as {result.new_run_id} (tolerance {result.tolerance}):")
    echo(result.table())
    return 0 if not result.mismatched else 1


def _cmd_promote(args: argparse.Namespace, config: RadlakeConfig) -> int:
    from radlake.registry.promote import register_and_promote
    from radlake.train.run import get_stage

    echo(json.dumps(register_and_promote(config, get_stage(args.detector), args.run_id).as_dict(), indent=2))
    return 0


def _cmd_crops(args: argparse.Namespace, config: RadlakeConfig) -> int:
    from radlake.data.crops import make_crops
    from radlake.spark import get_spark

    echo(json.dumps(make_crops(get_spark(config), config, vertebra_model=args.vertebra_model).as_dict(), indent=2))
    return 0


def _cmd_score(args: argparse.Namespace, config: RadlakeConfig) -> int:

    from radlake.score.job import format_summary, score_archive
    from radlake.spark import get_spark

    summary = score_archive(
        get_spark(config), config, vertebra_model=args.vertebra_model, schmorl_model=args.schmorl_model
    )
    echo(format_summary(summary))
    _write_summary_json(args.summary_json, summary)
    return 0


def _cmd_evaluate(args: argparse.Namespace, config: RadlakeConfig) -> int:

    from radlake.spark import get_spark
    from radlake.workflow.evaluate import check_evaluate_config, evaluate_models, format_summary

    check_evaluate_config(config)
    summary = evaluate_models(
        get_spark(config),
        config,
        archive=args.archive,
        labels_file=args.labels_file,
        vertebra_model=args.vertebra_model,
        schmorl_model=args.schmorl_model,
        root=args.root,
    )
    echo(format_summary(summary))
    _write_summary_json(args.summary_json, summary)
    return 0


def _cmd_export_sr(args: argparse.Namespace, config: RadlakeConfig) -> int:
    from radlake.score.sr import export_sr
    from radlake.spark import get_spark

    summary = export_sr(get_spark(config), config, out_dir=args.out, study_uid=args.study)
    echo(json.dumps(summary.as_dict(), indent=2, default=str))
    return 0


def _cmd_review(args: argparse.Namespace, config: RadlakeConfig) -> int:
    from radlake.score.review import write_review
    from radlake.spark import get_spark

    summary = write_review(
        get_spark(config), config, study_uid=args.study, out_dir=args.out, max_slices=args.max_slices
    )
    echo(json.dumps(summary.as_dict(), indent=2, default=str))
    return 0


def _cmd_pipeline(args: argparse.Namespace, config: RadlakeConfig) -> int:

    from radlake.spark import get_spark
    from radlake.workflow.pipeline import parse_steps, run_pipeline, steps_table

    steps = parse_steps(args.steps)  # an unknown step fails before Spark starts
    keys = ("archive", "labels_file", "vertebra_run_id", "vertebra_model", "schmorl_run_id", "schmorl_model")
    inputs = {k: getattr(args, k) for k in keys if getattr(args, k)}
    result = run_pipeline(get_spark(config), config, steps=steps, inputs=inputs)
    echo(_summary_text(result))
    _write_summary_json(args.summary_json, result)
    echo(steps_table(result), err=True)
    return 0


def _cmd_cache_clean(args: argparse.Namespace, config: RadlakeConfig) -> int:
    from radlake.data.converter import clean_cache
    from radlake.train.run import cache_dir

    older = args.older_than_days * 86400 if args.older_than_days is not None else None
    removed = clean_cache(cache_dir(config), older_than_seconds=older)
    echo(f"removed {len(removed)} cache entries from {cache_dir(config)}")
    return 0


def _cmd_demo(args: argparse.Namespace, config: RadlakeConfig) -> int:
    from radlake.workflow.demo import run_demo

    run_demo(config, out=args.out, workers=args.workers)
    return 0


def _cmd_tables(args: argparse.Namespace, config: RadlakeConfig) -> int:
    from dataclasses import asdict

    from radlake.spark import get_spark
    from radlake.tables import list_tables

    statuses = list_tables(get_spark(config), config)
    if args.json:
        echo(json.dumps([asdict(s) for s in statuses], indent=2))
        return 0
    width = max([len("table"), *(len(s.table) for s in statuses)])
    echo(f"{'table':<{width}} {'version':>7} {'rows':>9}  location")
    for s in statuses:
        version = "-" if s.version is None else str(s.version)
        rows = "-" if s.rows is None else str(s.rows)
        echo(f"{s.table:<{width}} {version:>7} {rows:>9}  {s.location}")
    return 0


def _cmd_config(args: argparse.Namespace, config: RadlakeConfig) -> int:
    if args.json:
        echo(config.model_dump_json(indent=2, by_alias=True))
    else:
        echo(config_as_yaml(config), end="")
    return 0


def _cmd_setup_jars(args: argparse.Namespace, config: RadlakeConfig) -> int:
    from radlake.errors import SetupError
    from radlake.spark import delta_maven_coordinate, fetch_delta_jars
    from radlake.workflow.class_archive import build_class_archive

    jars = fetch_delta_jars(config.spark.resolved_jars_dir)
    echo(f"{delta_maven_coordinate()}: {len(jars)} jars in {config.spark.resolved_jars_dir}")
    if not config.spark.class_archive:
        return 0
    started = time.perf_counter()
    try:
        archive = build_class_archive(config)
    except SetupError as exc:  # an optimisation only: sessions start without it
        echo(f"JVM class archive not built: {exc}. Spark sessions start without it.")
        return 0
    if archive is None:
        echo("JVM class archive not built: no Java found.")
    else:
        size_mb = archive.stat().st_size / 2**20
        echo(f"JVM class archive: {archive} ({size_mb:.0f} MB, {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
