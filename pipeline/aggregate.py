"""Stage ``aggregate``: the seeds of one (dataset, variant, split) in one summary file.

    python -m fian_pipeline.aggregate --metrics results/<d>/<v>/seed0/metrics_<s>.json ... \\
        --info results/<d>/<v>/seed0/info_<s>.json ... --train-info results/<d>/<v>/seed0/train_info.json ... \\
        --out results/<d>/<v>/summary_<s>.json

One ``--metrics``, ``--info`` and ``--train-info`` file per seed, in the same order (a workflow
config with ``seeds:``; the registry passes them).  Writes ``summary_<split>.json``: per metric the
mean, the sample standard deviation (ddof=1; null for one seed), min, max, n and every seed's
value (fractions, keyed by seed); the seeds; the evaluation protocol (the same for every seed,
else an error); and per seed where it came from (the ``provenance`` of its train and evaluate
jobs).  The seed of each run is read from its files (train_info.json and info_<split>.json must
agree); a repeated seed, a missing provenance or a malformed file is an error naming the file,
and nothing is written.  Reads no params.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from fian.io import write_json
from fian_pipeline.common import StageError, command_parser, run_stage


def _json(path: Path) -> dict:
    from fian.reports.tables import read_json_object

    return read_json_object(path)


def _seed(path: Path, data: dict) -> int:
    seed = (data.get("provenance") or {}).get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise StageError(f"{path}: no provenance.seed (written by the train/evaluate stages since issue 16): rerun it")
    return seed


def summarize_runs(metrics: Sequence[Path], infos: Sequence[Path], train_infos: Sequence[Path]) -> dict:
    """The summary of one variant's seeds (see the module docstring)."""
    from fian.reports.stats import summarize
    from fian.reports.tables import read_metrics

    if not (len(metrics) == len(infos) == len(train_infos)) or not metrics:
        raise StageError(
            f"need one --metrics, --info and --train-info file per seed, got {len(metrics)}, {len(infos)}, {len(train_infos)}"
        )
    runs, values, protocol, split = [], {}, None, None
    for m_path, i_path, t_path in zip(metrics, infos, train_infos, strict=True):
        info, tinfo = _json(i_path), _json(t_path)
        seed = _seed(t_path, tinfo)
        if _seed(i_path, info) != seed:
            raise StageError(f"{i_path}: evaluates a model of seed {_seed(i_path, info)}, but {t_path} trained seed {seed}")
        if seed in values:
            raise StageError(f"{t_path}: seed {seed} given twice")
        ms = read_metrics(m_path)
        if protocol is None:
            protocol, split, first = info.get("protocol"), info.get("split"), i_path
        elif info.get("protocol") != protocol:
            raise StageError(f"{i_path}: protocol {info.get('protocol')} differs from {first}'s {protocol}")
        values[seed] = ms
        runs.append({"seed": seed, "metrics_file": str(m_path), "train": tinfo.get("provenance"),
                     "evaluate": info.get("provenance")})  # fmt: skip
    names = list(next(iter(values.values())))
    for seed, ms in values.items():
        if list(ms) != names:
            raise StageError(f"seed {seed}: metrics {sorted(ms)} differ from {sorted(names)}")
    return {
        "unit": "fraction",
        "split": split,
        "n": len(values),
        "seeds": list(values),
        "metrics": {name: summarize({s: ms[name] for s, ms in values.items()}) for name in names},
        "protocol": protocol,
        "runs": runs,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = command_parser("aggregate", __doc__)
    p.add_argument("--metrics", type=Path, nargs="+", required=True, help="metrics_<split>.json, one per seed")
    p.add_argument("--info", type=Path, nargs="+", required=True, help="info_<split>.json beside each, same order")
    p.add_argument("--train-info", type=Path, nargs="+", required=True, help="train_info.json of each run, same order")
    p.add_argument("--out", type=Path, required=True, help="summary_<split>.json to write")
    args = p.parse_args(argv)
    try:
        summary = summarize_runs(args.metrics, args.info, args.train_info)
    except ValueError as e:  # a malformed metrics file (fian.reports.tables.read_metrics): names it
        raise StageError(str(e)) from None
    write_json(args.out, summary)
    m = summary["metrics"].get("R@1,IoU=0.5")
    if m is not None:
        std = f" ± {100 * m['std']:.2f}" if m["std"] is not None else ""
        print(f"{args.out}: n={summary['n']} seeds {summary['seeds']}: R@1,IoU=0.5 {100 * m['mean']:.2f}{std} %")
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main))
