"""Shipping a model with a Spark Connect session: the parts that need no Spark (the rest: tests/connect/)."""

from __future__ import annotations

import pytest

from radlake.models import shipped
from radlake.models.pyfunc import _mlflow_ships_model


def test_the_digest_follows_names_and_contents(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        (folder / "artifacts").mkdir(parents=True)
        (folder / "MLmodel").write_text("flavors: {}\n")
        (folder / "artifacts" / "weights.pt").write_bytes(b"\x00" * 10)
    assert shipped._digest(a) == shipped._digest(b)
    (b / "artifacts" / "weights.pt").write_bytes(b"\x00" * 9 + b"\x01")
    assert shipped._digest(a) != shipped._digest(b)
    (b / "artifacts" / "weights.pt").rename(b / "artifacts" / "other.pt")
    (b / "artifacts" / "other.pt").write_bytes(b"\x00" * 10)
    assert shipped._digest(a) != shipped._digest(b)


def test_only_a_spark_connect_session_gets_a_model():
    with pytest.raises(ValueError, match="Argument 'spark' must be a Spark Connect session"):
        shipped.ship_model(object(), "models:/m/1")


def test_the_unpacked_model_is_found_in_the_working_directory(tmp_path, monkeypatch):
    name = f"{shipped.ARCHIVE_PREFIX}abc.tar.gz"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=name):
        shipped.shipped_model_dir(name)
    (tmp_path / name).mkdir()
    (tmp_path / name / "MLmodel").write_text("flavors: {}\n")
    assert shipped.shipped_model_dir(name) == tmp_path / name


def test_without_a_databricks_session_radlake_ships_the_model():
    assert _mlflow_ships_model(object()) is False  # no Spark Connect client metadata: not Databricks
