"""Stage ``generate``: write a synthetic dataset in public layouts.

    python -m fian_pipeline.generate --params params/base.yaml params/datasets/synthetic.yaml \
        --annotations-out data/raw/synthetic/annotations --features-out data/raw/synthetic/features

Writes ActivityNet-Captions-style ``<split>.json`` (+ ``synthetic_meta.json``) and an
activitynet_c3d-layout HDF5 (``synthetic_c3d.hdf5``); the usual stages (annotations, features,
text, prepare) then treat it like a downloaded dataset.  Runs only when the params name
``dataset.synthetic`` explicitly; the output is generated data and says so loudly.

With ``dataset.synthetic.release: true`` the same generated videos are written as a tiny copy of
the public release of ``dataset.format`` (ActivityNet Captions, Charades-STA or TACoS: the files
that ``dataset.splits`` names, the release's video ids, units, feature layout and quirks;
fian/data/releases.py), so the real parsers and importers read them (the rehearsal,
workflow/config/paper-mini.yaml).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from fian_pipeline.common import StageError, load, log, parser, run_stage, warn_loud


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("generate", __doc__)
    p.add_argument("--annotations-out", type=Path, required=True, help="folder for <split>.json")
    p.add_argument("--features-out", type=Path, required=True, help="folder of the feature file(s)")
    args = p.parse_args(argv)
    cfg = load(args)
    if not cfg.dataset.synthetic:
        raise StageError(
            f"{args.params[-1]}: dataset.synthetic is empty: the generate stage only writes the synthetic "
            "dataset (set dataset.synthetic, e.g. params/datasets/synthetic.yaml)"
        )
    from fian.data.synthetic import SyntheticSpec, generate, write_synthetic

    try:
        spec = SyntheticSpec.from_dict(cfg.dataset.synthetic, cfg.dataset.feature_dim)
    except (TypeError, ValueError) as e:
        raise StageError(f"{args.params[-1]}: {e}") from None
    warn_loud(
        f"SYNTHETIC DATA: generating the '{cfg.dataset.name}' dataset (seed {spec.seed}); "
        "its numbers say nothing about real videos"
    )
    ds = generate(spec, cfg.dataset.feature_dim)
    if spec.release:
        from fian.data.releases import ReleaseSpecError, write_release

        try:
            summary = write_release(
                ds, args.annotations_out, args.features_out, fmt=cfg.dataset.format,
                layout=cfg.dataset.feature_layout, splits=cfg.dataset.splits, name=cfg.dataset.name,
            )  # fmt: skip
        except ReleaseSpecError as e:
            raise StageError(f"{args.params[-1]}: {e}") from None
        for split, s in summary["splits"].items():
            log.info("synthetic %s release, %s: %d videos, %d records", cfg.dataset.format, split,
                     s["videos"], s["records"])  # fmt: skip
        return 0
    if cfg.dataset.format != "activitynet" or cfg.dataset.feature_layout != "activitynet_c3d":
        raise StageError(
            f"{args.params[-1]}: dataset.format {cfg.dataset.format!r} / feature_layout "
            f"{cfg.dataset.feature_layout!r}: the synthetic demo's files are ActivityNet-style; set "
            "dataset.synthetic.release: true to write a copy of that release"
        )
    summary = write_synthetic(ds, args.annotations_out, args.features_out)
    for split, s in summary["splits"].items():
        log.info("synthetic %s: %d videos, %d queries %s", split, s["videos"], s["queries"], s["kinds"])
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main))
