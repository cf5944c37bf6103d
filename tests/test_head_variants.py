"""The Table 4/5 variants with their own heads and attention train end to end on the tiny marked
set (tests/train_helpers.py): FIAN-TGN, FIAN-CMIN and FIAN-Soft, built from their params files;
inference turns each head's output into (start, end) windows."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from train_helpers import VOCAB, marked_split, tiny_config

from fian.config import config_from_dict, read_yaml
from fian.evaluate import evaluate
from fian.inference import decode
from fian.losses import CMINLoss, FIANLoss, TGNLoss, build_loss, training_moments
from fian.model.build import build_model
from fian.train import fit

VARIANTS = Path(__file__).resolve().parents[1] / "params" / "variants"


def variant_config(variant: str, epochs: int):
    """tiny_config with params/variants/<variant>.yaml layered on top (as load_params layers it).
    The tiny dataset has no entry in model.anchor_widths: the heads use window_sizes (4, 8, 16)."""
    base = tiny_config(epochs=epochs).to_dict()
    for section, values in read_yaml(VARIANTS / f"{variant}.yaml").items():
        base[section] = {**base[section], **values}
    return dataclasses.replace(config_from_dict(base), variant=variant)


@pytest.mark.parametrize("variant,loss_type", [("tgn", TGNLoss), ("cmin", CMINLoss), ("soft", FIANLoss)])
def test_variant_trains_on_the_tiny_set(variant, loss_type):
    cfg = variant_config(variant, epochs=8)
    split = marked_split(n_videos=8, seed=0)
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=VOCAB)
    loss_fn = build_loss(cfg, training_moments(split))
    assert isinstance(loss_fn, loss_type)
    history = fit(
        model, loss_fn, split, None, train_cfg=cfg.train, eval_cfg=cfg.eval,
        num_steps=cfg.features.num_steps, checkpoint=None, device="cpu", progress=False,
    )  # fmt: skip
    assert len(history) == 8
    losses = [h["loss"] for h in history]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0], losses  # it learns
    if variant == "cmin":
        assert history[-1]["boundary"] < history[0]["boundary"]  # the best anchor's regression learns
    if variant == "tgn":
        assert all(h["boundary"] == 0.0 for h in history)  # TGN regresses nothing
    _, metrics = evaluate(model, split, eval_cfg=cfg.eval, num_steps=cfg.features.num_steps, device="cpu")
    assert all(0.0 <= v <= 1.0 for v in metrics.values())


@pytest.mark.parametrize("variant", ["tgn", "cmin"])
def test_inference_turns_anchor_heads_into_windows(variant):
    """Top-1 of decode = the best-scored valid anchor moved by its offsets (TGN: none), in seconds."""
    cfg = variant_config(variant, epochs=1)
    split = marked_split(n_videos=2, seed=1)
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=VOCAB).eval()
    batch = next(split.batches(4, shuffle=False))
    with torch.no_grad():
        out = model(batch.video, batch.video_mask, batch.words, batch.word_mask)
    segs, scores = decode(out, batch.duration, cfg.features.num_steps, 0.5, 3)
    T = cfg.features.num_steps
    for b in range(batch.video.shape[0]):
        j = int(torch.where(out.valid[b], out.logits[b], -math.inf).argmax())
        start, end = (out.candidates[j] + out.offsets[b, j]).clamp(0, T).tolist()
        end = max(end, start)
        sec = float(batch.duration[b]) / T
        torch.testing.assert_close(segs[b, 0], torch.tensor([start * sec, end * sec]))
        assert scores[b, 0].item() == pytest.approx(torch.sigmoid(out.logits[b, j]).item())
    if variant == "tgn":
        assert torch.equal(out.offsets, torch.zeros_like(out.offsets))
    else:
        assert out.offsets.abs().sum() > 0


def test_anchor_widths_and_strides_per_dataset_from_params():
    from fian.config import load_params
    from fian.model.build import head_window_sizes, model_strides

    params = VARIANTS.parent
    tacos_cmin = load_params(params, "tacos", "cmin")
    assert head_window_sizes(tacos_cmin) == (6, 18, 32)  # CMIN utils.generate_anchors('TACOS')
    assert model_strides(tacos_cmin) == [1, 1, 1]  # an anchor at every step
    assert head_window_sizes(load_params(params, "activitynet", "cmin")) == (16, 32, 64, 96, 128, 160, 192)
    assert head_window_sizes(load_params(params, "charades", "cmin")) == (16, 24, 32, 40)  # none in CMIN
    assert head_window_sizes(load_params(params, "tacos", "tgn")) == tuple(range(1, 33))  # K = 32
    assert head_window_sizes(load_params(params, "charades", "tgn")) == tuple(range(3, 23))
    assert head_window_sizes(load_params(params, "tacos", "fian")) == (8, 16, 32, 64)  # content: S4.3
    cfg = load_params(params, "tacos", "cmin")
    assert (cfg.loss.alpha, cfg.loss.cmin_min_iou_ratio) == (0.001, 0.3)


@pytest.mark.parametrize(
    "over,key",
    [
        ({"model": {"head": "cmin"}, "loss": {"offset_unit": "window"}}, "loss.offset_unit"),
        ({"model": {"head": "cmin", "anchor_widths": {"tiny": [4, 64]}}}, "model.anchor_widths.tiny"),
        ({"model": {"anchor_widths": {"tacos": []}}}, "model.anchor_widths.tacos"),
        ({"loss": {"tgn_pos_iou": 0.3, "tgn_neg_iou": 0.5}}, "loss.tgn_neg_iou"),
        ({"loss": {"cmin_min_iou_ratio": 1.0}}, "loss.cmin_min_iou_ratio"),
    ],
)
def test_bad_head_params_are_rejected_naming_the_key(over, key):
    from fian.config import ConfigError

    base = tiny_config().to_dict()
    for section, values in over.items():
        base[section] = {**base[section], **values}
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_dict(base)
    # another dataset's entry may exceed this dataset's steps (TGN's ActivityNet widths on Charades)
    ok = tiny_config().to_dict()
    ok["model"] = {**ok["model"], "anchor_widths": {"activitynet": [100]}}
    config_from_dict(ok)
