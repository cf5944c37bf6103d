"""Stage ``plots``: a Figure-6-like timeline, the training curves and the attention maps of one run.

    python -m fian_pipeline.plots --params params/base.yaml params/datasets/<d>.yaml params/variants/<v>.yaml \
        --predictions results/<d>/<v>/predictions_<split>.jsonl --history results/<d>/<v>/history.csv \
        --checkpoint results/<d>/<v>/checkpoint.pt --data data/processed/<d> --text data/interim/<d>/text \
        --split <split> --out reports/figures/<d>/<v>

Writes ``<out>/timeline_<split>.png`` (ground truth vs top-1 prediction for a few queries, the
sentence as title), ``<out>/training_curves_<split>.png`` (loss terms and validation metrics per
epoch) and ``<out>/attention_<split>.png``: for the timeline's first query, the attention of each
refinement step of the checkpoint's model (video -> query and query -> video, eq. 9-10; the
model's own weights, fian.attention_maps), time along x, ground truth and top-1 marked.  The
params give only the MLflow store (``tracking.*``): the run ``<d>/<v>/plots:<split>`` holds the
three figures as artifacts under ``figures/``, tagged with the train run of the checkpoint.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from fian_pipeline.common import StageError, load, parser, run_stage


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("plots", __doc__)
    p.add_argument(
        "--predictions", type=Path, required=True, help="predictions_<split>.jsonl of the evaluate stage"
    )
    p.add_argument("--history", type=Path, required=True, help="history.csv of the train stage")
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint.pt of the train stage (attention maps)")
    p.add_argument("--data", type=Path, required=True, help="folder of the prepared splits (<split>.h5)")
    p.add_argument("--text", type=Path, required=True, help="folder of vocab.json and embeddings.npy")
    p.add_argument("--split", required=True, help="split name (in the output file names)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--queries", type=int, default=4, help="queries in the timeline")
    args = p.parse_args(argv)
    cfg = load(args)

    import pandas as pd

    from fian.evaluate import read_predictions
    from fian.reports.plots import pick_queries, timeline, training_curves
    from fian.tracking import build_tracker

    run = f"{args.predictions.parent.parent.name}/{args.predictions.parent.name}"
    frame = read_predictions(args.predictions)
    if frame.empty:
        raise StageError(f"{args.predictions}: no predictions")
    try:
        history = pd.read_csv(args.history)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise StageError(f"{args.history}: not a history CSV: {e}") from None
    if "epoch" not in history.columns:
        raise StageError(f"{args.history}: no 'epoch' column (columns: {list(history.columns)})")
    figures = [args.out / f"{name}_{args.split}.png" for name in ("timeline", "training_curves", "attention")]
    ckpt = _checkpoint(args.checkpoint)
    trained_by = (ckpt.get("tracking") or {}).get("run_id")  # the train run that wrote the checkpoint
    tracker = build_tracker(
        cfg, stage="plots", inputs=[args.predictions, args.history, args.checkpoint], split=args.split,
        out=args.out, tags={"split": args.split, **({"fian.train_run_id": str(trained_by)} if trained_by else {})},
    )  # fmt: skip
    draw_attention = attention(ckpt, args, pick_queries(frame, args.queries).iloc[0])  # checks first: no figure yet
    with tracker:
        timeline(frame, figures[0], n=args.queries, title=f"{run}, {args.split} split")
        training_curves(history, figures[1], title=run)
        draw_attention(figures[2], title=f"{run}, {args.split} split: attention of each refinement step")
        for fig in figures:
            tracker.log_artifact(fig, "figures")
    print("wrote " + ", ".join(str(f) for f in figures))
    return 0


def _checkpoint(path: Path) -> dict:
    from fian.train import load_checkpoint

    return load_checkpoint(path)


def attention(ckpt: dict, args, row):  # noqa: ANN001, ANN201
    """The attention maps of the query ``row`` (a predictions row) under the checkpoint's model;
    returns ``draw(out, title=...)``, which writes their figure."""
    import torch

    from fian.attention_maps import capture_attention
    from fian.data.dataset import GroundingSplit, load_embeddings
    from fian.reports.plots import attention_figure, attention_panels
    from fian.train import build_model_from_checkpoint

    split_path = args.data / f"{args.split}.h5"
    split = GroundingSplit.load(split_path)
    embeddings, vocab = load_embeddings(args.text)
    try:
        model, trained_cfg = build_model_from_checkpoint(ckpt, embeddings)
    except (ValueError, RuntimeError) as e:
        raise StageError(f"{args.checkpoint}: cannot rebuild the model: {e}") from None
    if split.num_steps != trained_cfg.features.num_steps:
        raise StageError(f"{split_path}: num_steps={split.num_steps}, the model was trained on {trained_cfg.features.num_steps}")
    where = (split.rows == int(row["index"])).nonzero().flatten().tolist()
    if not where:
        raise StageError(f"{args.predictions}: query index {int(row['index'])} is not a row of {split_path}")
    batch = next(split.subset(torch.tensor(where[:1])).batches(1))
    _, maps = capture_attention(model.eval(), batch.video, batch.video_mask, batch.words, batch.word_mask)
    n_words, n_steps = int(batch.word_mask.sum()), int(batch.video_mask.sum())
    words = [vocab[i] for i in batch.words[0, :n_words].tolist()]
    panels = attention_panels(maps, 0, words, n_steps)
    seg = row["segments"][0] if len(row["segments"]) else None

    def draw(out: Path, *, title: str) -> Path:
        return attention_figure(
            out, panels, float(row["duration"]) * n_steps / split.num_steps, sentence=str(row["sentence"]),
            gt=(float(row["gt_start"]), float(row["gt_end"])), top1=(float(seg[0]), float(seg[1])) if seg else None,
            title=title,
        )  # fmt: skip

    return draw


if __name__ == "__main__":
    sys.exit(run_stage(main))
