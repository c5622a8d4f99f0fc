"""The session-kind switches of radlake.spark that need no Spark: a Spark Connect session that refuses to cache."""

from __future__ import annotations

import pytest

import radlake.spark
from radlake.spark import persist, unpersist


class _RefusingFrame:
    """A DataFrame stand-in on a session that cannot cache (Databricks serverless)."""

    sparkSession = object()

    def __init__(self) -> None:
        self.calls: list[str] = []

    def persist(self, level):
        self.calls.append("persist")
        raise RuntimeError("[NOT_SUPPORTED_WITH_SERVERLESS] PERSIST TABLE is not supported on serverless compute.")

    def unpersist(self):
        self.calls.append("unpersist")
        raise RuntimeError("[NOT_SUPPORTED_WITH_SERVERLESS] UNPERSIST is not supported on serverless compute.")


def test_a_connect_session_that_cannot_cache_gets_the_frame_back(monkeypatch):
    monkeypatch.setattr(radlake.spark, "is_connect", lambda spark: True)
    frame = _RefusingFrame()
    assert persist(frame) is frame
    unpersist(frame)
    assert frame.calls == ["persist", "unpersist"]


def test_a_classic_session_that_cannot_cache_raises(monkeypatch):
    monkeypatch.setattr(radlake.spark, "is_connect", lambda spark: False)
    with pytest.raises(RuntimeError, match="NOT_SUPPORTED"):  # a classic session's error is not hidden
        persist(_RefusingFrame())
