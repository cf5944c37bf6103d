"""evaluate() on a hand-made model output; predictions/metrics files; the moment-prior baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from train_helpers import marked_split

from fian.baselines import MomentPrior, normalized_moments
from fian.config import EvalConfig
from fian.evaluate import evaluate, read_predictions, write_metrics, write_predictions
from fian.model.localization import ModelOutput

T = 32  # marked_split: 32 steps over 64 s (2 s per step)


class HandMade(torch.nn.Module):
    """Scores fixed candidates so that query q's best is candidate ``best[q]``; no learning."""

    def __init__(self, candidates: torch.Tensor, logits: torch.Tensor, offsets: torch.Tensor) -> None:
        super().__init__()
        self.candidates, self.table_logits, self.table_offsets = candidates, logits, offsets
        self.rows = torch.nn.Parameter(torch.zeros(1))  # evaluate() moves the model; needs one parameter

    def forward(self, video, video_mask, words, word_mask) -> ModelOutput:
        q = (words[:, 0] - 2) // words.shape[1]  # marked_split: query q has tokens 2+4q .. 2+4q+3
        logits = self.table_logits[q]  # [B, N]
        return ModelOutput(
            logits=logits, scores=torch.sigmoid(logits), offsets=self.table_offsets[q],
            candidates=self.candidates, valid=torch.ones_like(logits, dtype=torch.bool),
        )  # fmt: skip


def test_evaluate_hand_made_output() -> None:
    split = marked_split(n_videos=2, seed=0)  # 4 queries
    gt = split.gt.numpy()  # seconds
    cand = torch.tensor([[0, 8], [8, 16], [16, 24], [24, 32]], dtype=torch.float32)  # steps
    Q, N = 4, 4
    logits = torch.full((Q, N), -5.0)
    offsets = torch.zeros(Q, N, 2)
    # query 0: the best candidate moved onto its ground truth exactly (offsets in steps)
    gt0 = torch.tensor(gt[0] / 2.0, dtype=torch.float32)
    logits[0, 1] = 5.0
    offsets[0, 1] = gt0 - cand[1]
    # queries 1-3: top-1 is candidate 0 unmoved, i.e. [0, 16) s; candidate 3 second
    logits[1:, 0], logits[1:, 3] = 4.0, 3.0
    model = HandMade(cand, logits, offsets)
    cfg = EvalConfig(top_n=(1, 5), iou_thresholds=(0.5, 0.7), nms_threshold=0.5, batch_size=3, max_predictions=4)
    frame, metrics = evaluate(model, split, eval_cfg=cfg, num_steps=T, device="cpu")

    assert list(frame["index"]) == [0, 1, 2, 3]
    assert list(frame["video_id"]) == ["vid0", "vid0", "vid1", "vid1"]
    assert frame["segments"][0][0] == pytest.approx(tuple(gt[0]))
    assert frame["segments"][1][:2] == [[0.0, 16.0], [48.0, 64.0]]
    assert frame["scores"][1][0] == pytest.approx(float(torch.sigmoid(torch.tensor(4.0))))
    assert len(frame["segments"][1]) == 4  # no overlap among the four candidates: all kept

    # metrics by hand
    def iou(a, b):
        inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
        return inter / (max(a[1], b[1]) - min(a[0], b[0]))

    top1 = [frame["segments"][q][0] for q in range(Q)]
    ious = [iou(top1[q], gt[q]) for q in range(Q)]
    assert metrics["R@1,IoU=0.5"] == pytest.approx(np.mean([x >= 0.5 for x in ious]))
    assert metrics["mIoU"] == pytest.approx(np.mean(ious))
    best5 = [max(iou(s, gt[q]) for s in frame["segments"][q]) for q in range(Q)]
    assert metrics["R@5,IoU=0.7"] == pytest.approx(np.mean([x >= 0.7 for x in best5]))
    assert ious[0] == pytest.approx(1.0)


def test_predictions_and_metrics_files(tmp_path) -> None:
    split = marked_split(n_videos=2)
    cand = torch.tensor([[0, 8], [1, 8]], dtype=torch.float32)  # IoU 7/8: NMS keeps one
    model = HandMade(cand, torch.tensor([[2.0, 1.0]] * 4), torch.zeros(4, 2, 2))
    cfg = EvalConfig(top_n=(1,), iou_thresholds=(0.5,), max_predictions=2)
    frame, metrics = evaluate(model, split, eval_cfg=cfg, num_steps=T, device="cpu")
    assert [len(s) for s in frame["segments"]] == [1, 1, 1, 1]  # the NaN padding is dropped
    path = tmp_path / "predictions_test.jsonl"
    write_predictions(path, frame)
    back = read_predictions(path)
    assert back["segments"].tolist() == frame["segments"].tolist()
    assert back["video_id"].tolist() == frame["video_id"].tolist()
    write_metrics(tmp_path / "metrics_test.json", metrics, split="test", n_queries=len(frame))
    m = json.loads((tmp_path / "metrics_test.json").read_text())
    assert m["unit"] == "fraction" and m["split"] == "test" and m["n_queries"] == 4

    path.write_text(path.read_text() + "{not json}\n")
    with pytest.raises(ValueError, match=r"predictions_test.jsonl: line 5: not a predictions record"):
        read_predictions(path)


def test_moment_prior_recovers_clusters() -> None:
    rng = np.random.default_rng(0)
    a = np.array([0.1, 0.3]) + 0.01 * rng.normal(size=(60, 2))
    b = np.array([0.5, 0.9]) + 0.01 * rng.normal(size=(30, 2))
    prior = MomentPrior.fit(np.concatenate([a, b]), k=2, seed=0)
    np.testing.assert_allclose(prior.centres, [[0.1, 0.3], [0.5, 0.9]], atol=0.01)
    np.testing.assert_allclose(prior.weights, [2 / 3, 1 / 3])
    segs, scores = prior.predict(np.array([10.0, 100.0]))
    np.testing.assert_allclose(segs[1], 100 * prior.centres)
    assert segs.shape == (2, 2, 2) and scores.shape == (2, 2)


def test_moment_prior_bad_input() -> None:
    with pytest.raises(ValueError, match="record 1: duration 0.0 <= 0"):
        normalized_moments(np.array([0.0, 1.0]), np.array([1.0, 2.0]), np.array([5.0, 0.0]))
    with pytest.raises(ValueError, match="moment row 0 is not finite"):
        MomentPrior.fit(np.array([[np.nan, 0.5]]), k=1)
    with pytest.raises(ValueError, match=r"non-empty \[Q, 2\]"):
        MomentPrior.fit(np.zeros((0, 2)), k=3)
