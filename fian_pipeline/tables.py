"""Stage ``tables``: the paper's Tables 1-6 in LaTeX with our numbers beside the reported ones.

    python -m fian_pipeline.tables --results results --out reports [--ours-from synthetic] [--split test]

Reads ``results/<dataset>/<variant>/metrics_<split>.json`` of the runs each table names
(fian/reports/paper_results.yaml: ``ours``) and writes ``<out>/table1.tex`` ... ``table6.tex``
(each a ``table`` environment; booktabs).  A missing run is "---"; a malformed metrics file is an
error naming the file and the key, and then no table is written.  Reads no params (the tables'
layout is the paper's).
"""

from __future__ import annotations

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
        "--ours-from", default=None, help="take every table's '(ours)' rows from this dataset (demo)"
    )
    p.add_argument("--split", default="test", help="which metrics_<split>.json to report")
    args = p.parse_args(argv)

    from fian.reports.tables import render_all

    tables = render_all(args.results, ours_from=args.ours_from, split=args.split)  # all read before any write
    for name, text in tables.items():
        write_text(args.out / name, text)
    log.info(
        "wrote %s to %s (our rows from %s)",
        ", ".join(tables),
        args.out,
        args.ours_from or "each table's dataset",
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main))
