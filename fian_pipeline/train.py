"""Stage ``train``: fit FIAN on a prepared dataset, keep the best epoch on validation.

    python -m fian_pipeline.train --params params/base.yaml params/datasets/<d>.yaml params/variants/<v>.yaml \
        --data data/processed/<d> --text data/interim/<d>/text --out results/<d>/<v> [--resume]

Several GPUs: ``torchrun --nproc_per_node N -m fian_pipeline.train ...`` (DDP; the global batch stays
``train.batch_size``; only rank 0 writes files and logs to MLflow).

Reads ``<data>/train.h5`` and ``<data>/val.h5`` (when the dataset has a ``val`` split, or for a
dataset without a split list, when the file exists); writes ``checkpoint.pt`` (after every epoch,
atomically), ``history.csv`` (one row per epoch), ``train_metrics.json`` (the best epoch's
validation metrics as fractions: numbers only, for DVC) and ``train_info.json`` (unit, best_by).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import yaml

from fian.io import atomic_path, write_json
from fian_pipeline.common import StageError, load, parser, print_epoch, run_stage, warn_loud

log = logging.getLogger("fian.train")


def main(argv: Sequence[str] | None = None) -> int:
    p: argparse.ArgumentParser = parser("train", __doc__)
    p.add_argument("--data", type=Path, required=True, help="folder of the prepared splits (<split>.h5)")
    p.add_argument("--text", type=Path, required=True, help="folder of vocab.json and embeddings.npy")
    p.add_argument("--out", type=Path, required=True, help="output folder (checkpoint.pt, history.csv, train_metrics.json)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt if it exists")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    args = p.parse_args(argv)
    cfg = load(args)

    from fian.data.dataset import GroundingSplit, load_embeddings
    from fian.distributed import init_from_env, shutdown
    from fian.evaluate import protocol_info
    from fian.losses import build_loss, training_moments
    from fian.model.build import build_model
    from fian.tracking import build_tracker
    from fian.train import NonFiniteLossError, fit, seed_everything

    # a cancelled job (Snakemake, SLURM, torchrun send SIGTERM) unwinds: the MLflow run ends KILLED
    previous = signal.signal(signal.SIGTERM, _terminate)
    info, device = init_from_env(args.device)
    try:
        train_path = args.data / "train.h5"
        val_path = args.data / "val.h5"
        has_val = "val" in cfg.dataset.splits if cfg.dataset.splits else val_path.exists()
        train = GroundingSplit.load(train_path)
        val = GroundingSplit.load(val_path) if has_val else None
        if val is None and info.is_main:
            log.warning("%s has no validation split: the last epoch is kept as the best", cfg.dataset.name)
        for name, split in (("train", train), ("val", val)):
            if split is not None and split.num_steps != cfg.features.num_steps:
                raise StageError(
                    f"{args.data / (name + '.h5')}: num_steps={split.num_steps} but features.num_steps={cfg.features.num_steps}"
                )
            if split is not None and split.feature_dim != cfg.dataset.feature_dim:
                raise StageError(
                    f"{args.data / (name + '.h5')}: feature_dim={split.feature_dim} but dataset.feature_dim={cfg.dataset.feature_dim}"
                )
        embeddings, vocab = load_embeddings(args.text)
        if train.attrs.get("random_weights") and info.is_main:
            warn_loud(f"{train_path}: features come from a RANDOMLY initialised backbone (offline fallback)")

        # The data were validated when the split was loaded; the per-forward checks and the loss's
        # per-step finiteness check each sync host and device on CUDA (fit checks every sync_every steps).
        seed_everything(cfg.train.seed)  # the initial weights are part of the seeded run
        model = build_model(cfg, embeddings, check_inputs=device.type != "cuda")
        loss_fn = build_loss(cfg, training_moments(train))  # TGN's weights come from the train split
        loss_fn.check_finite = device.type != "cuda"

        inputs = [train_path, *([val_path] if val is not None else []), args.text / "embeddings.npy", args.text / "vocab.json"]
        tracker = build_tracker(cfg, stage="train", inputs=inputs, active=info.is_main,
                                tags={"world_size": str(info.world_size), "device": str(device)})  # fmt: skip
        ckpt_path = args.out / "checkpoint.pt"
        with tracker:
            tracker.log_params(cfg.flat())
            try:
                history = fit(
                    model, loss_fn, train, val,
                    train_cfg=cfg.train, eval_cfg=cfg.eval, num_steps=cfg.features.num_steps,
                    checkpoint=ckpt_path, resume=args.resume,
                    on_epoch=lambda r: (tracker.log_metrics({k: v for k, v in r.items() if k != "epoch"}, step=r["epoch"]),
                                        print_epoch(cfg, r)),
                    config=cfg.to_dict(), device=device, dist_info=info,
                )  # fmt: skip
            except NonFiniteLossError as e:
                raise StageError(f"{train_path}: {e}") from e
            if info.is_main:
                from fian_pipeline.mlflow_model import package_model  # predict bundle + MLflow pyfunc model

                package_model(ckpt_path, cfg, vocab, train.attrs, tracker)
                summary = write_outputs(args.out, history, has_val=val is not None, vocab_size=len(vocab),
                                        protocol=protocol_info(cfg.eval))  # fmt: skip
                tracker.log_metrics({f"best/{k}": v for k, v in summary.items() if isinstance(v, float)})
                with tempfile.TemporaryDirectory() as tmp:
                    cfg_file = Path(tmp) / "config.yaml"
                    cfg_file.write_text(yaml.safe_dump(_plain(cfg.to_dict()), sort_keys=False))
                    tracker.log_artifact(cfg_file)
                for name in ("history.csv", "train_metrics.json", "checkpoint.pt"):
                    tracker.log_artifact(args.out / name)
    finally:
        shutdown()
        signal.signal(signal.SIGTERM, previous)
    return 0


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def write_outputs(out: Path, history: list[dict], *, has_val: bool, vocab_size: int, protocol: dict[str, str]) -> dict:
    """``history.csv`` and ``train_metrics.json`` (best epoch; fractions) from the fit history."""
    if not history:
        raise StageError(f"{out}: no epoch was trained (train.epochs is 0?)")
    frame = pd.DataFrame(history)
    with atomic_path(out / "history.csv") as tmp:
        frame.to_csv(tmp, index=False)
    best_epoch = int(history[-1]["best_epoch"])
    best = next(r for r in history if r["epoch"] == best_epoch)
    summary = {
        **{k: float(v) for k, v in best.items() if k.startswith("val/")},
        "best_epoch": best_epoch,
        "best_by": "val/R@1,IoU=0.5, ties by val/mIoU" if has_val else "last epoch (no validation split)",
        "epochs": int(history[-1]["epoch"]),
        "final_loss": float(history[-1]["loss"]),
        "train_time_s": float(sum(r["time_s"] for r in history)),
        "vocab_size": vocab_size,
        "unit": "fraction",
    }
    numbers = {k: v for k, v in summary.items() if isinstance(v, int | float)}  # DVC: a metrics file holds numbers
    write_json(out / "train_metrics.json", numbers)
    text = {k: v for k, v in summary.items() if k not in numbers}
    write_json(out / "train_info.json", {**text, "protocol": protocol})  # the val/ metrics' protocol, text
    return summary


def _plain(obj: object) -> object:
    """Tuples -> lists so that yaml.safe_dump writes plain YAML."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


if __name__ == "__main__":
    sys.exit(run_stage(main))
