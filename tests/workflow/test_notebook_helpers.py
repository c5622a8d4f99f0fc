"""Notebook parameters: Databricks widgets through dbutils, the command line locally."""

from __future__ import annotations

import pytest

from radlake.workflow.notebook import Widget, common_widgets, read_widgets, split_overrides


class FakeWidgets:
    """The part of ``dbutils.widgets`` the notebooks use, recording what was created."""

    def __init__(self, values: dict[str, str]):
        self.values, self.created = values, {}

    def text(self, name, default, label):
        self.created[name] = ("text", default, None)

    def dropdown(self, name, default, choices, label):
        self.created[name] = ("dropdown", default, tuple(choices))

    def get(self, name):
        return self.values.get(name, self.created[name][1])


class FakeDbutils:
    def __init__(self, values):
        self.widgets = FakeWidgets(values)


WIDGETS = [Widget("detector", "vertebra", choices=("vertebra", "schmorl")), Widget("run_name", "")]


def test_on_databricks_widgets_are_created_with_defaults_and_read_back():
    dbutils = FakeDbutils({"detector": "schmorl"})
    params = read_widgets(WIDGETS, dbutils=dbutils)
    assert params == {"detector": "schmorl", "run_name": ""}
    assert dbutils.widgets.created == {
        "detector": ("dropdown", "vertebra", ("vertebra", "schmorl")),
        "run_name": ("text", "", None),
    }


def test_locally_widgets_are_command_line_options_with_the_same_defaults():
    assert read_widgets(WIDGETS, argv=[]) == {"detector": "vertebra", "run_name": ""}
    assert read_widgets(WIDGETS, argv=["--run-name", "x", "--detector", "schmorl"]) == {
        "detector": "schmorl",
        "run_name": "x",
    }
    assert read_widgets(WIDGETS, argv=["--run_name=y"])["run_name"] == "y"


def test_a_wrong_option_or_choice_is_refused_with_its_name(capsys):
    with pytest.raises(SystemExit):
        read_widgets(WIDGETS, argv=["--detector", "disc"])
    assert "invalid choice: 'disc'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        read_widgets(WIDGETS, argv=["--epochs", "3"])
    assert "unrecognized arguments: --epochs 3" in capsys.readouterr().err


def test_common_widgets_and_overrides(monkeypatch):
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    assert [(w.name, w.default) for w in common_widgets()] == [("conf", "local"), ("set", "")]
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "17.3")
    assert common_widgets()[0].default == "dev"
    assert split_overrides(" a.b=1; ;c.d=x y ") == ["a.b=1", "c.d=x y"]
    with pytest.raises(ValueError, match="not one of"):
        Widget("detector", "disc", choices=("vertebra",))


def test_start_loads_the_conf_and_starts_spark_only_when_used(tmp_path, monkeypatch):
    import mlflow

    from radlake.workflow.notebook import Notebook

    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    monkeypatch.setenv("RADLAKE_NOTEBOOK_OUT", str(tmp_path / "out"))
    tracking, registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    try:
        nb = Notebook.start("04_models", argv=["--set", f"storage.root={tmp_path}; spark.master=local[1]"])
    finally:  # start points MLflow at this notebook's stores: give the other tests theirs back
        mlflow.set_tracking_uri(tracking)
        mlflow.set_registry_uri(registry)
    assert nb.config.storage.root_dir == tmp_path and nb.out_dir == tmp_path / "out"
    assert nb._spark is None  # a notebook reading only MLflow never starts Spark
    calls = []
    monkeypatch.setattr("radlake.spark.get_spark", lambda config, **kw: calls.append((config, kw)) or "session")
    assert nb.spark == "session" and nb.spark == "session"
    assert calls == [(nb.config, {"worker_preload": ("pydicom",)})]  # the notebooks run no model on executors
