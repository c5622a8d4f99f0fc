"""Detection metrics on hand-made predictions with known answers."""

import numpy as np
import pytest

from radlake.train.metrics import (
    FROC_RATES,
    ImageResult,
    ap_at_iou,
    archive_metrics,
    crop_auc,
    detection_metrics,
    froc,
    lesion_metrics,
    level_metrics,
    match,
)


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
    assert m["level_wrong_rate"] == 0.5 and m["level_right_or_uncertain_rate"] == 0.5
    # The wrong one marked uncertain instead (class 0): not identified, but no longer misleading.
    m = detection_metrics([_result(truth, [0.9, 0.8], [3, 0], truth, [3, 4])], score_threshold=0.5, levels=True)
    assert m["level_id_rate"] == 0.5 and m["level_uncertain_rate"] == 0.5
    assert m["level_wrong_rate"] == 0.0 and m["level_right_or_uncertain_rate"] == 1.0


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


FAR = [100, 100, 110, 110]  # overlaps no true box below


def _froc_set():
    """2 images, 3 lesions; pooled by score: 0.9 TP, 0.8 FP (duplicate), 0.7 FP, 0.6 TP, 0.5 TP, 0.3 FP."""
    a = _result([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], [0.9, 0.8, 0.6], [1] * 3,
                [[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1])  # fmt: skip
    b = _result([FAR, [0, 0, 10, 10], [200, 200, 210, 210]], [0.7, 0.5, 0.3], [1] * 3, [[0, 0, 10, 10]], [1])
    return [a, b]


def test_froc_hand_computed():
    m = froc(_froc_set())
    # FP per image after each score: 0, 0.5, 1, 1, 1, 1.5; found lesions: 1, 1, 1, 2, 3, 3 of 3.
    assert m["froc_sens_at_0p25fp"] == pytest.approx(1 / 3)
    assert m["froc_sens_at_0p5fp"] == pytest.approx(1 / 3)
    assert m["froc_sens_at_1fp"] == pytest.approx(1.0)
    assert m["froc_sens_at_2fp"] == m["froc_sens_at_4fp"] == pytest.approx(1.0)
    assert m["froc_mean"] == pytest.approx((1 / 3 + 1 / 3 + 1 + 1 + 1) / 5)
    assert len(m) == len(FROC_RATES) + 1


def test_froc_duplicate_on_a_lesion_is_a_false_positive():
    r = _result([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8], [1, 1], [[0, 0, 10, 10]], [1])
    m = froc([r], rates=(0.5, 1.0))
    assert m["froc_sens_at_0p5fp"] == 1.0  # found by the first box, before any FP
    m = froc([r, _result([], [], [], [[0, 0, 10, 10]], [1])], rates=(0.25,))
    assert m["froc_sens_at_0p25fp"] == 0.5  # 1 of 2 lesions, 0 FP over 2 images
    assert froc([r], rates=(0.5,), iou=0.99)["froc_sens_at_0p5fp"] == 1.0  # exact box: IoU 1


def test_froc_equal_scores_enter_together():
    # The hit comes first in array order: splitting the tie would give sensitivity 1 at 0 FP.
    r = _result([[0, 0, 10, 10], FAR], [0.8, 0.8], [1, 1], [[0, 0, 10, 10]], [1])
    m = froc([r], rates=(0.5, 1.0))
    assert m["froc_sens_at_0p5fp"] == 0.0
    assert m["froc_sens_at_1fp"] == 1.0


def test_froc_iou_threshold():
    r = _result([[0, 0, 10, 4]], [0.9], [1], [[0, 0, 10, 10]], [1])  # IoU 0.4
    assert froc([r], rates=(1.0,))["froc_sens_at_1fp"] == 1.0
    assert froc([r], rates=(1.0,), iou=0.5)["froc_sens_at_1fp"] == 0.0


def test_froc_without_truth_is_nan():
    m = froc([_result([FAR], [0.9], [1], [], [])])
    assert all(np.isnan(v) for v in m.values()) and "froc_mean" in m


def test_crop_auc():
    lesion = [[0, 0, 10, 10]]
    pos_hi, neg_lo = _result(lesion, [0.9], [1], lesion, [1]), _result(lesion, [0.2], [1], [], [])
    assert crop_auc([pos_hi, neg_lo]) == 1.0
    pos_lo, neg_hi = _result(lesion, [0.1], [1], lesion, [1]), _result(lesion, [0.8], [1], [], [])
    assert crop_auc([pos_lo, neg_hi]) == 0.0
    empty_neg = _result([], [], [], [], [])  # no prediction: score 0.0
    assert crop_auc([pos_lo, empty_neg, neg_hi]) == pytest.approx(0.5)
    assert crop_auc([neg_hi, pos_lo], score_threshold=0.5) == 0.0  # pos_lo drops to 0.0
    assert np.isnan(crop_auc([pos_hi, pos_lo]))
    assert np.isnan(crop_auc([]))


def test_ap_at_iou_threshold():
    r = _result([[0, 0, 10, 4]], [0.9], [1], [[0, 0, 10, 10]], [1])  # IoU 0.4
    blank = _result([], [], [], [], [])
    assert ap_at_iou([r, blank], 0.3) == pytest.approx(1.0)
    assert ap_at_iou([r, blank], 0.5) == 0.0
    assert ap_at_iou([blank], 0.3) == 0.0


def test_lesion_metrics():
    r = _result([[0, 0, 10, 4], FAR], [0.9, 0.4], [1, 1], [[0, 0, 10, 10]], [1])  # IoU 0.4 hit, one FP
    neg = _result([], [], [], [], [])
    m = lesion_metrics([r, neg], score_threshold=0.3)
    assert m["ap_30"] == pytest.approx(1.0) and m["ap_50"] == 0.0
    assert m["crop_auc"] == 1.0
    assert m["detection_rate"] == 1.0 and m["fp_per_image"] == 0.5
    assert m["froc_sens_at_0p25fp"] == 1.0 and m["froc_mean"] == 1.0
    assert m["n_images"] == 2.0 and m["n_true_boxes"] == 1.0
    assert lesion_metrics([r, neg], score_threshold=0.5)["fp_per_image"] == 0.0


def test_lesion_metrics_without_truth_has_no_nan():
    m = lesion_metrics([_result([FAR], [0.9], [1], [], []), _result([], [], [], [], [])], score_threshold=0.5)
    assert not any(np.isnan(v) for v in m.values())
    assert "crop_auc" not in m and not any(k.startswith("froc") for k in m)
    assert m["fp_per_image"] == 0.5 and m["detection_rate"] == 0.0 and m["n_true_boxes"] == 0.0
    assert m["ap_30"] == 0.0


def _frame(series, pred_classes, uncertain, true_classes, *, found=None):
    """One frame of ``len(true_classes)`` stacked bodies; ``found`` (default all) says which were detected."""
    truth = [[0, 40 * k, 30, 40 * k + 30] for k in range(len(true_classes))]
    found = list(range(len(true_classes))) if found is None else found
    r = _result([truth[k] for k in found], [0.9] * len(found), pred_classes, truth, true_classes, study="study")
    r.extra = {"series_key": series, "uncertain": np.array(uncertain, bool)}
    return r


def test_level_metrics_count_uncertain_bodies_as_not_identified_and_score_series():
    frames = [
        _frame("a", [20, 21], [False, False], [20, 21]),  # series a: every level right
        _frame("a", [20, 21], [False, False], [20, 21], found=[0, 1]),
        _frame("b", [20, 0], [False, True], [20, 21]),  # series b: one body uncertain
        _frame("c", [20, 22], [False, False], [20, 21]),  # series c: one body named wrong
        _frame("d", [20], [False], [20, 21], found=[0]),  # series d: right, but one body missed
    ]
    m = level_metrics(frames)
    assert m["level_id_rate"] == pytest.approx(7 / 9)
    assert m["level_uncertain_rate"] == pytest.approx(1 / 9) and m["level_wrong_rate"] == pytest.approx(1 / 9)
    assert m["series_all_levels_right"] == pytest.approx(2 / 4)  # a and d
    assert m["series_all_found_and_right"] == pytest.approx(1 / 4)  # a only
    assert m["n_series"] == 4
    # A series with nothing found is not "all right".
    assert level_metrics([_frame("e", [], [], [20], found=[])])["series_all_levels_right"] == 0.0


def test_archive_metrics_report_both_stages():
    vertebrae = [_frame("a", [20, 21], [False, False], [20, 21])]
    node = [[2, 2, 8, 8]]
    nodes = [_result(node + [[12, 50, 18, 56]], [0.9, 0.5], [1, 1], node, [1])]
    m = archive_metrics(vertebrae, nodes, schmorl_threshold=0.4)
    assert m["vertebra_ap_50"] == pytest.approx(1.0) and m["level_id_rate"] == 1.0
    assert m["schmorl_froc_sens_at_1fp"] == 1.0 and m["schmorl_sensitivity"] == 1.0
    assert m["schmorl_fp_per_image"] == 1.0  # the second node box at 0.5 is above the operating point
    assert (m["n_frames"], m["n_true_vertebrae"], m["n_true_nodes"]) == (1, 2, 1)
