"""Stage ``download``: fetch the released files named in params, verified by sha256.

    python -m fian_pipeline.download --params params/base.yaml params/datasets/<d>.yaml \
        --kind annotations|features|glove --out DIR

Sources come from ``dataset.annotation_sources``, ``dataset.feature_sources`` or ``text.glove``.
Downloads resume from ``<name>.part`` (HTTP Range; only while the server's ETag, or for a pinned
source Last-Modified + length, still match those recorded in ``<name>.part.json`` when the
``.part`` began; an unpinned source resumes only under a strong ETag; otherwise from zero), retry
with backoff, and the file appears only once its sha256 matches.  A source without a published sha256 is downloaded with a loud
warning and its computed hash is recorded in ``DIR/SHA256SUMS``; later runs verify against it.
Archives (.zip, .tar.gz, split ``.part-NN`` zips) are extracted into ``DIR`` after verification.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fian.data.download import download_sources
from fian_pipeline.common import load, parser, run_stage, warn_loud

KINDS = ("annotations", "features", "glove")


def main(argv: Sequence[str] | None = None) -> int:
    p: argparse.ArgumentParser = parser("download", __doc__)
    p.add_argument("--kind", choices=KINDS, required=True, help="which files of params to fetch")
    p.add_argument("--out", type=Path, required=True, help="folder the files are written to")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    args = p.parse_args(argv)
    cfg = load(args)
    if args.kind == "annotations":
        sources, key = cfg.dataset.annotation_sources, "dataset.annotation_sources"
    elif args.kind == "features":
        sources, key = cfg.dataset.feature_sources, "dataset.feature_sources"
    else:
        sources, key = ((cfg.text.glove,) if cfg.text.glove else ()), "text.glove"
    if not sources:
        raise ValueError(f"{key} is empty in {', '.join(map(str, args.params))}: nothing to download")
    done = download_sources(sources, args.out, progress=not args.no_progress)
    for f in done:
        if not f.pinned:
            warn_loud(f"{f.name}: no sha256 in params ({key}); downloaded UNVERIFIED, recorded sha256 "
                      f"{f.sha256} in {args.out / 'SHA256SUMS'}: pin it in params to verify it next time")
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main))
