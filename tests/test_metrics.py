"""Temporal IoU, 1-D NMS and R@n / mIoU on hand-made cases (ties, exact thresholds, empty rows)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fian.metrics import evaluate_predictions, mean_iou, nms_1d, recall_at, temporal_iou

NAN = float("nan")


def test_temporal_iou_by_hand_numpy_and_torch():
    a = [[0, 2], [0, 1], [3, 5], [0, 10], [2, 2], [2, 2], [NAN, NAN]]
    b = [[1, 3], [1, 2], [3, 5], [2, 4], [2, 2], [0, 4], [0, 1]]
    expect = [1 / 3, 0.0, 1.0, 0.2, 0.0, 0.0, NAN]  # touching intervals do not overlap (closed-open)
    np.testing.assert_allclose(temporal_iou(np.array(a, float), np.array(b, float)), expect)
    got = temporal_iou(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.numpy(), expect)


def test_temporal_iou_broadcasts():
    rng = np.random.default_rng(0)
    s = rng.uniform(0, 10, (3, 1, 2))
    a = np.sort(s, -1)
    b = np.sort(rng.uniform(0, 10, (1, 4, 2)), -1)
    out = temporal_iou(a, b)
    assert out.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            assert out[i, j] == pytest.approx(float(temporal_iou(a[i, 0], b[0, j])))
    np.testing.assert_allclose(temporal_iou(torch.tensor(a), torch.tensor(b)).numpy(), out)


def test_nms_greedy_with_ties_by_index():
    seg = np.array([[0, 10], [1, 10], [20, 30], [0, 9], [21, 30]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.9, 0.1])
    assert nms_1d(seg, scores, 0.5).tolist() == [0, 2]  # 0 and 3 tie: 0 first, then 3 overlaps it
    seg2 = seg[[3, 1, 2, 0, 4]]  # swap the tied pair: now [0, 9] comes first by index
    assert nms_1d(seg2, scores, 0.5).tolist() == [0, 2]
    assert nms_1d(seg, scores, 0.5, top_k=1).tolist() == [0]
    assert nms_1d(seg, scores, 0.95).tolist() == [0, 3, 1, 2, 4]  # nothing overlaps more than 0.95
    assert nms_1d(torch.tensor(seg), torch.tensor(scores), 0.5).tolist() == [0, 2]  # torch in


def test_nms_threshold_is_strict_and_skips_padding():
    seg = np.array([[0, 4], [0, 2], [5, 6]], float)  # IoU([0,4], [0,2]) = 0.5 exactly
    assert nms_1d(seg, np.array([0.9, 0.8, 0.1]), 0.5).tolist() == [0, 1, 2]  # suppress only when > 0.5
    assert nms_1d(seg, np.array([0.9, 0.8, 0.1]), 0.49).tolist() == [0, 2]
    assert nms_1d(seg, np.array([-np.inf, 0.2, -np.inf]), 0.5).tolist() == [1]
    assert nms_1d(np.zeros((0, 2)), np.zeros(0), 0.5).tolist() == []
    with pytest.raises(ValueError, match=r"\[K, 2\]"):
        nms_1d(np.zeros((3, 3)), np.zeros(3), 0.5)


GT = np.array([[0, 10], [5, 15], [0, 4]], float)
PRED = np.array(
    [
        [[0, 5], [0, 10]],  # IoU 0.5, 1.0
        [[10, 15], [NAN, NAN]],  # IoU 0.5, then nothing
        [[NAN, NAN], [NAN, NAN]],  # no prediction: a miss
    ]
)


def test_recall_at_by_hand_with_exact_threshold_and_empty_rows():
    r = recall_at(PRED, GT, ns=(1, 2, 5), ms=(0.5, 0.7))
    assert r == {
        "R@1,IoU=0.5": pytest.approx(2 / 3),  # IoU >= m: 0.5 counts at m = 0.5
        "R@1,IoU=0.7": 0.0,
        "R@2,IoU=0.5": pytest.approx(2 / 3),
        "R@2,IoU=0.7": pytest.approx(1 / 3),
        "R@5,IoU=0.5": pytest.approx(2 / 3),  # fewer than 5 predictions: what there is
        "R@5,IoU=0.7": pytest.approx(1 / 3),
    }
    assert all(0 <= v <= 1 for v in r.values())
    assert recall_at(torch.tensor(PRED), torch.tensor(GT), ns=(1,), ms=(0.5,)) == {
        "R@1,IoU=0.5": pytest.approx(2 / 3)
    }


def test_mean_iou_and_evaluate_predictions():
    assert mean_iou(PRED[:, 0], GT) == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    ev = evaluate_predictions(PRED, GT, ns=(1, 5), ms=(0.1, 0.3, 0.5, 0.7))
    assert set(ev) == {f"R@{n},IoU={m}" for n in (1, 5) for m in (0.1, 0.3, 0.5, 0.7)} | {"mIoU"}
    assert ev["mIoU"] == pytest.approx(1 / 3)
    assert ev["R@5,IoU=0.7"] == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "pred,gt,match",
    [
        (np.zeros((3, 2)), GT, r"\[Q, K, 2\]"),
        (PRED[:2], GT, "2 prediction rows but 3"),
        (np.zeros((0, 1, 2)), np.zeros((0, 2)), "empty"),
        (PRED, np.array([[0, 1], [NAN, 2], [0, 1]]), r"NaN in the ground truth of query rows \[1\]"),
        (PRED, GT[:, :1], r"gt must be \[Q, 2\]"),
    ],
)
def test_bad_metric_inputs(pred, gt, match):
    with pytest.raises(ValueError, match=match):
        evaluate_predictions(pred, gt)
