"""Use a trained FIAN: one video (or its precomputed features) and a sentence -> ranked moments.

    >>> from fian import Predictor                                   # doctest: +SKIP
    >>> p = Predictor.from_checkpoint("results/tacos/fian/checkpoint.pt", device="cpu")
    >>> v = p.encode_video("clip.mp4")       # decode -> backbone -> the dataset's downsampling
    >>> p.predict("a man opens the fridge", v, top=5)
    [Moment(start=3.1, end=9.8, score=0.91), ...]                     # seconds, best first, after NMS

A thin layer over the engine: decoding (:func:`fian.extract.video.decode_video`), the backbone
(:func:`fian.extract.extractor.build_backbone`, :func:`~fian.extract.extractor.extract_frames`),
downsampling (:func:`fian.data.features.downsample`), tokenizing (:class:`fian.data.text.Vocab`),
the model rebuilt from the checkpoint (:func:`fian.train.build_model_from_checkpoint`) and the
decoding of its output (:func:`fian.inference.decode`: boundaries moved, NMS, top n, seconds).

The checkpoint is self-contained: besides the config and the weights (whose query encoder holds
the embedding row of every vocabulary word) it carries a ``"predict"`` bundle (:func:`make_bundle`)
of plain types: the vocabulary and the feature recipe (backbone, weights file name and sha256,
decode fps, clip length, stride, resize/crop, normalisation, PCA, num_steps).  Features that came
from a released file the recipe cannot recompute (ActivityNet's PCA-reduced C3D, generated
features) are marked ``recomputable: false``: such a checkpoint accepts precomputed features only.

Encoded videos are cached by the sha256 of the file's content: a second query on the same video
(or on a copy of it) costs only the model; with a ``video_cache`` (:mod:`fian.predict_cache`, what
``fian predict`` uses) also in the next process.

Every input is bounded by the limits of params section ``predict`` (:class:`fian.config.PredictConfig`;
the checkpoint's values, overridable with ``limits=``): ``top``, the query's bytes and words, the
file's size, the video's seconds and decoded frames, the features' rows.  A request over a limit
raises :class:`PredictError` naming the key before anything is decoded.  A clip shorter than the
smallest window is accepted, as the prepare stage accepts it (its rows are repeated to ``T``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import numbers
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from fian.config import Config, PredictConfig

log = logging.getLogger("fian.predict")

BUNDLE_KEY = "predict"  # the checkpoint entry holding the bundle
BUNDLE_VERSION = 1

# Why released features cannot be recomputed from a video, per feature layout of the import.
NOT_RECOMPUTABLE = {
    "activitynet_c3d": (
        "ActivityNet Captions' released C3D features (sub_activitynet_v1-3.c3d.hdf5) are fc7 activations "
        "reduced to 500-d by a PCA whose matrix the release does not ship"
    ),
    "tacos_c3d": (
        "TACoS' released C3D features (tall_c3d_features.hdf5) come from a C3D run whose frame sampling and "
        "preprocessing the release does not document"
    ),
    "i3d_hdf5": "the released I3D features come from a file whose extraction settings this project does not know",
    "i3d_npy": "the released I3D features come from files whose extraction settings this project does not know",
    "store": "the features were imported from a feature store, not extracted by this project's extract stage",
}


class PredictError(ValueError):
    """Bad input to a prediction: the message names the input (file, video id, query, checkpoint)."""


def short(value: Any, n: int = 60) -> str:
    """``repr(value)`` cut to about ``n`` characters (a client's 50 MB query is not echoed)."""
    text = repr(value)
    return text if len(text) <= n else f"{text[:n]}... ({len(text)} characters)"


def predict_limits(base: PredictConfig, overrides: Mapping[str, Any] | None = None) -> PredictConfig:
    """``base`` with ``overrides`` (some keys of params section ``predict``), validated like a params file."""
    from fian.config import ConfigError, PredictConfig, _build

    if not overrides:
        return base
    if not isinstance(overrides, Mapping):
        raise PredictError(f"predict limits: expected a mapping of predict.* keys, got {short(overrides)}")
    try:
        return _build(PredictConfig, {**dataclasses.asdict(base), **dict(overrides)}, "predict")
    except ConfigError as e:
        raise PredictError(f"predict limits: {e}") from None


@dataclass(frozen=True)
class Moment:
    """One ranked window: ``start``/``end`` in seconds of the video, ``score`` in [0, 1] (sigmoid)."""

    start: float
    end: float
    score: float

    def to_dict(self) -> dict[str, float]:
        return {"start": self.start, "end": self.end, "score": self.score}


@dataclass(frozen=True)
class EncodedVideo:
    """A video as the model sees it: ``features [T, D]`` and ``mask [T]`` after downsampling.

    ``n_features``: rows before downsampling; ``duration``: seconds; ``timings``: seconds spent in
    decode / backbone / downsample (empty for precomputed features); ``sha256``: of the file.
    """

    features: torch.Tensor
    mask: torch.Tensor
    duration: float
    n_features: int
    source: str
    sha256: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# The bundle a checkpoint carries
# --------------------------------------------------------------------------------------------


# the file each release's text above describes, with its width: another file in the same layout
# (a dataset of one's own) gets a reason that names its own file and width instead
RELEASE_FILES = {"activitynet_c3d": ("sub_activitynet_v1-3.c3d.hdf5", 500), "tacos_c3d": ("tall_c3d_features.hdf5", 4096)}


def not_recomputable_reason(layout: str, source: str, feature_dim: int) -> str:
    """Why imported features cannot be recomputed from a video (``source``: ``<layout>:<file>``)."""
    name = source.split(":", 1)[1] if ":" in source else source
    release = RELEASE_FILES.get(layout)
    if layout in NOT_RECOMPUTABLE and (release is None or release == (Path(name).name, feature_dim)):
        return NOT_RECOMPUTABLE[layout]
    if layout in NOT_RECOMPUTABLE:
        return (f"the {feature_dim}-d features of {name or 'an unnamed file'} (layout {layout}) were imported, not "
                "made by this project's extract stage: how they were computed is not recorded")
    return f"the features come from {source or 'an unnamed source'}, not from this project's extract stage"


def feature_recipe(cfg: Config, split_attrs: Mapping[str, Any]) -> dict[str, Any]:
    """How the training features were made, in plain types, from the config and the split's attrs.

    ``split_attrs``: the attrs of the prepared train split (``feature_source``, ``backbone``,
    ``random_weights`` and ``feature_store_attrs``, the file attrs of the feature store).
    """
    source = str(split_attrs.get("feature_source", ""))
    store = dict(split_attrs.get("feature_store_attrs") or {})
    recipe: dict[str, Any] = {
        "source": source,
        "num_steps": cfg.features.num_steps,
        "shorter": cfg.features.shorter,
        "feature_dim": cfg.dataset.feature_dim,
        "random_weights": bool(split_attrs.get("random_weights", False)),
        "pca": None,
    }
    if source.startswith("extract:"):
        ex = cfg.extract
        backbone = str(split_attrs.get("backbone") or ex.backbone)
        decode_fps = store.get("decode_fps", ex.fps)
        if isinstance(decode_fps, float) and math.isnan(decode_fps):
            decode_fps = None  # NaN in the store: each video's own rate
        weights = source.split(":")[-1]
        recipe.update(
            recomputable=True,
            reason="",
            backbone=backbone,
            layer=ex.layer if backbone == "c3d" else None,
            weights=weights,
            weights_sha256=(store.get("weights_sha256") or None),
            seed=cfg.train.seed,  # the extract stage seeds random backbone weights with train.seed
            fps=None if decode_fps is None else float(decode_fps),
            clip_len=int(store.get("clip_len", ex.clip_len)),
            stride_frames=int(store.get("frames_per_feature", ex.stride_frames)),
            c3d_mean_rgb=list(ex.c3d_mean_rgb),
            c3d_bgr=bool(ex.c3d_bgr),
            batch_size=ex.batch_size,
        )
        if backbone == "c3d":
            from fian.extract import c3d

            recipe.update(resize=list(c3d.RESIZE), short_side=None, crop=c3d.CROP,
                          normalization=f"C3D: minus the Sports-1M mean {list(ex.c3d_mean_rgb)} (RGB), "
                          f"{'BGR' if ex.c3d_bgr else 'RGB'} order")  # fmt: skip
        else:
            from fian.extract import i3d

            recipe.update(resize=None, short_side=i3d.SHORT_SIDE, crop=i3d.CROP,
                          normalization="I3D: RGB scaled to [-1, 1]")  # fmt: skip
    else:
        layout = source.split(":")[0] if ":" in source else ""
        if split_attrs.get("synthetic") or source.startswith("fian.data.synthetic"):
            reason = "the features were generated (fian.data.synthetic): there is no video behind them"
        else:
            reason = not_recomputable_reason(layout, source, cfg.dataset.feature_dim)
        recipe.update(recomputable=False, reason=reason, backbone=str(split_attrs.get("backbone", "")))
        if reason == NOT_RECOMPUTABLE.get("activitynet_c3d"):
            recipe["pca"] = "C3D fc7 (4096-d) -> 500-d PCA of the ActivityNet release (matrix not published)"
    return recipe


def make_bundle(cfg: Config, vocab: Sequence[str], split_attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The ``"predict"`` entry of a checkpoint: plain types only (``torch.load(weights_only=True)``)."""
    return {
        "version": BUNDLE_VERSION,
        "vocab": [str(t) for t in vocab],
        "recipe": feature_recipe(cfg, split_attrs),
    }


def attach_bundle(checkpoint: str | Path, bundle: Mapping[str, Any]) -> None:
    """Rewrite ``checkpoint`` (atomically) with ``bundle`` under :data:`BUNDLE_KEY`."""
    from fian.train import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(checkpoint)
    ckpt.pop("format", None)
    ckpt[BUNDLE_KEY] = dict(bundle)
    save_checkpoint(checkpoint, ckpt)


def _bundle_of(ckpt: Mapping[str, Any], path: Path) -> dict[str, Any]:
    bundle = ckpt.get(BUNDLE_KEY)
    if not isinstance(bundle, Mapping):
        raise PredictError(
            f"{path}: this checkpoint carries no predict bundle (vocabulary + feature recipe): it was written by "
            "an older fian; retrain it (fian train) with this version to predict from it"
        )
    if bundle.get("version") != BUNDLE_VERSION:
        raise PredictError(
            f"{path}: predict bundle version {bundle.get('version')!r}, this fian reads version {BUNDLE_VERSION}"
        )
    return dict(bundle)


# --------------------------------------------------------------------------------------------
# The predictor
# --------------------------------------------------------------------------------------------


def sha256_bytes_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


class Predictor:
    """A trained FIAN with its vocabulary and feature recipe; see the module docstring."""

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: Config,
        bundle: Mapping[str, Any],
        *,
        device: str | torch.device = "cpu",
        checkpoint: str | Path = "",
        backbone_weights: str | Path | None = None,
        cache_size: int = 16,
        limits: PredictConfig | None = None,
        label: str | None = None,
        video_cache: Any = None,
    ) -> None:
        from fian.data.text import Vocab

        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.cfg = cfg
        self.vocab = Vocab(bundle["vocab"])
        self.recipe: dict[str, Any] = dict(bundle["recipe"])
        self.checkpoint = Path(checkpoint)
        self.label = label or str(checkpoint)  # how messages name the model (the served model: no server path)
        self.limits: PredictConfig = limits or cfg.predict
        self.backbone_weights = Path(backbone_weights) if backbone_weights is not None else None
        self._backbone: Any = None
        self._cache: OrderedDict[str, EncodedVideo] = OrderedDict()
        self.cache_size = cache_size
        self.video_cache = video_cache  # fian.predict_cache.VideoCache: encoded videos across processes, or None
        self.min_rows = math.ceil(cfg.features.num_steps / min(cfg.model.window_sizes))

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        *,
        backbone_weights: str | Path | None = None,
        best: bool = True,
        limits: Mapping[str, Any] | None = None,
        label: str | None = None,
        video_cache: Any = None,
    ) -> Predictor:
        """Load a checkpoint written by the train stage; ``backbone_weights``: the C3D/I3D file of the
        recipe (not needed for random-weight recipes or for precomputed features); ``limits``:
        overrides of the checkpoint's params section ``predict``; ``label``: the model in messages;
        ``video_cache``: a :class:`fian.predict_cache.VideoCache` (persistent, shared by processes) or None."""
        from fian.train import build_model_from_checkpoint, load_checkpoint

        path = Path(path)
        ckpt = load_checkpoint(path)
        bundle = _bundle_of(ckpt, path)
        try:
            model, cfg = build_model_from_checkpoint(ckpt, vocab_size=len(bundle["vocab"]), best=best)
        except (ValueError, RuntimeError, KeyError) as e:
            raise PredictError(f"{path}: cannot rebuild the model: {e}") from None
        p = cls(model, cfg, bundle, device=device, checkpoint=path, backbone_weights=backbone_weights,
                limits=predict_limits(cfg.predict, limits), label=label, video_cache=video_cache)  # fmt: skip
        if p.recipe.get("random_weights"):
            log.warning(
                "%s: the features of this model come from a %s backbone with RANDOM weights (offline fallback): "
                "its predictions say nothing about real videos", path, p.recipe.get("backbone"),
            )  # fmt: skip
        return p

    # -- properties ---------------------------------------------------------------------------
    @property
    def random_weights(self) -> bool:
        return bool(self.recipe.get("random_weights"))

    @property
    def recomputable(self) -> bool:
        """Whether :meth:`encode_video` can recompute this model's features from a video file."""
        return bool(self.recipe.get("recomputable"))

    @property
    def feature_dim(self) -> int:
        return int(self.cfg.dataset.feature_dim)

    # -- videos -------------------------------------------------------------------------------
    def _get_backbone(self) -> Any:
        if self._backbone is None:
            from fian.extract.extractor import build_backbone
            from fian.io import sha256_file

            r = self.recipe
            weights = None
            if not r["random_weights"]:
                if self.backbone_weights is None:
                    raise PredictError(
                        f"{self.label}: its features come from {r['backbone']} weights {r['weights']} "
                        f"(sha256 {r.get('weights_sha256')}): pass that file (backbone_weights=... / --backbone-weights)"
                    )
                if not self.backbone_weights.is_file():
                    raise PredictError(f"{self.backbone_weights}: backbone weights file not found")
                want = r.get("weights_sha256")
                if want and sha256_file(self.backbone_weights) != want:
                    raise PredictError(
                        f"{self.backbone_weights}: sha256 differs from the weights the model was trained on "
                        f"({r['weights']}, sha256 {want})"
                    )
                weights = self.backbone_weights
            bb = build_backbone(
                r["backbone"], weights, layer=r.get("layer") or "fc7", c3d_mean_rgb=r.get("c3d_mean_rgb"),
                c3d_bgr=bool(r.get("c3d_bgr", True)), allow_random_weights=bool(r["random_weights"]),
                seed=int(r.get("seed", 0)),
            )  # fmt: skip
            if bb.feature_dim != self.feature_dim:
                raise PredictError(
                    f"{self.label}: the {r['backbone']} backbone gives {bb.feature_dim}-d features, the model "
                    f"takes {self.feature_dim}-d"
                )
            bb.net.to(self.device)
            self._backbone = bb
        return self._backbone

    def encode_video(self, path: str | Path, *, name: str | None = None) -> EncodedVideo:
        """decode -> backbone -> downsampling to ``num_steps``, as the extract and prepare stages do.

        Cached by the sha256 of the file's content.  ``name``: the video in messages (default: the path).
        """
        from fian.data.features import downsample
        from fian.extract.extractor import extract_frames
        from fian.extract.video import VideoDecodeError, VideoTooLong, decode_video

        path = Path(path)
        name = name or str(path)
        if not self.recomputable:
            raise PredictError(
                f"{self.label}: this model's features cannot be recomputed from a video ({self.recipe['reason']}); "
                f"it accepts precomputed features only (encode_features / --features FILE --video-id ID), not {name}"
            )
        if not path.is_file():
            raise PredictError(f"{name}: video file not found")
        self.check_file_size(path.stat().st_size, name)
        digest = sha256_bytes_of(path)
        if digest in self._cache:
            self._cache.move_to_end(digest)
            return self._cache[digest]
        t0 = time.perf_counter()
        hit = self.video_cache.get(digest, self.recipe, self.feature_dim) if self.video_cache is not None else None
        if hit is not None:  # decoded and encoded by an earlier process: the model only
            if self.limits.max_video_seconds and hit[1] > self.limits.max_video_seconds:  # the limits of THIS predictor
                raise PredictError(f"{name}: video too long: {hit[1]:g} seconds (cached encoding), over the limit "
                                   f"predict.max_video_seconds = {self.limits.max_video_seconds:g}")  # fmt: skip
            enc = self._encode_rows(hit[0], hit[1], name, digest, downsample)
            enc.timings.update(cache_s=time.perf_counter() - t0)
            log.info("%s: encoded video from the cache %s (no decoding, no backbone)", path, self.video_cache.folder)
            return self._remember(digest, enc)
        bb = self._get_backbone()
        r = self.recipe
        t0 = time.perf_counter()
        lim = self.limits
        try:
            decoded = decode_video(path, bb.spec, r["fps"], max_seconds=lim.max_video_seconds,
                                   max_frames=lim.max_video_frames)  # fmt: skip
        except VideoTooLong as e:
            key = "max_video_seconds" if e.what == "seconds" else "max_video_frames"
            raise PredictError(f"{name}: video too long: {e.value:g} {e.what} ({e.where}), over the limit "
                               f"predict.{key} = {e.limit:g}") from None  # fmt: skip
        except VideoDecodeError as e:
            raise PredictError(f"{name}: cannot decode the video: {e.reason.replace(str(path), name)}") from None
        t1 = time.perf_counter()
        feats = extract_frames(
            bb, decoded.frames, clip_len=int(r["clip_len"]), stride=int(r["stride_frames"]),
            batch_size=int(r.get("batch_size", 32)), device=self.device,
        )  # fmt: skip
        t2 = time.perf_counter()
        if not np.isfinite(feats).all():
            raise PredictError(f"{name}: the backbone gave non-finite features")
        enc = self._encode_rows(feats, decoded.duration, name, digest, downsample)
        enc.timings.update(decode_s=t1 - t0, backbone_s=t2 - t1, downsample_s=time.perf_counter() - t2)
        if self.video_cache is not None:
            self.video_cache.put(digest, self.recipe, feats, decoded.duration)
        return self._remember(digest, enc)

    def _remember(self, digest: str, enc: EncodedVideo) -> EncodedVideo:
        self._cache[digest] = enc
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return enc

    def encode_features(self, features: Any, duration: float, *, name: str = "features") -> EncodedVideo:
        """Precomputed features ``[n, D]`` of a video of ``duration`` seconds (``name`` for messages)."""
        from fian.data.features import downsample

        self.check_feature_shape(np.shape(features), name)
        x = np.asarray(features, dtype=np.float32)
        if x.shape[1] != self.feature_dim:
            raise PredictError(
                f"{name}: features are {x.shape[1]}-d, the model of {self.label} takes {self.feature_dim}-d "
                f"({self.recipe.get('backbone') or 'its'} features, dataset.feature_dim)"
            )
        if not np.isfinite(x).all():
            raise PredictError(f"{name}: non-finite features (NaN/inf)")
        if not (isinstance(duration, int | float) and math.isfinite(duration) and duration > 0):
            raise PredictError(f"{name}: duration must be a positive number of seconds, got {duration!r}")
        return self._encode_rows(x, float(duration), name, None, downsample)

    def load_features(
        self, file: str | Path, video_id: str, *, duration: float | None = None, layout: str | None = None
    ) -> EncodedVideo:
        """One video's features from a file in any layout the project imports (default: the
        checkpoint's ``dataset.feature_layout``); ``duration`` defaults to the file's per-video
        ``duration`` attr."""
        from fian.data.features import FeatureError, _Source

        file = Path(file)
        layout = layout or self.cfg.dataset.feature_layout
        name = f"{file} (video {video_id!r})"
        if not file.exists():
            raise PredictError(f"{file}: features file not found")
        try:
            src = _Source(file, layout)
        except (FeatureError, OSError, ValueError) as e:
            raise PredictError(f"{file}: cannot read as {layout} features: {e}") from None
        try:
            resolved = src.resolve(video_id)
            if resolved is None:
                raise PredictError(f"{file}: video {video_id!r} not found ({layout} layout)")
            key = resolved[1]
            try:
                self.check_feature_shape(src.shape(key), name)
                x = src.read(key, video_id)
            except FeatureError as e:
                raise PredictError(str(e)) from None
            if duration is None:
                d = src.video_attrs(key).get("duration")
                if d is None:
                    raise PredictError(f"{name}: the file gives no duration for this video: pass it (--duration SECONDS)")
                duration = float(d)
        finally:
            src.close()
        return self.encode_features(x, duration, name=name)

    # -- limits -------------------------------------------------------------------------------
    def check_top(self, top: Any) -> int:
        """``top`` as an int in ``[1, predict.max_top]``; the answer holds at most the model's candidates."""
        if isinstance(top, bool) or not isinstance(top, numbers.Integral) or top < 1:
            raise PredictError(f"top must be an integer >= 1, got {short(top)}")
        if top > self.limits.max_top:
            raise PredictError(f"top {top} is over the limit predict.max_top = {self.limits.max_top}")
        return int(top)

    def check_file_size(self, size: int, name: str) -> None:
        if size > self.limits.max_file_bytes:
            raise PredictError(f"{name}: {size} bytes, over the limit predict.max_file_bytes = {self.limits.max_file_bytes}")

    def check_feature_shape(self, shape: Sequence[int], name: str) -> None:
        """Before reading: ``[n, D]`` with ``1 <= n <= predict.max_feature_rows``."""
        if len(shape) != 2 or shape[0] < 1:
            raise PredictError(f"{name}: features must be [n >= 1, D], got shape {tuple(shape)}")
        if shape[0] > self.limits.max_feature_rows:
            raise PredictError(f"{name}: {shape[0]} feature rows, over the limit predict.max_feature_rows = "
                               f"{self.limits.max_feature_rows}")  # fmt: skip

    def _encode_rows(self, x: np.ndarray, duration: float, name: str, digest: str | None, downsample: Any) -> EncodedVideo:
        n = int(x.shape[0])
        T = self.cfg.features.num_steps
        if n < self.min_rows:  # accepted, as the prepare stage accepts it: its rows are repeated to T steps
            log.info("%s: %d feature row(s), fewer than the %d the smallest window spans: repeated to %d steps "
                     "(as the prepare stage does)", name, n, self.min_rows, T)  # fmt: skip
        video, mask = downsample(x, T, self.cfg.features.shorter)
        return EncodedVideo(torch.from_numpy(video), torch.from_numpy(mask), float(duration), n, name, digest)

    # -- queries ------------------------------------------------------------------------------
    def encode_query(self, query: str) -> list[int]:
        """Token ids; a query over ``predict.max_query_bytes`` / ``max_query_words`` or without any
        known word raises; words past ``text.max_query_len`` are dropped (as in training) with a warning."""
        from fian.data.text import tokenize

        if not isinstance(query, str):
            raise PredictError(f"query must be a string, got {type(query).__name__}")
        lim, keep = self.limits, self.cfg.text.max_query_len
        size = len(query.encode("utf-8", errors="surrogatepass"))
        if size > lim.max_query_bytes:
            raise PredictError(f"query {short(query)}: {size} bytes, over the limit predict.max_query_bytes = "
                               f"{lim.max_query_bytes}")  # fmt: skip
        tokens = tokenize(query, self.cfg.text.lowercase)
        if len(tokens) > lim.max_query_words:
            raise PredictError(f"query {short(query)}: {len(tokens)} words, over the limit predict.max_query_words = "
                               f"{lim.max_query_words}")  # fmt: skip
        if len(tokens) > keep:
            log.warning("query %s: %d words; the model reads the first %d (text.max_query_len, as in training): "
                        "dropped %s", short(query), len(tokens), keep, short(" ".join(tokens[keep:]), 40))  # fmt: skip
        ids = self.vocab.encode(tokens, keep)
        if not any(i >= 2 for i in ids):
            shown = short(", ".join(tokens[:8]) or "no words", 80)
            raise PredictError(
                f"query {short(query)}: none of its words ({shown}) is in the model's vocabulary of "
                f"{len(self.vocab) - 2} words"
            )
        return ids

    @torch.no_grad()
    def predict_many(self, queries: Sequence[str], video: EncodedVideo, top: int = 5) -> list[list[Moment]]:
        """Ranked moments for several queries on one encoded video (one batched forward)."""
        from fian.evaluate import _float_output
        from fian.inference import decode

        top = self.check_top(top)
        if not queries:
            return []
        ids = [self.encode_query(q) for q in queries]
        B, L = len(ids), max(len(i) for i in ids)
        words = torch.zeros(B, L, dtype=torch.long)
        for b, row in enumerate(ids):
            words[b, : len(row)] = torch.tensor(row)
        word_mask = torch.arange(L)[None, :] < torch.tensor([len(r) for r in ids])[:, None]
        dev = self.device
        v = video.features.to(dev)[None].expand(B, -1, -1)
        vm = video.mask.to(dev)[None].expand(B, -1)
        out = self.model(v, vm, words.to(dev), word_mask.to(dev))
        segs, scores = decode(
            _float_output(out), torch.full((B,), video.duration, device=dev), self.cfg.features.num_steps,
            self.cfg.eval.nms_threshold, top, self.cfg.loss.offset_unit,
        )  # fmt: skip
        segs, scores = segs.cpu().numpy(), scores.cpu().numpy()
        return [
            [Moment(float(s[0]), float(s[1]), float(p)) for s, p in zip(segs[b], scores[b], strict=True) if not np.isnan(s[0])]
            for b in range(B)
        ]

    def predict(self, query: str, video: EncodedVideo | str | Path, top: int = 5) -> list[Moment]:
        """Ranked moments (seconds, best first, after NMS) of ``query`` in ``video`` (encoded, or a file)."""
        if not isinstance(video, EncodedVideo):
            video = self.encode_video(video)
        return self.predict_many([query], video, top)[0]


def thumbnails(path: str | Path, duration: float, n: int = 8, height: int = 72) -> list[tuple[float, np.ndarray]]:
    """``n`` frames evenly spread over the video (at the centres of ``n`` equal spans), for plots."""
    from fian.extract.video import FrameSpec, VideoDecodeError, decode_video

    try:
        v = decode_video(path, FrameSpec(crop=height, short_side=height), fps=n / duration)
    except VideoDecodeError as e:
        raise PredictError(f"{path}: cannot decode the video: {e.reason}") from None
    span = duration / n
    idx = [min(len(v) - 1, int(round((i + 0.5) * span * v.fps))) for i in range(n)]
    return [((i + 0.5) * span, v.frames[j]) for i, j in enumerate(idx)]
