"""Ask a trained model where a sentence happens in a video: ranked windows in seconds.

    fian predict --checkpoint results/<d>/<v>/checkpoint.pt --video clip.mp4 --query "a man opens the fridge" \
        [--top 5] [--json] [--out moments.json] [--plot timeline.png]
    fian predict --checkpoint CKPT --features features.h5 --video-id ID [--duration S] [--layout L] --query "..."
    fian predict --checkpoint CKPT --queries queries.jsonl --out answers.jsonl

Prints a table of the top windows (start, end, score; best first, after the model's NMS), or with
--json the list [{"start": s, "end": e, "score": p}, ...].  --queries reads one JSON object per
line, {"query": ..., "video": FILE} or {"query": ..., "features": FILE, "video_id": ID
[, "duration": S]} (optional "top"), and writes one line per input line to --out: the input object
plus "moments", or, for a line that cannot be answered, plus "line" (its number) and "error"; each
bad line is also reported on stderr and the exit status is then 1.  Files are written atomically.
A video is decoded and run through the backbone once: its encoding is cached by the file's content
hash and the feature recipe in a folder shared by all calls (fian.predict_cache; --cache-dir,
--cache-max-mb, --no-cache), so a second call on the same clip runs the model only.

Limits (params section "predict", the checkpoint's values; --limit KEY=VALUE overrides one): top,
the query's bytes and words (words past text.max_query_len are dropped, with a warning), the file's
size, the video's seconds and decoded frames, the features' rows.  Over a limit: an error naming
the key, before any decoding.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fian.predict_cache import DEFAULT_MAX_MB
from fian_pipeline.common import StageError, command_parser, run_stage, warn_loud


def _parser() -> argparse.ArgumentParser:
    p = command_parser("predict", __doc__)
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint.pt of the train stage")
    p.add_argument("--video", type=Path, help="a video file (decoded and encoded as the model's features were)")
    p.add_argument("--features", type=Path, help="precomputed features: a file (or folder) in a layout the project imports")
    p.add_argument("--video-id", help="the video's id in --features")
    p.add_argument("--duration", type=float, help="seconds of the video of --features (default: the file's attr)")
    p.add_argument("--layout", help="layout of --features (default: the checkpoint's dataset.feature_layout)")
    p.add_argument("--query", help="the sentence")
    p.add_argument("--queries", type=Path, help="JSONL of many (video, query) pairs; answers go to --out as JSONL")
    p.add_argument("--top", type=int, default=5, help="windows to return (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--out", type=Path, help="write the answer there (JSON; JSONL with --queries)")
    p.add_argument("--plot", type=Path, help="draw the top windows on the video's timeline with thumbnails, and the "
                   "attention of each refinement step (video->query, query->video) on the same time axis (PNG)")
    p.add_argument("--backbone-weights", type=Path, help="C3D/I3D weights file of the checkpoint's feature recipe")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--limit", action="append", default=[], metavar="KEY=VALUE",
                   help="override a limit of params section predict, e.g. max_video_seconds=7200 (repeatable)")  # fmt: skip
    p.add_argument("--cache-dir", type=Path, help="persistent cache of encoded videos (default: $FIAN_CACHE_DIR, "
                   "else ~/.cache/fian/videos); a second call on the same clip runs the model only")
    p.add_argument("--cache-max-mb", type=float, help=f"cap of the cache folder in MiB (default: $FIAN_CACHE_MAX_MB, "
                   f"else {DEFAULT_MAX_MB}); least recently used videos go first")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the persistent cache")
    return p


def parse_limits(pairs: Sequence[str]) -> dict[str, Any]:
    """``["max_top=20", ...]`` -> ``{"max_top": 20}`` (values read as YAML scalars; keys checked later)."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().removeprefix("predict.")
        if not sep or not key:
            raise StageError(f"--limit {pair!r}: expected KEY=VALUE, e.g. max_video_seconds=7200")
        out[key] = yaml.safe_load(value)
    return out


def read_queries(path: Path) -> list[dict[str, Any]]:
    """The non-empty lines of a --queries file, each ``{"line": n, "item": object or None, "error": str or None}``:
    a line that is not UTF-8, not JSON or not a well-formed query object carries its error."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: queries file not found")
    lines = []
    for i, raw in enumerate(path.read_bytes().splitlines(), 1):
        item, error = None, None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            lines.append({"line": i, "item": None, "error": f"not UTF-8 (byte {e.start + 1} of the line)"})
            continue
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            error = f"not valid JSON ({getattr(e, 'msg', 'nested too deeply')})"
        else:
            item = obj if isinstance(obj, dict) else None
            error = _line_problem(obj)
        lines.append({"line": i, "item": item, "error": error})
    if not lines:
        raise StageError(f"{path}: no queries")
    return lines


def _line_problem(obj: Any) -> str | None:
    """What is wrong with one parsed --queries line (None: nothing)."""
    from fian.predict import short

    if not isinstance(obj, dict) or not isinstance(obj.get("query"), str):
        return "expected an object with a string 'query'"
    if ("video" in obj) == ("features" in obj):
        return "give exactly one of 'video' and 'features' (+ 'video_id')"
    for key in ("video", "features"):
        if key in obj and not isinstance(obj[key], str):
            return f"'{key}' must be a file path (a string), got {short(obj[key])}"
    if "features" in obj and "video_id" not in obj:
        return "'features' needs a 'video_id'"
    top = obj.get("top")
    if "top" in obj and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
        return f"'top' must be an integer >= 1, got {short(top)}"
    return None


def _encode(p: Any, item: dict[str, Any], args: argparse.Namespace, base: Path | None) -> Any:
    def resolve(f: str | Path) -> Path:
        f = Path(f)
        return f if base is None or f.is_absolute() else base / f

    if item.get("video") is not None:
        return p.encode_video(resolve(item["video"]))
    return p.load_features(resolve(item["features"]), str(item["video_id"]), duration=item.get("duration"),
                           layout=item.get("layout") or args.layout)  # fmt: skip


def answer_lines(p: Any, items: list[dict[str, Any]], args: argparse.Namespace) -> int:
    """--queries: the cheap checks of every line first (query, top), then the videos; a bad line is
    answered with its error and reported on stderr; exit status 1 when any line failed."""
    from fian.io import atomic_path

    for it in items:  # the cheap checks of every line before any decoding
        if it["error"] is None:
            try:
                p.encode_query(it["item"]["query"])
                p.check_top(it["item"].get("top", args.top))
            except ValueError as e:
                it["error"] = str(e)
    out_lines = []
    for it in items:
        item = it["item"] or {}
        if it["error"] is None:
            try:
                v = _encode(p, item, args, args.queries.parent)
                moments = p.predict(item["query"], v, top=item.get("top", args.top))
                out_lines.append({**item, "moments": [m.to_dict() for m in moments]})
                continue
            except ValueError as e:  # PredictError, FeatureError: this line's input
                it["error"] = str(e)
        out_lines.append({**item, "line": it["line"], "error": it["error"]})
    with atomic_path(args.out) as tmp:
        tmp.write_text("".join(json.dumps(line) + "\n" for line in out_lines), encoding="utf-8")
    bad = [it for it in items if it["error"] is not None]
    for it in bad:
        print(f"{args.queries}: line {it['line']}: {it['error']}", file=sys.stderr)
    print(f"{len(items) - len(bad)} answers, {len(bad)} errors -> {args.out}")
    if bad:
        print(f"error: {len(bad)} of {len(items)} lines of {args.queries} could not be answered "
              f"(lines {', '.join(str(it['line']) for it in bad[:20])}{' ...' if len(bad) > 20 else ''}): "
              f"each has its \"error\" in {args.out}", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def table(moments: Sequence[Any], query: str, source: str) -> str:
    lines = [f"query: {query}", f"video: {source}", f"{'rank':>4}  {'start (s)':>9}  {'end (s)':>9}  {'score':>6}"]
    lines += [f"{r:>4}  {m.start:9.2f}  {m.end:9.2f}  {m.score:6.3f}" for r, m in enumerate(moments, 1)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.queries is not None:
        if args.out is None or args.query or args.video or args.features or args.plot:
            raise StageError("--queries takes --out FILE.jsonl and no --query/--video/--features/--plot")
    else:
        if not args.query:
            raise StageError("give --query TEXT (or --queries FILE.jsonl)")
        if (args.video is None) == (args.features is None):
            raise StageError("give exactly one of --video FILE and --features FILE --video-id ID")
        if args.features is not None and not args.video_id:
            raise StageError(f"--features {args.features} needs --video-id")
    if args.top < 1:
        raise StageError(f"--top must be >= 1, got {args.top}")
    for flag, path in (("--out", args.out), ("--plot", args.plot)):
        if path is not None and path.is_dir():
            raise StageError(f"{flag} {path}: is a folder; give a file path")
    limits = parse_limits(args.limit)
    items = read_queries(args.queries) if args.queries else None

    from fian.io import write_json
    from fian.predict import Predictor

    cache = None
    if not args.no_cache:
        from fian.predict_cache import VideoCache

        if args.cache_max_mb is not None and not args.cache_max_mb > 0:
            raise StageError(f"--cache-max-mb must be positive, got {args.cache_max_mb}")
        cache = VideoCache(args.cache_dir, None if args.cache_max_mb is None else int(args.cache_max_mb * 2**20))
    p = Predictor.from_checkpoint(args.checkpoint, device=args.device, backbone_weights=args.backbone_weights,
                                  limits=limits, video_cache=cache)  # fmt: skip
    p.check_top(args.top)  # before any decoding
    if p.random_weights:
        warn_loud(f"OFFLINE FALLBACK: {args.checkpoint} was trained on features of a {p.recipe.get('backbone')} "
                  "with RANDOM weights: these windows say nothing about the video's content")  # fmt: skip

    if items is not None:  # many: every line answered or given its error, then one write
        return answer_lines(p, items, args)

    p.encode_query(args.query)  # before the video: a bad query costs nothing
    item = {"video": args.video, "features": args.features, "video_id": args.video_id, "duration": args.duration}
    v = _encode(p, item, args, None)
    moments = p.predict(args.query, v, top=args.top)
    answer = [m.to_dict() for m in moments]
    if args.plot is not None:
        from fian.attention_maps import query_attention
        from fian.predict import thumbnails
        from fian.reports.plots import attention_panels, moments_timeline

        thumbs = thumbnails(args.video, v.duration) if args.video is not None else []
        _, maps, words = query_attention(p, args.query, v)  # each refinement step's attention, below
        panels = attention_panels(maps, 0, words, int(v.mask.sum()))
        moments_timeline(args.plot, args.query, v.duration, moments, thumbs, title=f"{v.source} ({args.checkpoint})",
                         attention=panels)  # fmt: skip
    if args.out is not None:
        write_json(args.out, answer)
    print(json.dumps(answer) if args.json else table(moments, args.query, v.source))
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main))
