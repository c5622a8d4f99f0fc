"""Level vocabulary and the consecutive-run labelling of detected bodies."""

import numpy as np
import pytest

from radlake.models.levels import LEVELS, assign_levels, class_to_level, level_to_class


def test_level_class_round_trip_and_unknown_level():
    assert [class_to_level(level_to_class(level)) for level in LEVELS] == list(LEVELS)
    assert level_to_class("C2") == 1
    with pytest.raises(ValueError, match="L6"):
        level_to_class("L6")


def _one_hot(levels):
    scores = np.zeros((len(levels), len(LEVELS)))
    for i, level in enumerate(levels):
        scores[i, LEVELS.index(level)] = 1.0
    return scores


def test_run_follows_the_rows_not_the_input_order():
    rows = np.array([310.0, 40.0, 250.0, 100.0, 180.0])
    scores = _one_hot(["S1", "L2", "L5", "L3", "L2"])  # the last box (row 180) is called L2 weakly
    scores[4] *= 0.3
    got = [LEVELS[i] for i in assign_levels(rows, scores)]
    assert got == ["S1", "L2", "L5", "L3", "L4"]


def test_single_wrong_vote_is_outvoted_by_its_neighbours():
    rows = np.arange(6) * 50.0
    votes = ["T11", "T12", "L1", "L1", "L3", "L4"]  # the fourth body is called L1 but sits between L1 and L3
    got = [LEVELS[i] for i in assign_levels(rows, _one_hot(votes))]
    assert got == ["T11", "T12", "L1", "L2", "L3", "L4"]


def test_empty_and_too_many_boxes():
    assert assign_levels(np.zeros(0), np.zeros((0, len(LEVELS)))).shape == (0,)
    many = np.random.default_rng(0).random((len(LEVELS) + 2, len(LEVELS)))
    assert (assign_levels(np.arange(len(many), dtype=float), many) == many.argmax(1)).all()
