"""Detection metrics on hand-made predictions with known answers."""

import numpy as np
import pytest

from radlake.train.metrics import ImageResult, detection_metrics, match


def _result(pred_boxes, scores, pred_classes, true_boxes, true_classes, study="s1"):
    return ImageResult(
        study,
        "sop",
        0,
        np.array(pred_boxes, np.float32).reshape(-1, 4),
        np.array(scores, np.float32),
        np.array(pred_classes, np.int64),
        np.array(true_boxes, np.float32).reshape(-1, 4),
        np.array(true_classes, np.int64),
    )


def test_perfect_detections_with_one_wrong_level():
    truth = [[0, 0, 10, 10], [0, 20, 10, 30]]
    r = _result(truth, [0.9, 0.8], [3, 5], truth, [3, 4])
    m = detection_metrics([r], score_threshold=0.5, levels=True)
    assert m["map_50"] == pytest.approx(1.0)
    assert m["detection_rate"] == 1.0 and m["fp_per_image"] == 0.0
    assert m["level_id_rate"] == 0.5 and m["study_all_levels"] == 0.0


def test_no_predictions_and_low_scores():
    r = _result([], [], [], [[0, 0, 10, 10]], [3])
    m = detection_metrics([r], score_threshold=0.5, levels=True)
    assert m["detection_rate"] == 0.0 and m["map_50"] == 0.0 and m["level_id_rate"] == 0.0
    low = _result([[0, 0, 10, 10]], [0.2], [3], [[0, 0, 10, 10]], [3])
    assert detection_metrics([low], score_threshold=0.5, levels=False)["detection_rate"] == 0.0


def test_matching_is_greedy_by_score_and_one_to_one():
    r = _result([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60]], [0.6, 0.9, 0.7], [1, 1, 1], [[0, 0, 10, 10]], [1])
    truth_to_pred, matched = match(r, score_threshold=0.5)
    assert truth_to_pred.tolist() == [1]  # the higher-scored overlapping box wins
    assert matched.tolist() == [False, True, False]
    m = detection_metrics([r], score_threshold=0.5, levels=False)
    assert m["fp_per_image"] == 2.0 and "level_id_rate" not in m
