"""Stage ``compare``: one variant against the reference (full FIAN) on the same test queries.

    python -m fian_pipeline.compare --metrics R@1,IoU=0.5 R@1,IoU=0.7 --resamples 2000 --level 0.95 \\
        --bootstrap-seed 0 --predictions results/<d>/<v>/seed0/predictions_<s>.jsonl ... \\
        --info results/<d>/<v>/seed0/info_<s>.json ... \\
        --reference results/<d>/fian/seed0/predictions_<s>.jsonl ... \\
        --reference-info results/<d>/fian/seed0/info_<s>.json ... --out results/<d>/<v>/compare_fian_<s>.json

One file per seed for each list, in the same seed order (the registry passes them).  Per metric
``R@1,IoU=m``: the pooled R@1 of both, the mean paired difference (variant - reference, a
fraction) and its ``--level`` percentile interval from ``--resamples`` bootstrap resamples of the
queries (seeded by ``--bootstrap-seed``), and whether it contains 0 (fian/reports/compare.py;
docs/PIPELINE.md "Seeds and intervals").  The hit rule comes from the info files' protocol
(``iou_rule``): every run must share it, and the seeds of the two lists must match pairwise,
else an error naming the file.  Nothing is written on error.  Reads no params.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from fian.io import write_json
from fian_pipeline.common import StageError, command_parser, run_stage


def _info(path: Path) -> tuple[str, int | None]:
    """(iou_rule, seed) recorded in an info_<split>.json."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise StageError(f"{path}: not valid JSON: {e}") from None
    rule = ((data.get("protocol") or {}) if isinstance(data, dict) else {}).get("iou_rule")
    if rule not in ("gt", "ge"):
        raise StageError(f"{path}: no protocol.iou_rule ('gt' or 'ge'): cannot tell what a hit is")
    return rule, (data.get("provenance") or {}).get("seed")


def main(argv: Sequence[str] | None = None) -> int:
    p = command_parser("compare", __doc__)
    p.add_argument("--predictions", type=Path, nargs="+", required=True, help="the variant's predictions, one per seed")
    p.add_argument("--info", type=Path, nargs="+", required=True, help="info_<split>.json beside each, same order")
    p.add_argument("--reference", type=Path, nargs="+", required=True, help="the reference's predictions, same seeds")
    p.add_argument("--reference-info", type=Path, nargs="+", required=True, help="info_<split>.json beside each")
    p.add_argument("--metrics", nargs="+", default=["R@1,IoU=0.5", "R@1,IoU=0.7"], help="R@1,IoU=m metrics to compare")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (>= 1000)")
    p.add_argument("--level", type=float, default=0.95, help="interval level, in (0, 1)")
    p.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the resampling generator")
    p.add_argument("--out", type=Path, required=True, help="compare_<reference>_<split>.json to write")
    args = p.parse_args(argv)
    if args.resamples < 1000:
        p.error(f"--resamples: at least 1000, got {args.resamples}")
    if not 0 < args.level < 1:
        p.error(f"--level: in (0, 1), got {args.level}")
    for flag, paths, infos in (("--info", args.predictions, args.info), ("--reference-info", args.reference, args.reference_info)):
        if len(paths) != len(infos):
            p.error(f"{flag}: one file per predictions file, got {len(infos)} for {len(paths)}")
    if len(args.predictions) != len(args.reference):
        p.error(f"--reference: one file per seed of --predictions, got {len(args.reference)} for {len(args.predictions)}")

    mine = [_info(f) for f in args.info]
    theirs = [_info(f) for f in args.reference_info]
    rules = {r for r, _ in mine + theirs}
    if len(rules) > 1:
        where = ", ".join(f"{f}: {r}" for f, (r, _) in zip([*args.info, *args.reference_info], mine + theirs, strict=True))
        raise StageError(f"the runs use different hit rules ({where}): their R@1 are not comparable")
    for f, (_, s), g, (_, t) in zip(args.info, mine, args.reference_info, theirs, strict=True):
        if s != t:
            raise StageError(f"{f}: seed {s}, but its reference {g} is seed {t}: pass the seeds in the same order")

    from fian.reports.compare import compare_runs

    result = compare_runs(args.predictions, args.reference, metrics=args.metrics, iou_rule=rules.pop(),
                          resamples=args.resamples, level=args.level, seed=args.bootstrap_seed)  # fmt: skip
    result["seeds"] = [s for _, s in mine]
    result["predictions"] = [str(f) for f in args.predictions]
    result["reference_predictions"] = [str(f) for f in args.reference]
    write_json(args.out, result)
    for name, r in result["metrics"].items():
        mark = " (contains 0)" if r["contains_zero"] else ""
        print(f"{args.out}: {name} difference {100 * r['difference']:+.2f} "
              f"[{100 * r['low']:+.2f}, {100 * r['high']:+.2f}]{mark}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main))
