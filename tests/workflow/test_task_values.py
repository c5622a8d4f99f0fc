"""radlake.workflow.task_values: a no-op locally, every key set through dbutils on Databricks."""

from __future__ import annotations

import pytest

from radlake.workflow import task_values
from radlake.workflow.task_values import MAX_VALUE_BYTES, publish

OUTPUTS = {
    "vertebra_run_id": "0123456789abcdef",
    "vertebra_model": "models:/main.radlake_dev.vertebra_detector/3",
    "vertebra_crops_version": "7",
}


class FakeTaskValues:
    def __init__(self):
        self.values: dict[str, str] = {}

    def set(self, key, value):
        self.values[key] = value


class FakeJobs:
    def __init__(self):
        self.taskValues = FakeTaskValues()


class FakeDbutils:
    def __init__(self):
        self.jobs = FakeJobs()


def test_publish_is_a_noop_locally(monkeypatch):
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)

    def fail():
        raise AssertionError("get_dbutils must not be called off Databricks")

    monkeypatch.setattr(task_values, "get_dbutils", fail)
    assert publish(OUTPUTS) is False


def test_publish_sets_every_key_with_injected_dbutils():
    fake = FakeDbutils()
    assert publish(OUTPUTS, dbutils=fake) is True
    assert fake.jobs.taskValues.values == OUTPUTS


def test_publish_on_databricks_uses_the_runtime_dbutils(monkeypatch):
    fake = FakeDbutils()
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "17.3")
    monkeypatch.setattr(task_values, "get_dbutils", lambda: fake)
    assert publish({"schmorl_run_id": "r1", "schmorl_version": 4, "skipped": None}) is True
    assert fake.jobs.taskValues.values == {"schmorl_run_id": "r1", "schmorl_version": "4"}


def test_publish_on_databricks_without_dbutils_does_nothing(monkeypatch):
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "17.3")
    monkeypatch.setattr(task_values, "get_dbutils", lambda: None)
    assert publish(OUTPUTS) is False


def test_publish_rejects_an_oversized_value_before_setting_anything():
    fake = FakeDbutils()
    with pytest.raises(ValueError, match="too_long"):
        publish({"ok": "1", "too_long": "x" * (MAX_VALUE_BYTES + 1)}, dbutils=fake)
    assert fake.jobs.taskValues.values == {}
