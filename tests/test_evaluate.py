"""evaluate() on a hand-made model output; predictions/metrics files; the moment-prior baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from train_helpers import marked_split, plain_scores

from fian.baselines import MomentPrior, normalized_moments
from fian.config import EvalConfig
from fian.evaluate import (
    evaluate,
    protocol_info,
    read_predictions,
    score_ranked,
    write_metrics,
    write_predictions,
)
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
    # default protocol: a hit is IoU > m (S4.2's wording; until issue 11 this test counted >=)
    assert metrics["R@1,IoU=0.5"] == pytest.approx(np.mean([x > 0.5 for x in ious]))
    assert metrics["mIoU"] == pytest.approx(np.mean(ious))
    best5 = [max(iou(s, gt[q]) for s in frame["segments"][q]) for q in range(Q)]
    assert metrics["R@5,IoU=0.7"] == pytest.approx(np.mean([x > 0.7 for x in best5]))
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
    write_metrics(tmp_path / "metrics_test.json", metrics, split="test", n_queries=len(frame), protocol=protocol_info(cfg))
    m = json.loads((tmp_path / "metrics_test.json").read_text())
    assert m["unit"] == "fraction" and m["split"] == "test" and m["n_queries"] == 4
    assert m["protocol"]["hit"] == "IoU > m" and m["protocol"]["nms"] == "per_level"  # the defaults, in words

    path.write_text(path.read_text() + "{not json}\n")
    with pytest.raises(ValueError, match=r"predictions_test.jsonl: line 5: not a predictions record"):
        read_predictions(path)


# The protocol by hand (fian/metrics.py).  Every query's moment is [8, 16) steps = [16, 32) s.
# Queries 0, 1: A [11.2, 19.2] (IoU with GT 4.8/11.2 = 0.43) best, B [8.8, 16.8] (IoU 7.2/8.8 = 0.82)
# second, C [24, 32] (IoU 0) last; IoU(A, B) = 5.6/10.4 = 0.54, so NMS at 0.5 (and at 0.45, the
# m = 0.5 level) drops B while NMS at 0.65 (the m = 0.7 level) keeps it.
# Queries 2, 3: D [8, 12] (IoU exactly 0.5) best, C last.
PROTOCOL_CASES = {
    ("gt", "fixed"): {"R@1,IoU=0.3": 1.0, "R@1,IoU=0.5": 0.0, "R@1,IoU=0.7": 0.0,
                      "R@5,IoU=0.3": 1.0, "R@5,IoU=0.5": 0.0, "R@5,IoU=0.7": 0.0},
    ("ge", "fixed"): {"R@1,IoU=0.3": 1.0, "R@1,IoU=0.5": 0.5, "R@1,IoU=0.7": 0.0,
                      "R@5,IoU=0.3": 1.0, "R@5,IoU=0.5": 0.5, "R@5,IoU=0.7": 0.0},
    ("gt", "per_level"): {"R@1,IoU=0.3": 1.0, "R@1,IoU=0.5": 0.0, "R@1,IoU=0.7": 0.0,
                          "R@5,IoU=0.3": 1.0, "R@5,IoU=0.5": 0.0, "R@5,IoU=0.7": 0.5},
    ("ge", "per_level"): {"R@1,IoU=0.3": 1.0, "R@1,IoU=0.5": 0.5, "R@1,IoU=0.7": 0.0,
                          "R@5,IoU=0.3": 1.0, "R@5,IoU=0.5": 0.5, "R@5,IoU=0.7": 0.5},
}  # fmt: skip


@pytest.mark.parametrize("rule,nms", sorted(PROTOCOL_CASES))
def test_protocol_by_hand(rule: str, nms: str, tmp_path) -> None:
    split = marked_split(n_videos=2, same_moment=True)  # 4 queries, GT [16, 32) s
    assert split.gt.tolist() == [[16.0, 32.0]] * 4
    cand = torch.tensor([[11.2, 19.2], [8.8, 16.8], [24, 32], [8, 12]], dtype=torch.float32)  # A B C D, steps
    ninf = float("-inf")  # a -inf logit is never ranked (decode keeps finite keys only)
    logits = torch.tensor([[3.0, 2.0, 1.0, ninf]] * 2 + [[ninf, ninf, 1.0, 3.0]] * 2)
    model = HandMade(cand, logits, torch.zeros(4, 4, 2))
    cfg = EvalConfig(top_n=(1, 5), iou_thresholds=(0.3, 0.5, 0.7), nms_threshold=0.5, batch_size=3,
                     max_predictions=5, iou_rule=rule, nms=nms)  # fmt: skip
    frame, metrics = evaluate(model, split, eval_cfg=cfg, num_steps=T, device="cpu")
    discounted = {k: metrics.pop(k) for k in list(metrics) if k.startswith("dR@")}  # the metrics files' dR@n,IoU=m
    assert metrics == {**PROTOCOL_CASES[rule, nms], "mIoU": pytest.approx((2 * 4.8 / 11.2 + 2 * 0.5) / 4)}
    assert set(discounted) == {f"d{k}" for k in PROTOCOL_CASES[rule, nms]}
    assert all(discounted[f"d{k}"] <= v for k, v in PROTOCOL_CASES[rule, nms].items())
    # the predictions file holds the list at eval.nms_threshold whatever eval.nms is: B dropped
    expect = [[[22.4, 38.4], [48.0, 64.0]]] * 2 + [[[16.0, 24.0], [48.0, 64.0]]] * 2  # A C / D C, seconds
    np.testing.assert_allclose(np.array(frame["segments"].tolist()), expect, rtol=1e-6)
    # the same protocol on lists ranked elsewhere (the moment-prior path): host-side NMS per level
    segs = torch.stack([cand[[0, 1, 2]], cand[[0, 1, 2]], cand[[3, 2, 0]], cand[[3, 2, 0]]]).numpy() * 2.0
    scores = np.tile([3.0, 2.0, 1.0], (4, 1))
    ranked = score_ranked(segs, scores, split.gt.numpy(), eval_cfg=cfg)
    assert ranked == {**PROTOCOL_CASES[rule, nms], "mIoU": pytest.approx((2 * 4.8 / 11.2 + 2 * 0.5) / 4)}
    # every metric recomputed from the predictions file alone (per level: R@5,IoU=0.7 needs B,
    # which only the m = 0.7 list keeps)
    write_predictions(tmp_path / "predictions_test.jsonl", frame)
    write_metrics(tmp_path / "metrics_test.json", metrics, split="test", n_queries=len(frame),
                  protocol=protocol_info(cfg), info=tmp_path / "info_test.json")  # fmt: skip
    reported = json.loads((tmp_path / "metrics_test.json").read_text())
    names = [k for k in reported if k.startswith("R@") or k == "mIoU"]
    assert len(names) == 7
    assert plain_scores(tmp_path / "predictions_test.jsonl", names) == {k: reported[k] for k in names}
    assert ("by_level" in frame.columns) == (nms == "per_level")  # under fixed, segments is every level's list


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


def test_train_metrics_file_states_the_protocol(tmp_path) -> None:
    from fian_pipeline.train import write_outputs

    history = [{"epoch": 1, "best_epoch": 1, "loss": 1.0, "time_s": 2.0, "val/R@5,IoU=0.7": 0.25}]
    proto = protocol_info(EvalConfig(iou_rule="ge", nms="fixed", nms_threshold=0.4))
    summary = write_outputs(tmp_path, history, has_val=True, vocab_size=12, protocol=proto)
    tm = json.loads((tmp_path / "train_metrics.json").read_text())
    ti = json.loads((tmp_path / "train_info.json").read_text())  # text beside DVC's numbers-only file
    assert tm["val/R@5,IoU=0.7"] == 0.25 and "protocol" not in tm and ti["protocol"] == proto
    assert ti["protocol"]["text"] == "hit: IoU >= m (TALL's and CMIN's code); one ranked list, NMS at IoU 0.4 for every m"
    assert "protocol" not in summary  # the summary's numbers go to MLflow; the protocol is text
