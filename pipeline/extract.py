"""Stage ``extract``: C3D or I3D features from raw videos into the feature store.

    python -m fian_pipeline.extract --params params/base.yaml params/datasets/<d>.yaml \
        --videos DIR --weights FILE --out data/interim/<d>/features.h5 [--ids FILE]

Every video file in ``--videos`` (``<video_id>.<ext>``; or only the ids listed one per line in
``--ids``) is decoded, cut into clips (``extract.clip_len``, ``extract.stride_frames``) and
embedded by ``extract.backbone``.  Per-video results go to ``<out>.parts/`` and are reused when
the stage is run again; the store is written atomically only when every video succeeded.  Videos
that fail are listed (also in ``<out>.parts/failed.json``) and the stage exits 1.  Without
``--weights`` it fails unless ``extract.allow_random_weights`` (synthetic data only; loud; the
store is tagged ``random_weights=True``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from fian.extract.video import VIDEO_SUFFIXES
from fian.io import write_json
from fian_pipeline.common import StageError, load, parser, run_stage, warn_loud

log = logging.getLogger("fian.extract")


def find_videos(folder: Path) -> dict[str, Path]:
    """video id (file stem) -> file, for the video files directly in ``folder`` (hidden files, such as
    a killed copy's temp or macOS's ``._clip.mp4``, are not videos)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: video folder not found")
    found: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES and not f.name.startswith("."):  # no temps
            if f.stem in found:
                raise StageError(
                    f"{folder}: two files for video id {f.stem!r}: {found[f.stem].name}, {f.name}"
                )
            found[f.stem] = f
    return found


def read_ids(path: Path) -> list[str]:
    """One video id per line; blank lines and lines starting with '#' are ignored."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: id list not found")
    ids: list[str] = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        vid = line.strip()
        if not vid or vid.startswith("#"):
            continue
        if "/" in vid:
            raise StageError(f"{path}: line {i}: video id {vid!r} contains '/'")
        if vid in ids:
            raise StageError(f"{path}: line {i}: video id {vid!r} listed twice")
        ids.append(vid)
    if not ids:
        raise StageError(f"{path}: no video ids")
    return ids


def main(argv: Sequence[str] | None = None) -> int:
    p: argparse.ArgumentParser = parser("extract", __doc__)
    p.add_argument("--videos", type=Path, required=True, help="folder of <video_id>.<ext> video files")
    p.add_argument(
        "--weights", type=Path, default=None, help="backbone checkpoint (c3d.pickle or rgb_imagenet.pt)"
    )
    p.add_argument("--out", type=Path, required=True, help="feature store to write (HDF5)")
    p.add_argument("--ids", type=Path, default=None, help="only these video ids (one per line)")
    args = p.parse_args(argv)
    cfg = load(args)
    ex = cfg.extract

    import torch

    from fian.extract.extractor import (
        ExtractSettings,
        assemble_store,
        build_backbone,
        extract_videos,
        parts_dir,
    )
    from fian.io import sha256_file

    files = find_videos(args.videos)
    ids = read_ids(args.ids) if args.ids else sorted(files)
    if not ids:
        raise StageError(f"{args.videos}: no video files ({', '.join(VIDEO_SUFFIXES)})")

    backbone = build_backbone(
        ex.backbone,
        args.weights,
        layer=ex.layer,
        c3d_mean_rgb=ex.c3d_mean_rgb,
        c3d_bgr=ex.c3d_bgr,
        allow_random_weights=ex.allow_random_weights,
        seed=cfg.train.seed,
    )
    if cfg.dataset.feature_dim != backbone.feature_dim:
        log.warning(
            "dataset.feature_dim=%d but %s gives %d-d features: set dataset.feature_dim: %d for the stages that "
            "read this store",
            cfg.dataset.feature_dim, ex.backbone, backbone.feature_dim, backbone.feature_dim,
        )  # fmt: skip
    if backbone.random_weights:
        warn_loud(
            f"OFFLINE FALLBACK: {ex.backbone} with RANDOM weights (extract.allow_random_weights: true). "
            f"These features are meaningless for real videos; the store {args.out} is tagged random_weights=True."
        )
    settings = ExtractSettings(
        backbone=ex.backbone,
        layer=ex.layer if ex.backbone == "c3d" else None,
        weights=backbone.weights,
        weights_sha256=sha256_file(args.weights) if args.weights else None,
        clip_len=ex.clip_len,
        stride_frames=ex.stride_frames,
        fps=ex.fps,
        random_weights=backbone.random_weights,
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    parts = parts_dir(args.out)
    log.info(
        "extract %s (%s) from %d videos on %s into %s", ex.backbone, backbone.weights, len(ids), device, parts
    )
    report = extract_videos(
        backbone,
        [(vid, files.get(vid)) for vid in ids],
        parts,
        settings,
        batch_size=ex.batch_size,
        num_workers=ex.num_workers,
        device=device,
        amp=ex.amp,
        progress=sys.stderr.isatty(),
    )
    log.info(
        "%d extracted, %d already done, %d failed", len(report.done), len(report.skipped), len(report.failed)
    )
    if report.failed:
        write_json(parts / "failed.json", report.failed)
        lines = "\n".join(f"  {vid}: {why}" for vid, why in sorted(report.failed.items()))
        print(
            f"error: {len(report.failed)} of {len(ids)} videos failed; no store written to {args.out}.\n{lines}\n"
            f"The {len(report.done) + len(report.skipped)} extracted videos are kept in {parts} and skipped on a "
            "rerun: fix or replace the files above, or leave their ids out (--ids), and run again.",
            file=sys.stderr,
        )
        return 1
    n = assemble_store(args.out, parts, ids, settings, backbone.feature_dim)
    log.info("wrote %d videos to %s", n, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main))
