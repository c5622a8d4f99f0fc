"""The ``radlake`` command line (also ``python -m radlake``).

Every subcommand takes ``--conf NAME|PATH`` and any number of ``--set key=value``;
the configuration is loaded and validated before anything else runs, so a wrong key
fails in a second with a message naming it. Errors in radlake's input
(:class:`~radlake.errors.RadlakeError`) print one line and exit with status 2.

``get_args_parser()`` is reusable: ``jobs/*.py`` call :func:`main` with their own
arguments, so a Databricks task and a terminal run the same code.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from radlake import __version__
from radlake.config import RadlakeConfig, config_as_yaml, load_config
from radlake.errors import RadlakeError

Command = Callable[[argparse.Namespace, RadlakeConfig], int]


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--conf",
        default="local",
        metavar="NAME|PATH",
        help="configuration: local (default), dev, prod, or a YAML file path",
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

    p = sub.add_parser(
        "demo",
        parents=[common],
        help="the pipeline end to end on a synthetic archive (what make demo runs)",
    )
    p.add_argument("--out", required=True, help="folder of the synthetic archive (reused when already written)")
    p.add_argument("--studies", type=int, help="number of synthetic studies")
    p.add_argument("--workers", type=int, default=2, help="processes for the synthetic archive")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("tables", parents=[common], help="list radlake's Delta tables with location and version")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_tables)

    p = sub.add_parser("config", parents=[common], help="print the resolved configuration (all defaults filled in)")
    p.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser(
        "setup-jars",
        parents=[common],
        help="fetch the Delta Lake jars beside the installed pyspark (make setup runs this)",
    )
    p.set_defaults(func=_cmd_setup_jars)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit status."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        overrides = list(args.overrides) + _flag_overrides(args)
        config = load_config(args.conf, overrides=overrides)
        return int(args.func(args, config) or 0)
    except RadlakeError as exc:
        print(f"radlake {args.command}: error: {exc}", file=sys.stderr)
        return 2


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
    from radlake.synth import generate_archive

    summary = generate_archive(args.out, config.synth, workers=args.workers)
    print(
        f"Wrote {summary.n_files} DICOM instances for {summary.n_studies} studies "
        f"({summary.n_zip_files} zip files) to {summary.out_dir}; labels: {summary.labels_path}"
    )
    return 0


def _cmd_ingest(args: argparse.Namespace, config: RadlakeConfig) -> int:
    from radlake.ingest.job import run_ingest, write_summary
    from radlake.spark import get_spark

    summary = run_ingest(get_spark(config), config, archive=args.archive)
    print(json.dumps(summary.as_dict(), indent=2))
    if args.summary_json:
        write_summary(summary, args.summary_json)
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
        print(json.dumps([asdict(s) for s in statuses], indent=2))
        return 0
    print(f"{'table':<12} {'version':>7} {'rows':>9}  location")
    for s in statuses:
        version = "-" if s.version is None else str(s.version)
        rows = "-" if s.rows is None else str(s.rows)
        print(f"{s.table:<12} {version:>7} {rows:>9}  {s.location}")
    return 0


def _cmd_config(args: argparse.Namespace, config: RadlakeConfig) -> int:
    if args.json:
        print(config.model_dump_json(indent=2, by_alias=True))
    else:
        print(config_as_yaml(config), end="")
    return 0


def _cmd_setup_jars(args: argparse.Namespace, config: RadlakeConfig) -> int:
    from radlake.spark import delta_maven_coordinate, fetch_delta_jars

    jars = fetch_delta_jars(config.spark.resolved_jars_dir)
    print(f"{delta_maven_coordinate()}: {len(jars)} jars in {config.spark.resolved_jars_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
