"""Stage ``tables``: the paper's Tables 1-6 with our numbers beside the reported ones, and Table 7.

    python -m fian_pipeline.tables --results results --out reports [--ours-from synthetic] [--split test]
    python -m fian_pipeline.tables ... --ours-from tacos=tacos_mini --ours-from charades=charades_mini
    python -m fian_pipeline.tables ... --seeds 0 1 2      # a workflow config with seeds:
    python -m fian_pipeline.tables ... --datasets synthetic --stand-in synthetic   # Table 7's datasets

Reads ``results/<dataset>/<variant>/metrics_<split>.json`` (with ``info_<split>.json`` and
``train_info.json`` beside it) of the runs each table names (fian/reports/paper_results.yaml:
``ours``), or with ``--seeds`` each variant's ``summary_<split>.json`` (stage aggregate) and
``compare_fian_<split>.json`` (stage compare), and writes per table ``<out>/table<k>.tex`` (a
``table`` environment; booktabs), ``table<k>.md`` (its Markdown twin), ``table<k>.csv`` (every
value of every seed) and ``table<k>.provenance.json`` (where each "(ours)" cell came from).
A missing run is "---"; a malformed metrics or summary file is an error naming the file and the
key, and then nothing is written.  Reads no params (the tables' layout is the paper's).

Table 7 (ours, fian/reports/bias_table.py): per dataset of ``--datasets`` (the workflow passes
every dataset of its config; without the flag: every folder under ``--results``), FIAN, the moment
prior, blind FIAN (variant ``blind``) and FIAN with shuffled videos (``<dataset>/fian/shuffled/``);
the datasets of ``--stand-in`` (generated) in a block of their own, never bold.
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
    p.add_argument("--out", type=Path, required=True, help="folder for table1.tex ... table7.tex (+ .md, .csv, .provenance.json)")
    p.add_argument(
        "--ours-from",
        action="append",
        default=None,
        metavar="[TABLE_DATASET=]DATASET",
        help="take every table's '(ours)' rows from DATASET (demo), or, repeated as TABLE_DATASET=DATASET, "
        "those of the tables of TABLE_DATASET (the rehearsal)",
    )
    p.add_argument("--split", default="test", help="which metrics_<split>.json to report")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="the config's seeds: read each variant's summary_<split>.json and compare_fian_<split>.json")  # fmt: skip
    p.add_argument("--datasets", nargs="+", default=None,
                   help="Table 7's datasets, in order, each `name` or `name:split` (a dataset's own test split; "
                        "default: every folder under --results)")  # fmt: skip
    p.add_argument("--stand-in", nargs="+", default=[], metavar="DATASET",
                   help="datasets of --datasets that stand in for real ones (generated): Table 7's own block")  # fmt: skip
    args = p.parse_args(argv)
    ours_from = ours_from_arg(p, args.ours_from)
    if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds: a seed is repeated: {args.seeds}")

    from fian.reports import bias_table
    from fian.reports.tables import KINDS, render_all

    datasets = args.datasets
    if datasets is None:
        datasets = sorted(d.name for d in args.results.iterdir() if d.is_dir()) if args.results.is_dir() else []
    unknown = sorted(set(args.stand_in) - {bias_table.entry(d)[0] for d in datasets})
    if unknown:
        p.error(f"--stand-in {unknown}: not among the datasets {datasets}")
    tables = render_all(args.results, ours_from=ours_from, split=args.split, seeds=args.seeds,
                        kinds=KINDS)  # all read before any write  # fmt: skip
    tables.update(bias_table.render(args.results, datasets, stand_in=args.stand_in, split=args.split,
                                    seeds=args.seeds, kinds=KINDS))  # fmt: skip
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
