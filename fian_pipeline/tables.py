"""Stage ``tables``: the paper's Tables 1-6 in LaTeX with our numbers beside the reported ones.

    python -m fian_pipeline.tables --results results --out reports [--ours-from synthetic] [--split test]
    python -m fian_pipeline.tables ... --ours-from tacos=tacos_mini --ours-from charades=charades_mini

Reads ``results/<dataset>/<variant>/metrics_<split>.json`` of the runs each table names
(fian/reports/paper_results.yaml: ``ours``) and writes ``<out>/table1.tex`` ... ``table6.tex``
(each a ``table`` environment; booktabs).  A missing run is "---"; a malformed metrics file is an
error naming the file and the key, and then no table is written.  Reads no params (the tables'
layout is the paper's).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from fian.io import write_text
from fian_pipeline.common import command_parser, run_stage

log = logging.getLogger("fian.tables")


def main(argv: Sequence[str] | None = None) -> int:
    p = command_parser("tables", __doc__)
    p.add_argument(
        "--results", type=Path, required=True, help="results folder (results/<dataset>/<variant>/...)"
    )
    p.add_argument("--out", type=Path, required=True, help="folder for table1.tex ... table6.tex")
    p.add_argument(
        "--ours-from",
        action="append",
        default=None,
        metavar="[TABLE_DATASET=]DATASET",
        help="take every table's '(ours)' rows from DATASET (demo), or, repeated as TABLE_DATASET=DATASET, "
        "those of the tables of TABLE_DATASET (the rehearsal)",
    )
    p.add_argument("--split", default="test", help="which metrics_<split>.json to report")
    args = p.parse_args(argv)
    ours_from = ours_from_arg(p, args.ours_from)

    from fian.reports.tables import render_all

    tables = render_all(args.results, ours_from=ours_from, split=args.split)  # all read before any write
    for name, text in tables.items():
        write_text(args.out / name, text)
    log.info(
        "wrote %s to %s (our rows from %s)",
        ", ".join(tables),
        args.out,
        ours_from or "each table's dataset",
    )
    return 0


def ours_from_arg(p: argparse.ArgumentParser, values: list[str] | None) -> str | dict[str, str] | None:
    """``--ours-from D`` (once) -> ``"D"``; ``--ours-from T=D ...`` -> ``{T: D, ...}``; mixing is an error."""
    if not values:
        return None
    pairs = [v.partition("=") for v in values]
    if all(not sep for _, sep, _ in pairs):
        if len(values) > 1:
            p.error(f"--ours-from: one dataset, or TABLE_DATASET=DATASET pairs; got {values}")
        return values[0]
    if not all(sep and t and d for t, sep, d in pairs):
        p.error(f"--ours-from: expected TABLE_DATASET=DATASET in every value, got {values}")
    out: dict[str, str] = {}
    for t, _, d in pairs:
        if t in out:
            p.error(f"--ours-from: table dataset {t!r} given twice")
        out[t] = d
    return out


if __name__ == "__main__":
    sys.exit(run_stage(main))
