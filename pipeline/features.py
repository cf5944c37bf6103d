"""Stage ``features``: import a released feature file (by ``dataset.feature_layout``) into the store.

    python -m fian_pipeline.features --params params/base.yaml params/datasets/<d>.yaml \
        --raw data/raw/<d>/features --annotations data/interim/<d>/annotations \
        --out data/interim/<d>/features.h5

Only the videos that the annotation tables reference are imported (``<split>.parquet`` of each
split of ``dataset.splits``; the folder is never listed).  A referenced video without features
follows ``dataset.policy.missing_features`` (fail: an error naming the id and the file; drop:
counted and logged).  Counts go to ``<out stem>.counts.json`` beside the store (e.g.
``features.counts.json``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from fian_pipeline.common import StageError, load, log, parser, run_stage


def read_tables(annotations: Path, splits: Sequence[str]):
    """The ``<split>.parquet`` table of every split named in params, concatenated (pandas DataFrame).

    The names come from ``dataset.splits``, never from listing the folder (temp files share it).
    """
    import pandas as pd

    if not splits:
        raise StageError("dataset.splits is empty: name the annotation files of each split in params")
    frames = []
    for f in (annotations / f"{s}.parquet" for s in splits):
        if not f.is_file():
            raise FileNotFoundError(f"{f}: annotation table of a split in dataset.splits not found "
                                    "(run the annotations stage)")
        try:
            df = pd.read_parquet(f)
        except Exception as e:  # pyarrow raises several types for a corrupt file
            raise StageError(f"{f}: not a readable parquet table: {e}") from None
        missing = {"video_id", "duration"} - set(df.columns)
        if missing:
            raise StageError(f"{f}: columns {sorted(missing)} missing")
        frames.append(df.assign(_table=f.name))
    return pd.concat(frames, ignore_index=True)


def counts_path(out: Path) -> Path:
    return out.with_name(out.stem + ".counts.json")


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("features", __doc__)
    p.add_argument("--raw", type=Path, required=True, help="folder (or file) of the released features")
    p.add_argument("--annotations", type=Path, required=True, help="folder of <split>.parquet tables")
    p.add_argument("--out", type=Path, required=True, help="feature store to write (.h5)")
    args = p.parse_args(argv)
    cfg = load(args)
    from fian.data.features import import_features
    from fian.io import write_json

    tables = read_tables(args.annotations, list(cfg.dataset.splits))
    durations = tables.groupby("video_id")["duration"].first().to_dict()
    report = import_features(
        args.raw,
        durations.keys(),
        args.out,
        layout=cfg.dataset.feature_layout,
        feature_dim=cfg.dataset.feature_dim,
        backbone=cfg.dataset.backbone,
        missing=cfg.dataset.policy.missing_features,
        durations=durations,
    )
    write_json(counts_path(args.out), {"policy": cfg.dataset.policy.missing_features, **report.to_dict()})
    log.info(
        "imported %d/%d videos from %s (%d missing, policy %s)",
        report.imported, report.requested, report.source, len(report.missing), cfg.dataset.policy.missing_features,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main))
