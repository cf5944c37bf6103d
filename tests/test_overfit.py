"""Issue 2: the model overfits a tiny generated set on CPU (loss falls, R@1 IoU=0.5 near 100 %)."""

from __future__ import annotations

import torch
from train_helpers import VOCAB, marked_split, tiny_config

from fian.baselines import MomentPrior, normalized_moments
from fian.evaluate import evaluate, score_predictions
from fian.losses import build_loss
from fian.model.build import build_model
from fian.train import fit


def test_overfits_tiny_marked_set() -> None:
    cfg = tiny_config(epochs=30)
    split = marked_split(n_videos=8, seed=0)
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=VOCAB)
    history = fit(
        model, build_loss(cfg), split, split, train_cfg=cfg.train, eval_cfg=cfg.eval,
        num_steps=cfg.features.num_steps, checkpoint=None, device="cpu", progress=False,
    )  # fmt: skip
    assert len(history) == 30
    assert history[-1]["loss"] < 0.75 * history[0]["loss"]
    assert history[0]["val/R@1,IoU=0.5"] < 0.8  # it had to learn something
    # fit leaves the best epoch's weights in the model: evaluate them independently
    _, metrics = evaluate(model, split, eval_cfg=cfg.eval, num_steps=cfg.features.num_steps, device="cpu")
    assert metrics["R@1,IoU=0.5"] >= 0.9, metrics
    assert metrics["mIoU"] > 0.75, metrics

    # a query-blind prior of the same moments stays far below: the model reads the query
    gt = split.gt.numpy()
    prior = MomentPrior.fit(normalized_moments(gt[:, 0], gt[:, 1], split.duration.numpy()), k=10)
    segs, _ = prior.predict(split.duration.numpy())
    blind = score_predictions(segs, gt, top_n=(1,), ious=(0.5,), iou_rule="gt")
    assert blind["R@1,IoU=0.5"] <= metrics["R@1,IoU=0.5"] - 0.3, (blind, metrics)
