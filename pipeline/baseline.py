"""Stage ``baseline``: the moment prior (query-blind) on one split, with the metrics of Section 4.2.

    python -m fian_pipeline.baseline --params params/base.yaml params/datasets/<d>.yaml \
        --data data/processed/<d> --split test --out results/<d>/prior

Fits :class:`fian.baselines.MomentPrior` (``eval.max_predictions`` k-means centres of the
training moments normalized by duration, seeded by ``train.seed``) on ``<data>/train.h5`` and
predicts the same ranked moments for every query of ``<data>/<split>.h5``.  Writes
``predictions_<split>.jsonl`` and ``metrics_<split>.json`` (fractions), as the evaluate stage
(``info_<split>.json``: the protocol and ``provenance``: seed, MLflow run, commit, input hashes);
MLflow gets the metrics and the fitted prior as the artifact ``moment_prior.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from fian_pipeline.common import load, override_tags, parser, run_stage

log = logging.getLogger("fian.baseline")

VARIANT = "moment_prior"


def main(argv: Sequence[str] | None = None) -> int:
    p: argparse.ArgumentParser = parser("baseline", __doc__)
    p.add_argument("--data", type=Path, required=True, help="folder of the prepared splits (train.h5, <split>.h5)")
    p.add_argument("--split", required=True, help="split to evaluate: reads <data>/<split>.h5")
    p.add_argument("--out", type=Path, required=True, help="output folder (predictions_<split>.jsonl, metrics_<split>.json)")
    args = p.parse_args(argv)
    cfg = dataclasses.replace(load(args), variant=VARIANT)

    import numpy as np

    from fian.baselines import MomentPrior, normalized_moments
    from fian.data.dataset import GroundingSplit
    from fian.evaluate import (
        predictions_frame,
        protocol_info,
        rank_levels,
        score_predictions,
        write_metrics,
        write_predictions,
    )
    from fian.metrics import rank_with_nms
    from fian.tracking import build_tracker

    train_path, split_path = args.data / "train.h5", args.data / f"{args.split}.h5"
    train = GroundingSplit.load(train_path)
    split = GroundingSplit.load(split_path)
    gt_train = train.gt.numpy().astype(np.float64)
    try:
        moments = normalized_moments(gt_train[:, 0], gt_train[:, 1], train.duration.numpy())
    except ValueError as e:
        raise ValueError(f"{train_path}: {e}") from None
    prior = MomentPrior.fit(moments, cfg.eval.max_predictions, seed=cfg.train.seed)
    segs, scores = prior.predict(split.duration.numpy())  # [Q, K, 2] seconds, [Q, K]
    by_level = rank_levels(segs, scores, cfg.eval)  # NMS of eval.*: the list each IoU level is scored on
    gt = split.gt.numpy()
    ev = cfg.eval
    metrics = score_predictions(by_level, gt, top_n=ev.top_n, ious=ev.iou_thresholds, iou_rule=ev.iou_rule,
                                durations=split.duration.numpy())  # dR@n,IoU=m too
    # the user's list: NMS at eval.nms_threshold, as the evaluate stage writes it
    user_segs, user_scores = rank_with_nms(segs, scores, ev.nms_threshold)
    frame = predictions_frame(split.records, split.rows.numpy(), user_segs, user_scores, gt=gt, by_level=by_level,
                              iou_rule=ev.iou_rule)  # fmt: skip

    from fian.tracking import data_hashes
    from fian_pipeline.provenance import git_state, mlflow_ref, strip_prefix

    hashes = data_hashes([train_path, split_path])  # MLflow tags and provenance
    with build_tracker(cfg, stage="baseline", hashes=hashes, tags={"split": args.split, **override_tags(args)}) as tracker:
        tracker.log_params({"baseline": VARIANT, "k": cfg.eval.max_predictions, "seed": cfg.train.seed})
        # the fitted prior is a result, not a setting: an artifact (a long nested list as a param
        # fills every comparison view of the MLflow UI)
        tracker.log_json(prior_json(prior, cfg.eval.max_predictions, cfg.train.seed), "moment_prior.json")
        pred_path = args.out / f"predictions_{args.split}.jsonl"
        metrics_path = args.out / f"metrics_{args.split}.json"
        write_predictions(pred_path, frame)
        write_metrics(metrics_path, metrics, split=args.split, n_queries=len(frame), protocol=protocol_info(cfg.eval),
                      baseline=VARIANT, info=args.out / f"info_{args.split}.json",
                      provenance={"seed": cfg.train.seed, "mlflow": mlflow_ref(tracker), **git_state(),
                                  "inputs_sha256": strip_prefix(hashes)})  # fmt: skip
        tracker.log_metrics({f"{args.split}/{k}": v for k, v in metrics.items()})
        tracker.log_artifact(metrics_path)
    log.info("moment prior: centres (start, end) / duration %s, weights %s",
             np.round(prior.centres, 3).tolist(), np.round(prior.weights, 3).tolist())  # fmt: skip
    log.info("%s moment prior on %s: %s", cfg.dataset.name, args.split,
             ", ".join(f"{k} {100 * v:.2f}%" for k, v in metrics.items()))  # fmt: skip
    return 0


def prior_json(prior, k: int, seed: int) -> dict:  # noqa: ANN001
    """The fitted moment prior in plain types: its centres ``[start, end]`` as fractions of the
    video's duration, ranked by cluster size, with each cluster's weight (the MLflow artifact
    ``moment_prior.json``)."""
    return {"baseline": VARIANT, "k": int(k), "seed": int(seed), "unit": "fraction of the video's duration",
            "centres": [[float(s), float(e)] for s, e in prior.centres], "weights": [float(w) for w in prior.weights]}  # fmt: skip


if __name__ == "__main__":
    sys.exit(run_stage(main))
