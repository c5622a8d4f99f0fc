"""The level vocabulary and the joint decoding of levels over a frame's or a stack's bodies."""

import numpy as np
import pytest

from radlake.models.levels import (
    ANCHOR_LEVELS,
    LEVELS,
    VERTEBRA_CLASSES,
    Body,
    class_of_level,
    class_to_level,
    decode_levels,
    label_stack,
    level_scores,
    level_to_class,
    link_tracks,
)
from radlake.vocabulary import LevelStatus

#: Centre-to-centre distance and box height of adjacent lumbar bodies (mm).
STEP, HEIGHT = 38.0, 34.0


def test_level_class_round_trip_and_unknown_level():
    assert [class_to_level(level_to_class(level)) for level in LEVELS] == list(LEVELS)
    assert level_to_class("C2") == 1
    with pytest.raises(ValueError, match="L6"):
        level_to_class("L6")


def test_each_level_has_the_class_that_stands_for_it():
    classes = class_of_level(VERTEBRA_CLASSES)
    assert classes[LEVELS.index("S1")] == VERTEBRA_CLASSES.index("S1")
    assert classes[LEVELS.index("L5")] == VERTEBRA_CLASSES.index("L5")
    assert classes[LEVELS.index("L3")] == classes[LEVELS.index("T9")] == VERTEBRA_CLASSES.index("vertebra")
    # Detectors logged before the anchor classes had one class per level.
    assert class_of_level(LEVELS).tolist() == list(range(len(LEVELS)))
    with pytest.raises(ValueError, match="no class for levels"):
        class_of_level(("L5", "S1"))


def _evidence(looks: list[str], confidence: float = 0.8, other: float = 0.03) -> np.ndarray:
    """Level scores of bodies that look like ``looks``: an anchor level, or any other body (``"v"``)."""
    per_class = np.full((len(looks), len(VERTEBRA_CLASSES)), other)
    for i, look in enumerate(looks):
        per_class[i, VERTEBRA_CLASSES.index(look if look in ANCHOR_LEVELS else "vertebra")] = confidence
    return level_scores(per_class, VERTEBRA_CLASSES)


def _names(decoded) -> list[str | None]:
    return decoded.names()


def _decode(looks, positions, *, views=3.0, confidence=0.8, scores=None):
    """Decode bodies that look like ``looks`` at ``positions`` (mm), each seen on ``views`` frames."""
    evidence = _evidence(looks, confidence) if scores is None else scores
    n = len(looks)
    sure = np.full(n, confidence) if np.ndim(confidence) == 0 else np.asarray(confidence)
    return decode_levels(np.asarray(positions, float), np.full(n, HEIGHT), evidence, sure, weights=np.full(n, views))


def test_a_visible_sacrum_names_every_body_above_it():
    looks = ["v", "v", "v", "v", "v", "v", "L5", "S1"]
    decoded = _decode(looks, np.arange(len(looks)) * STEP)
    assert _names(decoded) == ["T11", "T12", "L1", "L2", "L3", "L4", "L5", "S1"]
    assert (decoded.probability > 0.95).all() and not decoded.uncertain.any()


def test_input_order_does_not_matter():
    looks = ["v", "v", "L5", "S1"]
    shuffle = np.array([2, 0, 3, 1])
    decoded = _decode([looks[i] for i in shuffle], (np.arange(4) * STEP)[shuffle])
    assert _names(decoded) == ["L5", "L3", "S1", "L4"]


def test_without_an_anchor_in_view_the_levels_are_uncertain_not_guessed():
    decoded = _decode(["v"] * 5, np.arange(5) * STEP)
    assert decoded.uncertain.all()
    assert _names(decoded) == [None] * 5
    assert (decoded.probability < 0.5).all()


def test_a_missed_body_is_a_gap_of_two_steps_not_a_shift():
    # L4 was not detected: L3 and L5 are two steps apart, and the levels above stay right.
    decoded = _decode(["v", "v", "v", "L5", "S1"], np.array([0, 1, 2, 4, 5]) * STEP)
    assert _names(decoded) == ["L1", "L2", "L3", "L5", "S1"]


def test_a_weak_body_below_s1_is_outside_the_labelled_levels():
    # S2 detected weakly as a plain body under a clear S1: a duplicate at the sacrum must not shift the count.
    looks = ["v", "v", "L5", "S1", "v"]
    confidence = np.array([0.8, 0.8, 0.8, 0.8, 0.4])
    scores = _evidence(looks)
    scores[4] *= 0.5
    decoded = _decode(looks, np.arange(5) * STEP, confidence=confidence, scores=scores)
    assert _names(decoded)[:4] == ["L3", "L4", "L5", "S1"]
    assert decoded.levels[4] == -1
    assert LevelStatus.of(int(decoded.levels[4]), bool(decoded.uncertain[4])) is LevelStatus.OUTSIDE


def test_l5_alone_anchors_a_series_cut_above_the_sacrum():
    decoded = _decode(["v", "v", "v", "v", "L5"], np.arange(5) * STEP)
    assert _names(decoded) == ["L1", "L2", "L3", "L4", "L5"]


def test_one_frame_weighs_less_than_a_stack():
    looks = ["v", "v", "v", "v", "L5"]
    one = _decode(looks, np.arange(5) * STEP, views=1.0)
    three = _decode(looks, np.arange(5) * STEP, views=3.0)
    assert (one.probability < three.probability).all()


def test_empty_and_shape_errors():
    empty = decode_levels(np.zeros(0), np.zeros(0), np.zeros((0, len(LEVELS))), np.zeros(0))
    assert empty.levels.shape == (0,) and label_stack([]).levels.shape == (0,)
    with pytest.raises(ValueError, match="shapes"):
        decode_levels(np.zeros(3), np.zeros(3), np.zeros((3, 5)), np.zeros(3))


def _stack(slices: dict[float, list[str]], *, shift_mm: float = 0.0) -> list[Body]:
    """Bodies of a sagittal stack: per slice position (mm), the looks of its bodies, head to feet.

    Off the midline a body's cross-section is smaller and its detection weaker (partial volume).
    """
    bodies = []
    for position, looks in slices.items():
        lateral = abs(position) > 1.0
        scores = _evidence(looks, confidence=0.5 if lateral else 0.8)
        for k in range(len(looks)):
            bodies.append(
                Body(
                    slice_position_mm=position,
                    center_uv_mm=(100.0 + shift_mm * position, 50.0 + k * STEP),
                    size_uv_mm=(30.0 if lateral else 35.0, HEIGHT * (0.8 if lateral else 1.0)),
                    caudal_uv=(0.0, 1.0),
                    score=0.5 if lateral else 0.8,
                    level_scores=scores[k],
                )
            )
    return bodies


def test_tracks_join_the_same_vertebra_across_slices():
    bodies = _stack({-4.0: ["v", "v"], 0.0: ["v", "v"], 4.0: ["v"]}, shift_mm=0.5)
    tracks = link_tracks(bodies)
    assert tracks.tolist() == [0, 1, 0, 1, 0]  # the first vertebra on three slices, the second on two


def test_the_mid_sagittal_anchor_labels_the_lateral_slices():
    # Only the middle slice shows L5 and S1 as such; the lateral ones see plain bodies, one of them
    # not the lowest ones at all.
    stack = {
        -4.0: ["v", "v", "v", "v", "v", "v"],
        0.0: ["v", "v", "v", "v", "L5", "S1"],
        4.0: ["v", "v", "v", "v"],
    }
    decoded = label_stack(_stack(stack))
    names = decoded.names()
    assert names[:6] == ["L1", "L2", "L3", "L4", "L5", "S1"]  # lateral slice, from the middle one's anchor
    assert names[12:] == ["L1", "L2", "L3", "L4"]
    assert not decoded.uncertain.any()
    # The lateral slices alone would not know.
    assert label_stack(_stack({-4.0: stack[-4.0]})).uncertain.all()
