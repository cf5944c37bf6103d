"""GPU checks (opt-in: ``pytest -m gpu`` on a CUDA machine; bench/gpu_check.sh runs them).

- a training step under bf16 autocast matches fp32 loosely (loss and gradient direction);
- the training loop makes no host-device sync inside a step (CUDA sync debug mode counts them);
- the tiny marked set is learnt on the GPU with bf16 + fused Adam + the split preloaded there;
- DDP over NCCL with 2 processes matches 1 process loosely (only with >= 2 GPUs).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import warnings
from pathlib import Path

import pytest
import torch
from train_helpers import VOCAB, marked_split, tiny_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _model_and_batch(cfg):
    from fian.losses import build_loss
    from fian.model.build import build_model

    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=VOCAB, check_inputs=False).cuda()
    split = marked_split(n_videos=16).to("cuda")
    return model, build_loss(cfg), next(split.batches(32))


def test_bf16_step_matches_fp32_loosely() -> None:
    from fian.evaluate import autocast_ctx
    from fian.train import _fp32

    cfg = tiny_config()
    model, loss_fn, b = _model_and_batch(cfg)
    gt_steps = b.gt / b.duration[:, None] * cfg.features.num_steps
    results = {}
    for amp in ("off", "bf16"):
        model.zero_grad(set_to_none=True)
        with autocast_ctx(torch.device("cuda"), amp):
            out = model(b.video, b.video_mask, b.words, b.word_mask)
        terms = loss_fn(_fp32(out), gt_steps)
        terms["loss"].backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results[amp] = (terms["loss"].item(), grad)
    (l32, g32), (l16, g16) = results["off"], results["bf16"]
    assert l16 == pytest.approx(l32, rel=0.05)
    cos = torch.nn.functional.cosine_similarity(g32, g16, dim=0).item()
    assert cos > 0.95, cos


def test_no_host_sync_inside_the_step() -> None:
    """Sync warnings over an epoch do not grow with its number of steps (only sync points)."""
    from fian.distributed import DistInfo
    from fian.train import _train_epoch, build_optimizer

    counts = {}
    for n_videos in (8, 32):  # 4 and 16 steps of batch 4
        cfg = tiny_config(batch_size=4, amp="bf16", sync_every=10_000)
        model, loss_fn, _ = _model_and_batch(cfg)
        loss_fn.check_finite = False
        split = marked_split(n_videos=n_videos).to("cuda")
        opt = build_optimizer(model, cfg.train, torch.device("cuda"))
        assert opt.defaults.get("fused"), "fused Adam on CUDA"
        kwargs = dict(model=model, train_cfg=cfg.train, num_steps=cfg.features.num_steps, device=torch.device("cuda"),
                      info=DistInfo(), progress=False)  # fmt: skip
        _train_epoch(model, loss_fn, opt, split, epoch=0, **kwargs)  # warm-up (cuDNN, lazy init)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                _train_epoch(model, loss_fn, opt, split, epoch=1, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        counts[n_videos] = sum("synchroniz" in str(w.message) for w in caught)
    assert counts[8] >= 1, counts  # the end-of-epoch read is seen: the detector works
    assert counts[32] == counts[8], counts  # per-epoch constant, not per step


def test_overfits_on_gpu_bf16() -> None:
    from fian.evaluate import evaluate
    from fian.losses import build_loss
    from fian.model.build import build_model
    from fian.train import fit

    cfg = tiny_config(epochs=30, amp="bf16")
    split = marked_split(n_videos=8)
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=VOCAB, check_inputs=False)
    loss_fn = build_loss(cfg)
    loss_fn.check_finite = False
    history = fit(model, loss_fn, split, split, train_cfg=cfg.train, eval_cfg=cfg.eval,
                  num_steps=cfg.features.num_steps, checkpoint=None, device="cuda", progress=False)  # fmt: skip
    assert history[-1]["loss"] < 0.8 * history[0]["loss"]
    _, metrics = evaluate(model, split.to("cuda"), eval_cfg=cfg.eval, num_steps=cfg.features.num_steps,
                          device="cuda", amp="bf16")  # fmt: skip
    assert metrics["R@1,IoU=0.5"] >= 0.85, metrics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nccl_run(rank: int, world: int, port: int, out: str) -> None:
    if world > 1:
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    from fian.distributed import init_from_env, shutdown
    from fian.losses import build_loss
    from fian.model.build import build_model
    from fian.train import fit

    info, device = init_from_env("cuda")
    try:
        cfg = tiny_config(epochs=2, batch_size=4, amp="off")
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, fused_optimizer=False))
        torch.manual_seed(0)
        model = build_model(cfg, vocab_size=VOCAB, check_inputs=False)
        fit(model, build_loss(cfg), marked_split(n_videos=8, same_moment=True), None, train_cfg=cfg.train,
            eval_cfg=cfg.eval, num_steps=cfg.features.num_steps, checkpoint=Path(out) / "ckpt.pt",
            config=cfg.to_dict(), device=device, dist_info=info, progress=False)  # fmt: skip
    finally:
        shutdown()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP/NCCL smoke needs 2 GPUs")
def test_ddp_nccl_smoke(tmp_path) -> None:
    import torch.multiprocessing as mp

    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    mp.spawn(_nccl_run, args=(2, _free_port(), str(two)), nprocs=2, join=True)
    mp.spawn(_nccl_run, args=(1, 0, str(one)), nprocs=1, join=True)
    a = torch.load(one / "ckpt.pt", weights_only=True, map_location="cpu")["model"]
    b = torch.load(two / "ckpt.pt", weights_only=True, map_location="cpu")["model"]
    for k, v in a.items():
        torch.testing.assert_close(b[k], v, rtol=0, atol=1e-3 if k.endswith("w_k.bias") else 2e-4, msg=k)
