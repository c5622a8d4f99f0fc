"""Negative subsampling of a training split: every positive kept, negatives drawn by seed, repeatably."""

from __future__ import annotations

from radlake.train.run import subsample_negatives


def _rows(spark, n_pos: int, n_neg: int):
    data = [(f"1.{i}", 0, bytes([i % 256]) * 8, [1] if i < n_pos else []) for i in range(n_pos + n_neg)]
    return spark.createDataFrame(data, "sop_instance_uid string, frame_index int, pixels binary, labels array<int>")


def test_keeps_every_positive_and_about_the_asked_share_of_negatives(spark):
    rows = _rows(spark, 50, 950)
    kept = subsample_negatives(rows, 2.0, seed=0)
    labels = [len(r.labels) for r in kept.collect()]
    assert labels.count(1) == 50
    assert 60 <= labels.count(0) <= 140  # about 2 per positive (100 expected)
    again = {r.sop_instance_uid for r in subsample_negatives(rows, 2.0, seed=0).collect()}
    assert again == {r.sop_instance_uid for r in kept.collect()}
    other = {r.sop_instance_uid for r in subsample_negatives(rows, 2.0, seed=1).collect()}
    assert other != again


def test_nothing_to_draw_keeps_every_row(spark):
    assert subsample_negatives(_rows(spark, 0, 20), 2.0, seed=0).count() == 20
    assert subsample_negatives(_rows(spark, 5, 5), 2.0, seed=0).count() == 10  # fewer negatives than asked
