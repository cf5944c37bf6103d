"""Stage ``plots``: a Figure-6-like timeline and the training curves of one run.

    python -m fian_pipeline.plots --predictions results/<d>/<v>/predictions_<split>.jsonl \
        --history results/<d>/<v>/history.csv --split <split> --out reports/figures/<d>/<v>

Writes ``<out>/timeline_<split>.png`` (ground truth vs top-1 prediction for a few queries, the
sentence as title) and ``<out>/training_curves_<split>.png`` (loss terms and validation metrics per
epoch).  Reads no params.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from fian_pipeline.common import StageError, command_parser, run_stage


def main(argv: Sequence[str] | None = None) -> int:
    p = command_parser("plots", __doc__)
    p.add_argument(
        "--predictions", type=Path, required=True, help="predictions_<split>.jsonl of the evaluate stage"
    )
    p.add_argument("--history", type=Path, required=True, help="history.csv of the train stage")
    p.add_argument("--split", required=True, help="split name (in the output file names)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--queries", type=int, default=4, help="queries in the timeline")
    args = p.parse_args(argv)

    import pandas as pd

    from fian.evaluate import read_predictions
    from fian.reports.plots import timeline, training_curves

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
    timeline(
        frame, args.out / f"timeline_{args.split}.png", n=args.queries, title=f"{run}, {args.split} split"
    )
    training_curves(history, args.out / f"training_curves_{args.split}.png", title=run)
    print(f"wrote {args.out}/timeline_{args.split}.png, {args.out}/training_curves_{args.split}.png")
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main))
