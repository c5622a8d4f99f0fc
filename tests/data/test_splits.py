"""The study-level split: one split per study, deterministic by seed, fixed once assigned."""

from __future__ import annotations

import pytest
from pyspark.sql import functions as F

from radlake.data.splits import SplitSeedError, assign_splits, draw_splits, read_split, split_sizes
from radlake.tables import Table, table_ref
from radlake.vocabulary import Split


def _table(spark, config) -> dict[str, str]:
    return {r.study_instance_uid: r.split for r in table_ref(config, Table.SPLITS).read(spark).collect()}


def _frames(studies: range) -> list[tuple]:
    """Two frames (slices) per hand-made study, so a study split across slices would show."""
    return [(f"2.{s}.{k}", 0, f"2.{s}", 64, 64, [1.0, 1.0]) for s in studies for k in range(2)]


@pytest.mark.parametrize(
    ("n", "val", "test", "expected"),
    [
        (0, 0.15, 0.15, (0, 0, 0)),
        (2, 0.15, 0.15, (2, 0, 0)),
        (3, 0.15, 0.15, (1, 1, 1)),
        (4, 0.15, 0.15, (2, 1, 1)),
        (10, 0.15, 0.15, (6, 2, 2)),  # 1.5 rounds half up
        (20, 0.15, 0.15, (14, 3, 3)),
        (100, 0.1, 0.2, (70, 10, 20)),
        (5, 0.0, 0.2, (4, 0, 1)),  # a zero fraction gets no minimum
        (3, 0.45, 0.45, (1, 1, 1)),  # train keeps at least one
    ],
)
def test_split_sizes_are_exact_proportions(n, val, test, expected):
    sizes = split_sizes(n, val_fraction=val, test_fraction=test)
    assert (sizes[Split.TRAIN], sizes[Split.VAL], sizes[Split.TEST]) == expected


def test_draw_is_deterministic_by_seed_and_order_free():
    uids = [f"1.2.{i}" for i in range(40)]
    kwargs = {"val_fraction": 0.15, "test_fraction": 0.15}
    first = draw_splits(uids, seed=5, **kwargs)
    assert draw_splits(reversed(uids), seed=5, **kwargs) == first
    assert draw_splits(uids, seed=6, **kwargs) != first
    assert [sum(1 for v in first.values() if v is s) for s in Split] == [28, 6, 6]


def test_every_study_is_in_exactly_one_split(spark, labelled_archive):
    la = labelled_archive
    images = table_ref(la.config, Table.IMAGES).read(spark)
    studies = {r[0] for r in images.select("study_instance_uid").distinct().collect()}
    table = _table(spark, la.config)
    assert set(table) == studies and len(studies) == 4
    assert table_ref(la.config, Table.SPLITS).read(spark).count() == 4
    assert sorted(table.values()) == ["test", "train", "train", "val"]
    assert la.splits.new_by_split == la.splits.table_by_split == {"train": 2, "val": 1, "test": 1}
    # No study straddles two splits: every frame of a study carries its study's split.
    per_study = (
        images.join(table_ref(la.config, Table.SPLITS).read(spark), "study_instance_uid")
        .groupBy("study_instance_uid")
        .agg(F.countDistinct("split").alias("n"))
    )
    assert {r.n for r in per_study.collect()} == {1}
    by_read = {s.value: {r[0] for r in read_split(spark, la.config, s).collect()} for s in Split}
    assert set().union(*by_read.values()) == studies and sum(len(v) for v in by_read.values()) == 4
    with pytest.raises(ValueError, match="'split' must be one of train, val, test"):
        read_split(spark, la.config, "validation")


def test_same_seed_same_table_and_reruns_keep_it(spark, labelled_archive, make_config):
    la = labelled_archive
    ref = table_ref(la.config, Table.SPLITS)
    version, before = ref.version(spark), _table(spark, la.config)
    again = assign_splits(spark, la.config)
    assert again.new_studies == 0 and again.already_assigned == 4
    assert ref.version(spark) == version and _table(spark, la.config) == before
    # The same seed on a fresh table draws the same split.
    fresh = make_config(la.config.storage.root, "tables.splits=splits_again")
    assign_splits(spark, fresh)
    assert _table(spark, fresh) == before
    assert before == {
        uid: s.value for uid, s in draw_splits(before, seed=0, val_fraction=0.15, test_fraction=0.15).items()
    }


def test_new_studies_are_a_batch_of_their_own_and_a_seed_change_is_refused(
    spark, tmp_path_factory, make_config, add_images
):
    cfg = make_config(tmp_path_factory.mktemp("splits"))
    add_images(cfg, _frames(range(6)))
    first = assign_splits(spark, cfg)
    assert first.new_by_split == {"train": 4, "val": 1, "test": 1}
    before = _table(spark, cfg)

    add_images(cfg, _frames(range(6, 9)))
    second = assign_splits(spark, cfg)
    after = _table(spark, cfg)
    assert {uid: after[uid] for uid in before} == before  # the old studies kept their split
    new = {uid: after[uid] for uid in set(after) - set(before)}
    assert new == {
        uid: s.value
        for uid, s in draw_splits(new, seed=cfg.labels.split_seed, val_fraction=0.15, test_fraction=0.15).items()
    }
    assert sorted(new.values()) == ["test", "train", "val"]  # drawn as a batch of 3, not with the old 6
    assert second.new_studies == 3 and second.already_assigned == 6
    assert second.table_by_split == {"train": 5, "val": 2, "test": 2}
    runs = table_ref(cfg, Table.SPLITS).read(spark).groupBy("assign_run_id").count().collect()
    assert sorted(r["count"] for r in runs) == [3, 6]

    reseeded = make_config(cfg.storage.root, "labels.split_seed=1")
    with pytest.raises(SplitSeedError, match=r"split_seed 0 but labels.split_seed is 1.*--force"):
        assign_splits(spark, reseeded)
    assert _table(spark, cfg) == after
    rebuilt = assign_splits(spark, reseeded, force=True)
    assert rebuilt.rebuilt and rebuilt.previous_seeds == [0] and rebuilt.new_studies == 9
    seeds = {r[0] for r in table_ref(cfg, Table.SPLITS).read(spark).select("split_seed").distinct().collect()}
    assert seeds == {1}
    redrawn = draw_splits(after, seed=1, val_fraction=0.15, test_fraction=0.15)
    assert _table(spark, cfg) == {uid: s.value for uid, s in redrawn.items()}
