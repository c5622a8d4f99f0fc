"""The train / validation / test split, by study, fixed once drawn: the ``splits`` Delta table.

Rules
-----
* **By study.** Every frame of a study is in its study's split; slices, series and images
  of one study never straddle two splits.
* **Deterministic.** The studies of a batch are ordered by ``sha256(f"{seed}:{study_uid}")``
  (hex digest, then the UID) with ``seed = labels.split_seed``; the first
  ``round(n * test_fraction)`` go to ``test``, the next ``round(n * val_fraction)`` to
  ``val``, the rest to ``train`` (rounding half up). In a batch of three or more studies
  ``val`` and ``test`` get at least one study each (when their fraction is above 0), and
  ``train`` keeps at least one.
* **Fixed for good.** A study in the table keeps its split: every later stage and re-run
  reads the same one. :func:`assign_splits` only assigns studies that are in ``images`` but
  not yet in ``splits``, as a batch of their own, in one insert-only MERGE (a re-run with
  nothing new commits nothing).
* **One seed per table.** Asking for another ``split_seed`` than the table holds raises
  :class:`SplitSeedError` unless ``force=True``, which redraws every study with the new
  seed in one overwrite (the frozen test set changes: models evaluated on the old one are
  no longer comparable).

Example
-------
>>> from radlake.config import load_config
>>> from radlake.spark import get_spark
>>> cfg = load_config()                                       # doctest: +SKIP
>>> spark = get_spark(cfg)                                    # doctest: +SKIP
>>> assign_splits(spark, cfg).new_by_split                    # doctest: +SKIP
{'train': 8, 'val': 2, 'test': 2}
>>> read_split(spark, cfg, "test").count()                    # doctest: +SKIP
2

"""

from __future__ import annotations

import hashlib
import math
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from radlake.config import RadlakeConfig
from radlake.console import say
from radlake.data.schema import SPLITS
from radlake.errors import RadlakeError
from radlake.spark import local_frame
from radlake.summary import Summary
from radlake.tables import Table, table_ref
from radlake.vocabulary import Split

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "Split",
    "SplitSeedError",
    "SplitSummary",
    "SplitsError",
    "assign_splits",
    "check_split_seed",
    "draw_splits",
    "read_split",
    "split_sizes",
]


class SplitsError(RadlakeError):
    """The split cannot be assigned or read (for example, a table it needs does not exist)."""


class SplitSeedError(SplitsError):
    """``labels.split_seed`` differs from the seed the ``splits`` table was drawn with."""


@dataclass(frozen=True)
class SplitSummary(Summary):
    """What one :func:`assign_splits` call did.

    ``new_by_split`` counts the studies assigned by this call; ``table_by_split`` counts
    every study in the table afterwards. ``rebuilt`` is true when ``force`` redrew the table
    with a new seed (``previous_seeds`` are the seeds it held before).
    """

    run_id: str
    split_seed: int
    studies_in_images: int
    already_assigned: int
    new_studies: int
    new_by_split: dict[str, int]
    table_by_split: dict[str, int]
    rebuilt: bool
    previous_seeds: list[int]
    seconds: float


def split_sizes(n: int, *, val_fraction: float, test_fraction: float) -> dict[Split, int]:
    """How many of ``n`` studies go to each split.

    Parameters
    ----------
    n
        Studies in the batch (>= 0).
    val_fraction, test_fraction
        Shares of the batch, each in [0, 1), summing to less than 1.

    Returns
    -------
    dict[Split, int]
        ``test = round(n * test_fraction)``, ``val = round(n * val_fraction)`` (half up), at
        least 1 each when ``n >= 3`` and the fraction is above 0, then reduced (val first)
        until ``train`` has at least one study; ``train`` gets the rest.

    Raises
    ------
    ValueError
        If ``n`` is negative or a fraction is out of range.

    Examples
    --------
    >>> split_sizes(20, val_fraction=0.15, test_fraction=0.15)
    {<Split.TRAIN: 'train'>: 14, <Split.VAL: 'val'>: 3, <Split.TEST: 'test'>: 3}
    >>> {s.value: k for s, k in split_sizes(3, val_fraction=0.1, test_fraction=0.1).items()}
    {'train': 1, 'val': 1, 'test': 1}
    """
    if n < 0:
        raise ValueError(f"Argument 'n' must be >= 0, got {n}.")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise ValueError(f"Argument '{name}' must be in [0, 1), got {value}.")
    if val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}.")
    n_test = math.floor(n * test_fraction + 0.5)
    n_val = math.floor(n * val_fraction + 0.5)
    if n >= 3:
        n_test = max(n_test, 1 if test_fraction > 0 else 0)
        n_val = max(n_val, 1 if val_fraction > 0 else 0)
    while n > 0 and n_test + n_val > n - 1:
        if n_val >= n_test and n_val > 0:
            n_val -= 1
        else:
            n_test -= 1
    return {Split.TRAIN: n - n_test - n_val, Split.VAL: n_val, Split.TEST: n_test}


def draw_splits(study_uids: Iterable[str], *, seed: int, val_fraction: float, test_fraction: float) -> dict[str, Split]:
    """Assign one batch of studies to splits (pure function; see the module docstring).

    Parameters
    ----------
    study_uids
        StudyInstanceUIDs of the batch (duplicates are ignored; order does not matter).
    seed
        ``labels.split_seed``.
    val_fraction, test_fraction
        Shares of the batch (see :func:`split_sizes`).

    Returns
    -------
    dict[str, Split]
        StudyInstanceUID → split.

    Examples
    --------
    >>> drawn = draw_splits(["1.1", "1.2", "1.3"], seed=0, val_fraction=0.2, test_fraction=0.2)
    >>> sorted(s.value for s in drawn.values())
    ['test', 'train', 'val']
    """
    ordered = sorted(set(study_uids), key=lambda uid: (hashlib.sha256(f"{seed}:{uid}".encode()).hexdigest(), uid))
    sizes = split_sizes(len(ordered), val_fraction=val_fraction, test_fraction=test_fraction)
    labels = [Split.TEST] * sizes[Split.TEST] + [Split.VAL] * sizes[Split.VAL] + [Split.TRAIN] * sizes[Split.TRAIN]
    return dict(zip(ordered, labels, strict=True))


def check_split_seed(spark: SparkSession, config: RadlakeConfig) -> list[int]:
    """Raise if the ``splits`` table was drawn with another seed than ``labels.split_seed``.

    Returns
    -------
    list[int]
        The seeds in the table (empty when it does not exist or is empty).

    Raises
    ------
    SplitSeedError
        If the table holds another seed; the message says how to keep or redraw the split.
    """
    seeds = _table_seeds(spark, config)
    wanted = config.labels.split_seed
    if seeds and seeds != [wanted]:
        ref = table_ref(config, Table.SPLITS)
        raise SplitSeedError(
            f"The splits table ({ref.location}) was drawn with split_seed {', '.join(map(str, seeds))} but "
            f"labels.split_seed is {wanted}. Keep the split with --set labels.split_seed={seeds[0]}, or redraw "
            f"every study with `radlake labels split --force` (the frozen test set changes)."
        )
    return seeds


def assign_splits(spark: SparkSession, config: RadlakeConfig, *, force: bool = False) -> SplitSummary:
    """Give every study in ``images`` that has no split yet its split; existing ones keep theirs.

    Parameters
    ----------
    spark
        The Delta-enabled session.
    config
        Supplies ``labels.split_seed``, ``labels.val_fraction``, ``labels.test_fraction`` and
        the table locations.
    force
        Redraw every study with ``labels.split_seed`` when the table holds another seed
        (one overwrite). Without it a seed change raises.

    Returns
    -------
    SplitSummary

    Raises
    ------
    SplitsError
        If the ``images`` table does not exist.
    SplitSeedError
        If the table was drawn with another seed and ``force`` is false.
    """
    started = time.perf_counter()
    images_ref = table_ref(config, Table.IMAGES)
    if not images_ref.exists(spark):
        raise SplitsError(f"Table 'images' ({images_ref.location}) does not exist: run `radlake ingest` first.")
    labels = config.labels
    ref = table_ref(config, Table.SPLITS)
    ref.ensure(spark, SPLITS)
    held = ref.read(spark).select("study_instance_uid", "split", "split_seed").collect()
    seeds = sorted({int(r["split_seed"]) for r in held})
    rebuild = bool(seeds) and seeds != [labels.split_seed]
    if rebuild and not force:
        check_split_seed(spark, config)  # raises, naming both seeds and the way out
    studies = {
        r["study_instance_uid"]
        for r in images_ref.read(spark)
        .where("study_instance_uid IS NOT NULL")
        .select("study_instance_uid")
        .distinct()
        .collect()
    }
    existing = {r["study_instance_uid"] for r in held}
    # A rebuild redraws every study, also those no longer in images; otherwise only the new ones.
    batch = studies | existing if rebuild else studies - existing
    drawn = draw_splits(
        batch, seed=labels.split_seed, val_fraction=labels.val_fraction, test_fraction=labels.test_fraction
    )
    run_id = uuid.uuid4().hex
    now = datetime.now(UTC)
    rows = local_frame(
        spark, [(uid, split.value, labels.split_seed, now, run_id) for uid, split in sorted(drawn.items())], SPLITS
    )
    if rebuild:
        ref.overwrite(rows)
    elif drawn:
        ref.merge(spark, rows, keys=["study_instance_uid"])
    table = {} if rebuild else {r["study_instance_uid"]: r["split"] for r in held}
    table.update({uid: split.value for uid, split in drawn.items()})
    return SplitSummary(
        run_id=run_id,
        split_seed=labels.split_seed,
        studies_in_images=len(studies),
        already_assigned=0 if rebuild else len(existing & studies),
        new_studies=len(drawn),
        new_by_split={s.value: sum(1 for v in drawn.values() if v is s) for s in Split},
        table_by_split={s.value: sum(1 for v in table.values() if v == s.value) for s in Split},
        rebuilt=rebuild,
        previous_seeds=seeds,
        seconds=round(time.perf_counter() - started, 2),
    )


def read_split(spark: SparkSession, config: RadlakeConfig, split: Split | str) -> DataFrame:
    """The StudyInstanceUIDs of one split (one column, ``study_instance_uid``).

    Parameters
    ----------
    split
        ``train``, ``val`` or ``test`` (or a :class:`Split`).

    Raises
    ------
    ValueError
        If ``split`` is not a split name.
    SplitsError
        If the ``splits`` table does not exist yet.
    """
    try:
        split_ = Split(split)
    except ValueError:
        known = ", ".join(s.value for s in Split)
        raise ValueError(f"Argument 'split' must be one of {known}, got {split!r}.") from None
    ref = table_ref(config, Table.SPLITS)
    if not ref.exists(spark):
        raise SplitsError(f"Table 'splits' ({ref.location}) does not exist: run `radlake labels split` first.")
    return ref.read(spark).where(F.col("split") == split_.value).select("study_instance_uid")


def _table_seeds(spark: SparkSession, config: RadlakeConfig) -> list[int]:
    ref = table_ref(config, Table.SPLITS)
    if not ref.exists(spark):
        return []
    return sorted(int(r["split_seed"]) for r in ref.read(spark).select("split_seed").distinct().collect())


def import_labels_and_split(spark: SparkSession, config: RadlakeConfig, file=None):
    """``radlake labels import``: check the split seed, import ``file``, then split the new studies.

    The seed is checked first, so a seed change fails before anything is written.
    Returns ``(LabelsImportSummary, SplitSummary)``.
    """
    from radlake.data.labels import import_labels

    check_split_seed(spark, config)
    say("labels: importing %s", file or config.labels.file)
    labels = import_labels(spark, config, file)
    say("labels: assigning train / val / test to new studies")
    return labels, assign_splits(spark, config)
