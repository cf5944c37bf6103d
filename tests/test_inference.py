"""decode: by hand, and against a slow per-query reference built on fian.metrics.nms_1d."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fian.inference import decode
from fian.metrics import nms_1d
from fian.model.localization import ModelOutput, sliding_windows

NAN = float("nan")


def make_output(logits, offsets, candidates, valid=None) -> ModelOutput:
    logits = torch.as_tensor(logits, dtype=torch.float32)
    valid = torch.ones_like(logits, dtype=torch.bool) if valid is None else torch.as_tensor(valid)
    return ModelOutput(
        logits, torch.sigmoid(logits), torch.as_tensor(offsets, dtype=torch.float32), candidates, valid
    )


def test_decode_by_hand():
    cands = torch.tensor([[0.0, 4.0], [2.0, 6.0], [4.0, 8.0], [6.0, 10.0]])
    out = make_output(
        [[1.0, 3.0, 2.0, 0.0]],
        [
            [[0.0, 0.0], [-3.0, 0.5], [0.0, 5.0], [0.0, 0.0]]
        ],  # -> [0,4], [0,6.5] (clipped), [4,10] (clipped), [6,10]
        cands,
    )
    seg, sc = decode(out, torch.tensor([20.0]), num_steps=10, nms_threshold=0.5, top_k=3)
    # rank: [0,6.5] (3), [4,10] (2, IoU .25 kept), [0,4] (IoU .62 dropped), [6,10] (IoU .67 with [4,10] dropped)
    np.testing.assert_allclose(seg[0].numpy(), [[0, 13], [8, 20], [NAN, NAN]])  # x 20 s / 10 steps
    np.testing.assert_allclose(
        sc[0].numpy(), [1 / (1 + math.exp(-3)), 1 / (1 + math.exp(-2)), -np.inf], rtol=1e-6
    )


def test_decode_keeps_both_moments_at_an_exact_nms_tie():
    """[0, 4] and [0, 8]: IoU exactly 4/8 = 0.5.  At threshold 0.5 both survive (the released
    evaluators suppress only IoU > threshold: TALL's and CMIN's nms_temporal keep ``<= overlap``,
    2D-TAN keeps ``ovr <= thresh``); integer anchor grids (TGN, CMIN heads) meet such ties often.
    [0, 4] and [0, 7] (IoU 4/7 > 0.5) do not: the second is suppressed."""
    for other, logits in (([0.0, 8.0], [[2.0, 1.0]]), ([0.0, 4.0], [[1.0, 2.0]])):
        cands = torch.tensor([[0.0, 4.0] if other == [0.0, 8.0] else [0.0, 8.0], other])
        seg, sc = decode(make_output(logits, torch.zeros(1, 2, 2), cands), torch.tensor([8.0]), 8, 0.5, top_k=2)
        assert not torch.isnan(seg).any(), seg  # both kept, best first
        assert sc[0, 0] > sc[0, 1]
    cands = torch.tensor([[0.0, 4.0], [0.0, 7.0]])
    seg, _ = decode(make_output([[2.0, 1.0]], torch.zeros(1, 2, 2), cands), torch.tensor([8.0]), 8, 0.5, top_k=2)
    assert seg[0, 0].tolist() == [0.0, 4.0] and torch.isnan(seg[0, 1]).all()
    # the host-side reference NMS of the metrics (moment prior, per-level lists) agrees
    assert nms_1d([[0, 4], [0, 8]], [2.0, 1.0], 0.5).tolist() == [0, 1]
    assert nms_1d([[0, 4], [0, 7]], [2.0, 1.0], 0.5).tolist() == [0]


def test_decode_clips_and_orders_boundaries_and_skips_invalid():
    cands = torch.tensor([[2.0, 4.0], [4.0, 8.0]])
    out = make_output(
        [[5.0, 1.0], [5.0, 1.0]], [[[3.0, -1.0], [0.0, 0.0]]] * 2, cands, [[True, True], [False, False]]
    )
    seg, sc = decode(out, torch.tensor([8.0, 8.0]), num_steps=8, nms_threshold=0.5, top_k=2)
    np.testing.assert_allclose(seg[0].numpy(), [[5, 5], [4, 8]])  # start 5 > end 3: end raised to start
    assert torch.isnan(seg[1]).all() and torch.isinf(sc[1]).all()  # nothing valid: nothing predicted


def test_decode_window_unit_scales_offsets_by_window_length():
    cands = torch.tensor([[0.0, 4.0]])
    out = make_output([[0.0]], [[[0.25, 0.5]]], cands)
    seg, _ = decode(out, torch.tensor([10.0]), 10, 0.5, 1, offset_unit="window")
    np.testing.assert_allclose(seg[0, 0].numpy(), [1.0, 6.0])
    seg, _ = decode(out, torch.tensor([10.0]), 10, 0.5, 1, offset_unit="steps")
    np.testing.assert_allclose(seg[0, 0].numpy(), [0.25, 4.5])


def reference_decode(out, duration, T, thr, top_k):
    """Slow: per query, per candidate Python loops + the plain nms_1d."""
    B, N = out.logits.shape
    segs = np.full((B, top_k, 2), np.nan)
    scores = np.full((B, top_k), -np.inf)
    for b in range(B):
        cand_seg, keys = [], []
        for j in range(N):
            s = min(max(float(out.candidates[j, 0] + out.offsets[b, j, 0]), 0.0), T)
            e = min(max(float(out.candidates[j, 1] + out.offsets[b, j, 1]), 0.0), T)
            cand_seg.append([s, max(s, e)])
            keys.append(float(out.logits[b, j]) if out.valid[b, j] else -np.inf)
        kept = nms_1d(np.array(cand_seg), np.array(keys), thr, top_k)
        for r, j in enumerate(kept):
            segs[b, r] = np.array(cand_seg[j]) * float(duration[b]) / T
            scores[b, r] = 1 / (1 + math.exp(-keys[j]))
    return segs, scores


@pytest.mark.parametrize("thr,top_k", [(0.5, 5), (0.3, 10), (0.9, 3)])
def test_decode_agrees_with_slow_reference(thr, top_k):
    g = torch.Generator().manual_seed(int(thr * 10) + top_k)
    T, B = 32, 12
    cands = sliding_windows(T, [4, 8, 16], [1, 2, 4])
    N = cands.shape[0]
    logits = torch.randint(-4, 5, (B, N), generator=g).float() / 2  # many ties
    offsets = torch.randn(B, N, 2, generator=g) * 3
    lengths = torch.randint(16, T + 1, (B,), generator=g)
    valid = cands[None, :, 1] <= lengths[:, None]
    valid[0] = False  # a row with nothing valid
    out = make_output(logits, offsets, cands, valid)
    duration = torch.rand(B, generator=g) * 100 + 5
    seg, sc = decode(out, duration, T, thr, top_k)
    ref_seg, ref_sc = reference_decode(out, duration, T, thr, top_k)
    np.testing.assert_allclose(seg.numpy(), ref_seg, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sc.numpy(), ref_sc, rtol=1e-6)
    assert seg.shape == (B, top_k, 2) and sc.shape == (B, top_k)


def test_decode_top_k_above_the_candidates_is_bounded_by_them():
    """Issue 18: a client's top_k (1e9 allocated 12 GB) must not size the work: the answer has N
    columns at most, equal to those of top_k = N (by hand: the survivors of NMS, best first).
    (1000 here, so that a regression fails the assertion instead of allocating gigabytes.)"""
    cands = torch.tensor([[0.0, 4.0], [2.0, 6.0], [4.0, 8.0], [6.0, 10.0]])
    out = make_output([[1.0, 3.0, 2.0, 0.0]], [[[0.0, 0.0]] * 4], cands)
    seg, sc = decode(out, torch.tensor([10.0]), num_steps=10, nms_threshold=0.9, top_k=1000)
    assert seg.shape == (1, 4, 2) and sc.shape == (1, 4)
    np.testing.assert_allclose(seg[0].numpy(), [[2, 6], [4, 8], [0, 4], [6, 10]])  # by score: 3, 2, 1, 0
    same, _ = decode(out, torch.tensor([10.0]), num_steps=10, nms_threshold=0.9, top_k=4)
    assert torch.equal(seg, same)


def test_decode_bad_arguments():
    out = make_output([[0.0]], [[[0.0, 0.0]]], torch.tensor([[0.0, 4.0]]))
    with pytest.raises(ValueError, match="duration"):
        decode(out, torch.tensor([1.0, 2.0]), 10, 0.5, 1)
    with pytest.raises(ValueError, match="top_k"):
        decode(out, torch.tensor([1.0]), 10, 0.5, 0)
    with pytest.raises(ValueError, match="offset_unit"):
        decode(out, torch.tensor([1.0]), 10, 0.5, 1, offset_unit="seconds")


@pytest.mark.gpu
def test_decode_on_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    g = torch.Generator().manual_seed(0)
    cands = sliding_windows(200, [8, 16, 32, 64], [1, 2, 4, 8])
    B, N = 512, cands.shape[0]
    out = make_output(torch.randn(B, N, generator=g), torch.randn(B, N, 2, generator=g), cands)
    dur = torch.rand(B, generator=g) * 100 + 1
    cpu = decode(out, dur, 200, 0.5, 10)
    dev = ModelOutput(*(t.cuda() for t in (out.logits, out.scores, out.offsets, out.candidates, out.valid)))
    gpu = decode(dev, dur.cuda(), 200, 0.5, 10)
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], equal_nan=True)
    torch.testing.assert_close(gpu[1].cpu(), cpu[1])
