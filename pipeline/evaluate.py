"""Stage ``evaluate``: score a trained checkpoint on one split (R@n, IoU=m and mIoU, Section 4.2).

    python -m fian_pipeline.evaluate --params params/base.yaml params/datasets/<d>.yaml params/variants/<v>.yaml \
        --data data/processed/<d> --text data/interim/<d>/text \
        --checkpoint results/<d>/<v>/checkpoint.pt --split test --out results/<d>/<v> [--seed N]

The model is rebuilt from the config stored in the checkpoint (its best-on-validation weights);
the evaluation settings (``eval.*``) come from ``--params``.  Writes ``predictions_<split>.jsonl``
(one query per line, ranked moments in seconds), ``metrics_<split>.json`` (numbers only: fractions)
and ``info_<split>.json`` (``"unit": "fraction"``, the split, the protocol of ``eval.iou_rule`` / ``eval.nms`` in words
under ``"protocol"``, and ``"provenance"``: the seed the checkpoint was trained with, the MLflow
runs of this evaluation and of the training, commit, device, the sha256 of the split and the
checkpoint).  ``--seed N`` (one seed's job of a config with ``seeds:``): the checkpoint must have
been trained with ``train.seed`` N (else an error naming it); the MLflow run is named by it.
Under torchrun only rank 0 evaluates (evaluation is fast).

``--shuffle-videos`` (stage ``shuffle``, the video-shuffle check of Table 7; ``--out`` is then
``results/<d>/<v>/shuffled``): every query is shown the features of another video of the split,
the videos permuted by a derangement seeded by ``eval.shuffle_seed`` (fian/baselines.py; no video
keeps its own); the query, its ground truth and duration are its own.  ``info_<split>.json`` adds
``"shuffle"``: the seed and which video's features each video's queries saw.  A split with fewer
than two videos cannot be shuffled: an error naming it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fian_pipeline.common import (
    StageError,
    interrupt_on_signal,
    load,
    override_tags,
    parser,
    run_stage,
    seed_arg,
)

log = logging.getLogger("fian.evaluate")


def main(argv: Sequence[str] | None = None) -> int:
    p: argparse.ArgumentParser = parser("evaluate", __doc__)
    p.add_argument("--data", type=Path, required=True, help="folder of the prepared splits (<split>.h5)")
    p.add_argument("--text", type=Path, required=True, help="folder of vocab.json and embeddings.npy")
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint.pt of the train stage")
    p.add_argument("--split", required=True, help="split name: reads <data>/<split>.h5")
    p.add_argument("--out", type=Path, required=True, help="output folder (predictions_<split>.jsonl, metrics_<split>.json)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    p.add_argument("--seed", type=seed_arg, default=None,
                   help="the train.seed the checkpoint must have been trained with (the workflow's per-seed jobs)")  # fmt: skip
    p.add_argument("--shuffle-videos", action="store_true",
                   help="the video-shuffle check: each query sees another video's features (eval.shuffle_seed)")  # fmt: skip
    args = p.parse_args(argv)
    cfg = load(args)

    from fian.data.dataset import GroundingSplit, load_embeddings
    from fian.distributed import init_from_env, shutdown
    from fian.evaluate import evaluate, protocol_info, write_metrics, write_predictions
    from fian.tracking import build_tracker
    from fian.train import build_model_from_checkpoint, load_checkpoint

    # a cancelled job (SLURM at its time limit, Snakemake) unwinds: the MLflow run ends KILLED,
    # nothing is half-written
    previous = signal.signal(signal.SIGTERM, interrupt_on_signal)
    info, device = init_from_env(args.device)
    try:
        if not info.is_main:
            return 0
        split_path = args.data / f"{args.split}.h5"
        split = GroundingSplit.load(split_path)
        shuffle = None
        if args.shuffle_videos:
            split, shuffle = shuffled(split, split_path, cfg.eval.shuffle_seed)
        embeddings, _ = load_embeddings(args.text)
        ckpt = load_checkpoint(args.checkpoint)
        try:
            model, trained_cfg = build_model_from_checkpoint(ckpt, embeddings, check_inputs=device.type != "cuda")
        except (ValueError, RuntimeError) as e:
            raise StageError(f"{args.checkpoint}: cannot rebuild the model: {e}") from None
        check_params(args.checkpoint, trained_cfg, cfg)
        if args.seed is not None and trained_cfg.train.seed != args.seed:
            raise StageError(f"{args.checkpoint}: trained with train.seed={trained_cfg.train.seed}, but --seed {args.seed}")
        if split.num_steps != trained_cfg.features.num_steps:
            raise StageError(f"{split_path}: num_steps={split.num_steps}, the model was trained on {trained_cfg.features.num_steps}")
        model.to(device)
        trained_by = (ckpt.get("tracking") or {}).get("run_id")  # the train run that wrote the checkpoint
        from fian.tracking import data_hashes

        hashes = data_hashes([split_path, args.checkpoint])  # MLflow tags and provenance
        tracker = build_tracker(
            cfg, stage="shuffle" if shuffle else "evaluate", hashes=hashes, split=args.split, out=args.out,
            seed=args.seed,
            tags={"split": args.split, "best_epoch": str(ckpt.get("best_epoch")), "seed": str(trained_cfg.train.seed),
                  **({"fian.train_run_id": str(trained_by)} if trained_by else {}),
                  **({"fian.shuffle_seed": str(cfg.eval.shuffle_seed)} if shuffle else {}), **override_tags(args)},
        )  # fmt: skip
        with tracker:
            tracker.log_params(cfg.flat())
            if tracker.run_id is not None:
                from fian.tracking import split_digests

                tracker.log_dataset(f"{cfg.dataset.name}/{args.split}", split_path, context="evaluation",
                                    digests=split_digests(split.records, split.video),
                                    sha256=hashes.get(f"data_sha256.{split_path.name}"))  # fmt: skip
            frame, metrics = evaluate(
                model, split.to(device), eval_cfg=cfg.eval, num_steps=trained_cfg.features.num_steps,
                device=device, amp=cfg.train.amp, offset_unit=trained_cfg.loss.offset_unit,
            )  # fmt: skip
            pred_path = args.out / f"predictions_{args.split}.jsonl"
            metrics_path = args.out / f"metrics_{args.split}.json"
            write_predictions(pred_path, frame)
            from fian_pipeline.provenance import device_info, git_state, mlflow_ref, strip_prefix

            provenance = {
                "seed": trained_cfg.train.seed, "mlflow": mlflow_ref(tracker), "train_run_id": trained_by,
                **git_state(),
                "device": device_info(device, 1), "inputs_sha256": strip_prefix(hashes),
            }  # fmt: skip
            write_metrics(metrics_path, metrics, split=args.split, n_queries=len(frame), protocol=protocol_info(cfg.eval),
                          best_epoch=ckpt.get("best_epoch"), info=args.out / f"info_{args.split}.json",
                          provenance=provenance, **({"shuffle": shuffle} if shuffle else {}))  # fmt: skip
            prefix = f"{args.split}_shuffled" if shuffle else args.split  # the model's metrics: kept apart
            tracker.log_metrics({f"{prefix}/{k}": v for k, v in metrics.items()},
                                model_id=_logged_model(tracker, trained_by))  # fmt: skip
            tracker.log_artifact(pred_path)
            tracker.log_artifact(metrics_path)
        log.info(
            "%s/%s %s%s: %s", cfg.dataset.name, cfg.variant, args.split, " (videos shuffled)" if shuffle else "",
            ", ".join(f"{k} {100 * v:.2f}%" for k, v in metrics.items()),
        )  # fmt: skip
    finally:
        shutdown()
        signal.signal(signal.SIGTERM, previous)
    return 0


def shuffled(split: Any, path: Path, seed: int) -> tuple[Any, dict]:
    """``split`` with every query shown another video (a derangement of its videos seeded by
    ``seed``) and what was done, for ``info_<split>.json``."""
    from fian.baselines import derangement

    n = len(split.video_ids)
    try:
        perm = derangement(n, seed)
    except ValueError as e:
        raise StageError(f"{path}: cannot shuffle its videos: {e}") from None
    return split.with_videos_from(perm), {
        "seed": int(seed), "n_videos": n, "method": "derangement of the split's videos (fian.baselines.derangement)",
        "features_from": {split.video_ids[i]: split.video_ids[int(j)] for i, j in enumerate(perm)},
    }  # fmt: skip


def _logged_model(tracker: Any, train_run_id: str | None) -> str | None:
    """The id of the model logged by the train run that wrote the checkpoint (its metrics link to it)."""
    if tracker.run_id is None or not train_run_id:
        return None
    from fian_pipeline.mlflow_model import logged_model_of

    model_id = logged_model_of(str(train_run_id), tracker.uri)
    if model_id is None:
        log.info("train run %s logged no model: the metrics are the evaluate run's only", train_run_id)
    return model_id


def check_params(checkpoint: Path, trained: Any, given: Any) -> None:
    """Keys of --params that change the model or its inputs must equal the checkpoint's (each named);
    the others (dataset.name, train.*, eval.*, ...) may differ and are listed in the log."""
    from fian.config_diff import compare

    diff = compare(trained.to_dict(), given.to_dict())
    names = f"trained as {trained.dataset.name}/{trained.variant}, --params describe {given.dataset.name}/{given.variant}"
    if diff.matter:
        also = f" (these differ too, harmlessly: {diff.describe_harmless()})" if diff.harmless else ""
        raise StageError(
            f"{checkpoint}: {names}; {len(diff.matter)} key(s) that change the model or its inputs differ: "
            f"{diff.describe_matter()}{also}"
        )
    if diff.harmless:
        log.info("%s: %s; keys that differ but do not change the model or its inputs: %s",
                 checkpoint, names, diff.describe_harmless())  # fmt: skip


if __name__ == "__main__":
    sys.exit(run_stage(main))
