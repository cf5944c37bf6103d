"""DDP on CPU (gloo, 2 processes on 127.0.0.1) reaches the parameters of 1 process, same global batch.

FIANLoss normalizes by the positives and negatives of the batch (eq. 16-17), so a rank's shard
has the loss of the global batch only when those counts are spread evenly over the samples: the
set here gives every query the same moment (the same counts per sample), and dropout is off.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from train_helpers import VOCAB, marked_split, tiny_config

from fian.distributed import DistInfo, shard_epoch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BATCH_SIZES = (4, 6)  # 15 queries: global batches [4, 4, 4, 3] and [6, 6, 3]: uneven last shards
# Key biases of attention get no gradient in theory (softmax is shift-invariant) but float noise;
# Adam rescales that noise, so they drift apart by ~1e-4 between runs: compared loosely.
NOISE_ONLY = ("w_k.bias",)


def _run(rank: int, world: int, port: int, out: str, single: bool) -> None:
    """One process: fit the tiny model for each batch size; rank 0 writes checkpoints and histories."""
    torch.set_num_threads(1)
    if not single:
        os.environ.update(
            RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
        )
    from fian.distributed import init_from_env, shutdown
    from fian.losses import build_loss
    from fian.model.build import build_model
    from fian.train import fit

    info, device = init_from_env("cpu") if not single else (DistInfo(), torch.device("cpu"))
    try:
        for bs in BATCH_SIZES:
            cfg = tiny_config(epochs=2, batch_size=bs)
            split = marked_split(n_videos=8, same_moment=True).subset(range(15))  # 15 queries
            torch.manual_seed(0)
            model = build_model(cfg, vocab_size=VOCAB)
            history = fit(
                model, build_loss(cfg), split, split, train_cfg=cfg.train, eval_cfg=cfg.eval,
                num_steps=cfg.features.num_steps, checkpoint=Path(out) / f"ckpt{bs}.pt", config=cfg.to_dict(),
                device=device, dist_info=info, progress=False,
            )  # fmt: skip
            if info.is_main:
                torch.save(history, Path(out) / f"history{bs}.pt")
    finally:
        shutdown()


def test_ddp_gloo_matches_single_process(tmp_path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    mp.spawn(_run, args=(2, _free_port(), str(two), False), nprocs=2, join=True)
    _run(0, 1, 0, str(one), True)
    for bs in BATCH_SIZES:
        a = torch.load(one / f"ckpt{bs}.pt", weights_only=True)
        b = torch.load(two / f"ckpt{bs}.pt", weights_only=True)
        assert a["epoch"] == b["epoch"] == 2
        for k, v in a["model"].items():
            tol = 3e-4 if k.endswith(NOISE_ONLY) else 2e-5  # fp reordering noise ~5e-6; a wrong weighting ~1e-2
            torch.testing.assert_close(b["model"][k], v, rtol=0, atol=tol, msg=f"batch {bs}: {k}")
        ha, hb = torch.load(one / f"history{bs}.pt"), torch.load(two / f"history{bs}.pt")
        for ra, rb in zip(ha, hb, strict=True):
            assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5)
            assert rb["val/mIoU"] == pytest.approx(ra["val/mIoU"], rel=1e-5)  # metrics reduced over ranks
            assert rb["val/R@1,IoU=0.5"] == pytest.approx(ra["val/R@1,IoU=0.5"])


def test_shard_epoch_keeps_the_global_batch() -> None:
    perm = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    parts = [shard_epoch(perm, 4, DistInfo(rank=r, world_size=2)) for r in range(2)]
    (o0, b0, sizes), (o1, b1, _) = parts
    assert b0 == b1 == 2 and sizes == [4, 4, 3]
    for i, size in enumerate(sizes):  # the union of the ranks' i-th batches is global batch i
        got = set(o0[i * 2 : i * 2 + 2].tolist()) | set(o1[i * 2 : i * 2 + 2].tolist())
        assert got == set(perm[i * 4 : i * 4 + size].tolist())
    # a last batch smaller than the world is dropped; a batch size not divisible is an error
    o, local, sizes = shard_epoch(perm, 4, DistInfo(rank=3, world_size=4))
    assert sizes == [4, 4] and local == 1 and o.tolist() == perm[3:8:4].tolist()
    with pytest.raises(ValueError, match="batch_size=5 is not a multiple of the 2 processes"):
        shard_epoch(perm, 5, DistInfo(rank=0, world_size=2))
