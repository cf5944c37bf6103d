"""Stage ``annotations``: parse and validate the raw annotation files of a dataset.

    python -m fian_pipeline.annotations --params params/base.yaml params/datasets/<d>.yaml \
        --raw data/raw/<d>/annotations --out data/interim/<d>/annotations

Writes ``<split>.parquet`` (columns of :data:`fian.data.annotations.COLUMNS`) for every split of
``dataset.splits`` and ``counts.json`` (what each ``dataset.policy`` case dropped or clipped).
Nothing is written unless every split parses and validates.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from fian.data.annotations import load_annotations
from fian.io import atomic_path, write_json
from fian_pipeline.common import load, parser, run_stage

log = logging.getLogger("fian.annotations")


def main(argv: Sequence[str] | None = None) -> int:
    p: argparse.ArgumentParser = parser("annotations", __doc__)
    p.add_argument("--raw", type=Path, required=True, help="folder of the raw annotation files")
    p.add_argument("--out", type=Path, required=True, help="output folder (<split>.parquet, counts.json)")
    args = p.parse_args(argv)
    cfg = load(args)
    ds = cfg.dataset
    tables, counts = load_annotations(args.raw, ds.format, ds.splits, ds.policy)
    for split, df in tables.items():
        with atomic_path(args.out / f"{split}.parquet") as tmp:
            df.to_parquet(tmp, index=False)
        c = counts[split]
        log.info("%s/%s: %d of %d pairs kept (%d videos); start>=end %d, past end %d (%s), empty %d, "
                 "missing duration %d%s", ds.name, split, c["pairs_kept"], c["pairs_raw"], c["videos_kept"],
                 c["start_ge_end"], c["past_end"], ds.policy.past_end, c["empty_sentence"], c["missing_duration"],
                 f"; {c['outside_video_kept']} wholly outside the video KEPT (prepare drops them)"
                 if c.get("outside_video_kept") else "")
    write_json(args.out / "counts.json", {"dataset": ds.name, "format": ds.format,
                                          "policy": dataclasses.asdict(ds.policy), "splits": counts})
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main))
