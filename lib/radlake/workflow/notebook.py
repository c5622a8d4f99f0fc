"""What the notebooks in ``notebooks/`` share: parameters, the session, showing results.

The notebooks are Databricks source files (``# Databricks notebook source``, cells split by
``# COMMAND ----------``). On Databricks their parameters are widgets and results go to
``display``; the same file run locally as plain Python
(``python notebooks/01_explore_archive.py --conf local --thumbnails 4``) reads its
parameters from the command line, prints tables and saves figures as PNG files.

Every notebook has two parameters besides its own (see :data:`COMMON`): ``conf`` (a
configuration name or YAML path; ``dev`` on Databricks, ``local`` elsewhere) and ``set``
(``key=value`` overrides separated by ``;``, as ``--set`` on the command line).

Example
-------
>>> nb = Notebook.start("01_explore_archive", [Widget("thumbnails", "4")])  # doctest: +SKIP
>>> nb.params["thumbnails"], nb.config.environment  # doctest: +SKIP
('4', 'local')
>>> nb.show(nb.spark.range(3), title="three rows")  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from radlake.config import CONF_DIR_ENV, RadlakeConfig, load_config
from radlake.spark import on_databricks
from radlake.workflow.task_values import get_dbutils

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

#: Environment variable: folder for the figures a notebook saves when run locally
#: (default ``<storage.work_dir>/notebooks/<notebook name>``).
OUT_DIR_ENV = "RADLAKE_NOTEBOOK_OUT"


@dataclass(frozen=True)
class Widget:
    """One notebook parameter: a text widget, or a dropdown when ``choices`` are given."""

    name: str
    default: str
    choices: tuple[str, ...] = ()
    label: str | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"Widget name {self.name!r} must be lower-case letters, digits and '_'.")
        if self.choices and self.default not in self.choices:
            raise ValueError(f"Widget {self.name!r}: default {self.default!r} is not one of {self.choices}.")


def common_widgets() -> list[Widget]:
    """``conf`` (``dev`` on Databricks, ``local`` elsewhere) and ``set`` (overrides, ``;``-separated)."""
    return [
        Widget("conf", "dev" if on_databricks() else "local", label="configuration (name or YAML path)"),
        Widget("set", "", label="overrides key=value;key=value"),
    ]


def read_widgets(
    widgets: Sequence[Widget], *, argv: Sequence[str] | None = None, dbutils: Any | None = None
) -> dict[str, str]:
    """The value of every widget: from ``dbutils.widgets`` on Databricks, else from ``argv``.

    Parameters
    ----------
    widgets
        The notebook's parameters.
    argv
        Local command line (default ``sys.argv[1:]``): ``--name value`` for each widget
        (``-`` and ``_`` both accepted in names).
    dbutils
        Databricks' ``dbutils`` (found automatically on Databricks; tests inject a fake).

    Returns
    -------
    dict[str, str]
        ``{name: value}``; a widget not given keeps its default.

    Raises
    ------
    SystemExit
        Locally, with argparse's message naming the option, for an unknown option or a
        value outside a dropdown's choices.
    """
    if dbutils is None and on_databricks():
        dbutils = get_dbutils()
    if dbutils is not None:
        for w in widgets:
            if w.choices:
                dbutils.widgets.dropdown(w.name, w.default, list(w.choices), w.label or w.name)
            else:
                dbutils.widgets.text(w.name, w.default, w.label or w.name)
        return {w.name: dbutils.widgets.get(w.name) for w in widgets}
    parser = argparse.ArgumentParser(prog=Path(sys.argv[0]).name, description="radlake notebook, run locally")
    for w in widgets:
        parser.add_argument(
            f"--{w.name.replace('_', '-')}",
            f"--{w.name}",
            dest=w.name,
            default=w.default,
            choices=list(w.choices) or None,
            help=w.label,
        )
    return dict(vars(parser.parse_args(list(sys.argv[1:] if argv is None else argv))))


def split_overrides(text: str) -> list[str]:
    """``"a.b=1; c.d=x"`` → ``["a.b=1", "c.d=x"]`` (empty parts dropped)."""
    return [part.strip() for part in text.split(";") if part.strip()]


def _conf_dir_beside_notebooks() -> None:
    """Point ``$RADLAKE_CONF_DIR`` at the project's ``conf/`` when a notebook runs from ``notebooks/``.

    A Databricks notebook's working directory is its own folder (``<bundle>/notebooks``), so
    ``./conf`` is not found there; ``../conf`` is the bundle's synced ``conf/``.
    """
    if os.environ.get(CONF_DIR_ENV) or Path("conf").is_dir():
        return
    beside = Path.cwd().parent / "conf"
    if beside.is_dir():
        os.environ[CONF_DIR_ENV] = str(beside)


@dataclass
class Notebook:
    """A running notebook: its parameters, configuration, Spark session and output folder.

    The Spark session is started on first use of :attr:`spark`: a notebook that only
    reads MLflow (``04_models``) never starts one.
    """

    name: str
    params: dict[str, str]
    config: RadlakeConfig
    out_dir: Path
    figures: list[Path] = field(default_factory=list)
    _spark: SparkSession | None = field(default=None, repr=False)

    @property
    def spark(self) -> SparkSession:
        """The Spark session of :attr:`config` (Databricks' own there), started on first use.

        Started locally, its Python workers preload DICOM reading only (``NO_MODEL_PRELOAD``): the
        notebooks run no model on the executors (training runs on the driver, review reads the
        stored findings). A model run there from a notebook's session still works, each worker
        importing torch itself.
        """
        if self._spark is None:
            from radlake.spark import get_spark
            from radlake.worker_daemon import NO_MODEL_PRELOAD

            self._spark = get_spark(self.config, worker_preload=NO_MODEL_PRELOAD)
        return self._spark

    @classmethod
    def start(
        cls,
        name: str,
        widgets: Sequence[Widget] = (),
        *,
        argv: Sequence[str] | None = None,
        dbutils: Any | None = None,
    ) -> Notebook:
        """Read the parameters, load the configuration and point MLflow at its stores (Spark starts on first use).

        Raises
        ------
        ConfigError
            If ``conf`` names no configuration or ``set`` has an unknown key or a bad value.
        """
        from radlake.tracking import configure_mlflow

        params = read_widgets([*common_widgets(), *widgets], argv=argv, dbutils=dbutils)
        _conf_dir_beside_notebooks()
        config = load_config(params["conf"], overrides=split_overrides(params["set"]))
        configure_mlflow(config)
        out_dir = Path(os.environ.get(OUT_DIR_ENV) or config.storage.work_dir / "notebooks" / name)
        return cls(name=name, params=params, config=config, out_dir=out_dir)

    def show(self, obj: Any, *, title: str | None = None, rows: int = 20) -> Path | None:
        """Show a table or a figure: ``display`` on Databricks, printed or saved as PNG locally.

        Parameters
        ----------
        obj
            A Spark or pandas DataFrame, a matplotlib Figure, a PIL Image, or anything
            JSON-serialisable (printed).
        title
            Printed above the object; locally also the PNG's file name (``<title>.png``).
        rows
            Rows printed of a DataFrame locally.

        Returns
        -------
        Path | None
            The PNG written locally for a figure or image, else None.
        """
        display = _notebook_display()
        if title:
            print(f"\n== {title}")
        if display is not None:
            display(obj)
            return None
        if hasattr(obj, "savefig") or (hasattr(obj, "save") and hasattr(obj, "mode")):
            self.out_dir.mkdir(parents=True, exist_ok=True)
            path = self.out_dir / f"{_slug(title or f'figure_{len(self.figures) + 1:02d}')}.png"
            if hasattr(obj, "savefig"):
                obj.savefig(path, dpi=100, bbox_inches="tight")
                if "matplotlib.pyplot" in sys.modules:  # a pyplot figure: free it
                    sys.modules["matplotlib.pyplot"].close(obj)
            else:
                obj.save(path, format="PNG")
            self.figures.append(path)
            print(f"(figure saved: {path})")
            return path
        if hasattr(obj, "toPandas") and hasattr(obj, "show"):
            obj.show(rows, truncate=False)
        elif hasattr(obj, "to_string"):
            print(obj.head(rows).to_string(index=False) if hasattr(obj, "head") else obj.to_string())
        else:
            print(json.dumps(obj, indent=2, default=str) if isinstance(obj, Mapping | list) else obj)
        return None


def _notebook_display() -> Any | None:
    """Databricks' (or Jupyter's) ``display`` when running in a notebook, else None."""
    if not on_databricks():
        return None
    try:
        from IPython import get_ipython  # type: ignore[import-not-found]
    except ImportError:
        return None
    shell = get_ipython()
    return shell.user_ns.get("display") if shell is not None else None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "figure"
