"""Shared fixtures: one local Spark + Delta session for the whole test run, in a temporary root."""

from __future__ import annotations

import pytest

from radlake.config import RadlakeConfig, load_config


@pytest.fixture(scope="session")
def radlake_root(tmp_path_factory: pytest.TempPathFactory):
    """A fresh ``storage.root`` for the session: warehouse, MLflow store and caches go here."""
    return tmp_path_factory.mktemp("radlake-root")


@pytest.fixture(scope="session")
def config(radlake_root) -> RadlakeConfig:
    """The local configuration with everything stored under the session's temporary root."""
    return load_config(
        "local",
        overrides=[
            f"storage.root={radlake_root}",
            "environment=test",
            "spark.master=local[2]",
            "spark.shuffle_partitions=2",
            "spark.driver_memory=2g",
        ],
    )


@pytest.fixture(scope="session")
def spark(config):
    """The local Delta-enabled Spark session (built once, stopped at the end)."""
    from radlake.spark import get_spark

    session = get_spark(config)
    yield session
    session.stop()
