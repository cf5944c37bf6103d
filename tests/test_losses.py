"""Eq. 15-18 against a hand computation; edge cases (no positive, invalid candidates, non-finite)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fian.config import load_params
from fian.losses import FIANLoss, build_loss, candidate_iou, offset_targets, seconds_to_steps
from fian.model.localization import ModelOutput

PARAMS = Path(__file__).resolve().parents[1] / "params"
CANDS = torch.tensor([[0.0, 4.0], [2.0, 6.0], [4.0, 8.0], [0.0, 8.0]])
GT = torch.tensor([[1.0, 5.0], [4.0, 8.0]])  # steps


def output(logits, offsets=None, valid=None) -> ModelOutput:
    logits = torch.as_tensor(logits, dtype=torch.float32)
    B, N = logits.shape
    offsets = torch.zeros(B, N, 2) if offsets is None else torch.as_tensor(offsets, dtype=torch.float32)
    valid = torch.ones(B, N, dtype=torch.bool) if valid is None else torch.as_tensor(valid)
    return ModelOutput(logits, torch.sigmoid(logits), offsets, CANDS, valid)


def bce(o: float, x: float) -> float:
    """-L_j of eq. 15 by hand."""
    cs = 1 / (1 + math.exp(-x))
    return -(o * math.log(cs) + (1 - o) * math.log(1 - cs))


def r1(x: float) -> float:
    """smooth L1 with beta 1."""
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def test_candidate_iou_by_hand():
    o = candidate_iou(CANDS, GT)
    expect = torch.tensor([[3 / 5, 3 / 5, 1 / 7, 4 / 8], [0.0, 2 / 6, 1.0, 4 / 8]])
    torch.testing.assert_close(o, expect)


def test_eq_15_18_by_hand():
    logits = [[0.0, 1.0, -1.0, 2.0], [0.5, -0.5, 3.0, 100.0]]
    big = 50.0  # offsets of negatives and invalid candidates must not count
    offsets = [
        [[1.5, 1.0], [-1.0, 2.0], [big, big], [big, big]],
        [[big, big], [big, big], [0.2, -0.1], [big, big]],
    ]
    valid = [[True, True, True, True], [True, True, True, False]]
    out = FIANLoss(tau=0.55, alpha=0.1)(output(logits, offsets, valid), GT)

    # positives (IoU > 0.55): (0,0) o=.6, (0,1) o=.6, (1,2) o=1; negatives: the other valid ones
    pos = bce(0.6, 0.0) + bce(0.6, 1.0) + bce(1.0, 3.0)
    neg = bce(1 / 7, -1.0) + bce(0.5, 2.0) + bce(0.0, 0.5) + bce(1 / 3, -0.5)
    align = pos / 3 + neg / 4  # eq. 16: each group averaged on its own
    # targets gt - candidate: (0,0) (1, 1), (0,1) (-1, -1), (1,2) (0, 0)
    boundary = (r1(0.5) + r1(0.0) + r1(0.0) + r1(3.0) + r1(0.2) + r1(-0.1)) / 3  # eq. 17
    assert out["n_pos"].item() == 3
    assert out["align"].item() == pytest.approx(align, rel=1e-5)
    assert out["boundary"].item() == pytest.approx(boundary, rel=1e-5)
    assert out["loss"].item() == pytest.approx(align + 0.1 * boundary, rel=1e-5)  # eq. 18


def test_window_unit_divides_targets_by_window_length():
    t = offset_targets(CANDS, GT, "window")
    torch.testing.assert_close(t[0, 0], torch.tensor([1 / 4, 1 / 4]))
    torch.testing.assert_close(t[1, 3], torch.tensor([4 / 8, 0.0]))
    torch.testing.assert_close(offset_targets(CANDS, GT, "steps")[0, 1], torch.tensor([-1.0, -1.0]))
    out = FIANLoss(0.55, 1.0, "window")(output(torch.zeros(2, 4), offset_targets(CANDS, GT, "window")), GT)
    assert out["boundary"].item() == pytest.approx(0.0, abs=1e-7)


def test_batch_without_positive_has_zero_positive_and_boundary_terms():
    gt = torch.tensor([[0.0, 1.0], [7.0, 8.0]])  # every IoU <= 0.25
    logits = torch.tensor([[0.3, -0.2, 1.0, 0.0], [2.0, -1.0, 0.1, 0.4]])
    out = FIANLoss(0.55, 1.0)(output(logits, torch.full((2, 4, 2), 9.0)), gt)
    o = candidate_iou(CANDS, gt)
    neg = sum(bce(o[b, j].item(), logits[b, j].item()) for b in range(2) for j in range(4)) / 8
    assert out["n_pos"].item() == 0
    assert out["boundary"].item() == 0.0
    assert out["align"].item() == pytest.approx(neg, rel=1e-5)


def test_invalid_candidates_change_nothing():
    logits = torch.tensor([[0.0, 1.0, -1.0, 2.0], [0.5, -0.5, 3.0, 1.0]])
    valid = torch.tensor([[True, True, False, True], [True, True, True, False]])
    ref = FIANLoss(0.55, 0.5)(output(logits, None, valid), GT)
    logits2, off2 = logits.clone(), torch.zeros(2, 4, 2)
    logits2[~valid] = 1e4
    off2[~valid] = -1e4
    out = FIANLoss(0.55, 0.5)(output(logits2, off2, valid), GT)
    for k in ("loss", "align", "boundary", "n_pos"):
        torch.testing.assert_close(out[k], ref[k])


def test_extreme_logits_are_stable():
    logits = torch.tensor(
        [[-200.0, 200.0, 200.0, -200.0], [200.0, -200.0, -200.0, 200.0]], requires_grad=True
    )
    out = FIANLoss(0.55, 1.0)(output(logits), GT)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("term", ["align", "boundary"])
def test_non_finite_loss_raises_naming_the_term(term):
    logits, offsets = torch.zeros(2, 4), torch.zeros(2, 4, 2)
    if term == "align":
        logits[0, 2] = float("nan")
    else:
        offsets[0, 0, 1] = float("inf")  # candidate (0, 0) is positive
    with pytest.raises(FloatingPointError, match=term):
        FIANLoss(0.55, 1.0)(output(logits, offsets), GT)
    FIANLoss(0.55, 1.0, check_finite=False)(output(logits, offsets), GT)  # opt-out: no raise


def test_bad_arguments():
    with pytest.raises(ValueError, match="gt_steps"):
        FIANLoss(0.55, 1.0)(output(torch.zeros(2, 4)), GT[:1])
    with pytest.raises(ValueError, match="tau"):
        FIANLoss(1.5, 1.0)
    with pytest.raises(ValueError, match="offset_unit"):
        FIANLoss(0.5, 1.0, "seconds")
    with pytest.raises(ValueError, match="duration"):
        seconds_to_steps(torch.tensor([[1.0, 2.0]]), torch.tensor([1.0, 2.0]), 16)


def test_seconds_to_steps():
    steps = seconds_to_steps(torch.tensor([[3.0, 6.0], [0.0, 10.0]]), torch.tensor([12.0, 10.0]), 16)
    torch.testing.assert_close(steps, torch.tensor([[4.0, 8.0], [0.0, 16.0]]))


def test_build_loss_reads_config():
    cfg = load_params(PARAMS, "activitynet", "fian")
    loss = build_loss(cfg)
    assert (loss.tau, loss.alpha, loss.offset_unit) == (0.55, 0.001, "steps")
    # the Table 5 heads get their own papers' losses (tests/test_head_losses.py)
    cmin = build_loss(load_params(PARAMS, "tacos", "cmin"))
    assert type(cmin).__name__ == "CMINLoss" and cmin.alpha == 0.001  # CMIN's weight, not TACoS's 0.005
    assert cmin.grid_size == 200 * 3  # T x K of CMIN's TACoS widths
    with pytest.raises(ValueError, match="training set"):
        build_loss(load_params(PARAMS, "tacos", "tgn"))  # TGN's weights need the train split
