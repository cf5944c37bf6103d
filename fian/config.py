"""Typed, frozen configuration loaded from the layered YAML files in ``params/``.

Layers (later wins, dictionaries merge key by key):

    params/base.yaml                 shared defaults
    params/datasets/<dataset>.yaml   per-dataset values of Section 4.3
    params/variants/<variant>.yaml   the ablations of Tables 4-6
    params.yaml, --set KEY=VALUE     overrides (``load_config(extra=...)``: read_overrides, parse_set)

Only factory functions (``build_*``) and stage commands read a :class:`Config`; the modules of
``fian/`` take explicit constructor arguments.  Every key is validated: an unknown key, a wrong
type or an out-of-range value raises :class:`ConfigError` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A params file is malformed: the message names the file and the key."""


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One file to download: where from, its pinned checksum and its name on disk."""

    name: str
    url: str
    sha256: str | None = None  # None: not pinned upstream; the download stage warns and records it
    # the file's git blob id (SHA-1 of "blob <size>\0" + bytes) in its repository's tree at a pinned
    # commit: verifies a file whose sha256 is not known (too large for the stored snapshot)
    git_blob_sha1: str | None = None
    # the url is a share page (a browser, a login): fetched by hand into the download folder; the
    # workflow says so when it is parsed, before anything runs (fian_pipeline.registry.manual_fetches)
    by_hand: bool = False


@dataclass(frozen=True)
class PolicyConfig:
    """What to do with each kind of invalid annotation (Section 4.1 counts depend on it)."""

    start_ge_end: Literal["drop", "fail"] = "drop"
    past_end: Literal["clip", "drop", "fail"] = "clip"
    missing_duration: Literal["drop", "fail"] = "fail"
    empty_sentence: Literal["drop", "fail"] = "drop"
    missing_features: Literal["drop", "fail"] = "fail"
    all_oov: Literal["drop", "fail"] = "drop"
    # a moment wholly outside [0, duration] (clip leaves nothing): drop it in the annotations stage
    # (counted past_end_unclippable), or keep it there unclipped (the release's pair count stays)
    # and let the prepare stage drop it, loudly counted as dropped_outside_video (Charades-CD, ours)
    outside_video: Literal["drop", "keep"] = "drop"


@dataclass(frozen=True)
class DatasetConfig:
    """Where a dataset comes from and how its files are laid out."""

    name: str = "synthetic"
    # annotation parser: activitynet (JSON duration/timestamps/sentences), tacos (JSON frames+fps),
    # charades (txt 'vid s e##sentence' + Charades_v1 csv), charades_cd (JSON video_duration/timestamps/sentences)
    format: Literal["activitynet", "tacos", "charades", "charades_cd"] = "activitynet"
    # split name -> annotation file names (relative to the raw annotation folder)
    splits: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # the splits evaluated and reported (evaluate / baseline jobs, tables); empty: the workflow
    # config's eval_split (Charades-CD / ActivityNet-CD: test_iid and test_ood)
    eval_splits: tuple[str, ...] = ()
    # use the feature store of this dataset (same videos, e.g. charades for charades_cd): no
    # download, import or store of its own; None: the dataset's own store
    features_from: str | None = None
    annotation_sources: tuple[Source, ...] = ()
    # feature file layout: activitynet_c3d (<vid>/c3d_features), tacos_c3d (<vid> -> array),
    # i3d_npy (one <vid>.npy per video), i3d_hdf5 (<vid> -> array), store (our own HDF5 store)
    feature_layout: Literal["activitynet_c3d", "tacos_c3d", "i3d_npy", "i3d_hdf5", "store"] = "store"
    feature_sources: tuple[Source, ...] = ()
    feature_dim: int = 500
    backbone: str = "c3d"
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    # synthetic generator (only for name == synthetic / offline runs)
    synthetic: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TextConfig:
    """Tokenization and word vectors (Section 3.2: GloVe)."""

    word_dim: int = 300
    max_query_len: int = 30
    lowercase: bool = True
    glove: Source | None = None
    # 'zero' or 'random' vector for words GloVe does not have ('<unk>' keeps its own row)
    oov: Literal["zero", "random", "unk"] = "unk"
    # vocabulary: train words only, or also the val/test words GloVe covers (no label used; ours, issue 11)
    vocab_from: Literal["train", "all_splits"] = "all_splits"
    # offline fallback: train GloVe vectors on the dataset's own sentences.  Never silent.
    fallback_train_glove: bool = False
    # a word-vector file of this dataset (GloVe text layout: word v1 ... v_word_dim per line), path from
    # the repository root; None: the downloaded glove.840B.300d.txt (stage download_glove)
    vectors_file: str | None = None
    glove_epochs: int = 25
    glove_window: int = 5
    glove_x_max: float = 10.0  # fallback GloVe: f(X) = min(1, (X / x_max)^0.75)
    glove_lr: float = 0.05  # fallback GloVe: AdaGrad learning rate
    glove_batch_size: int = 2048  # fallback GloVe: co-occurrence entries per update


@dataclass(frozen=True)
class FeatureConfig:
    """Downsampling of feature sequences (Section 4.3)."""

    num_steps: int = 200
    # longer videos: mean-pool equal segments; shorter: repeat (nearest index) so that every step
    # covers duration / num_steps seconds
    shorter: Literal["repeat", "pad"] = "repeat"


@dataclass(frozen=True)
class ModelConfig:
    """The FIAN network of Section 3 and the ablations of Section 5."""

    hidden: int = 512
    heads: int = 8
    self_attn_heads: int = 8
    ffn_dim: int = 1024
    dropout: float = 0.1
    attention: Literal["cga", "cma", "soft"] = "cga"
    branches: tuple[Literal["qv", "vq"], ...] = ("qv", "vq")
    iterate: bool = True
    fusion: Literal["gate", "concat", "matrix", "none"] = "gate"
    head: Literal["content", "tgn", "cmin"] = "content"
    window_sizes: tuple[int, ...] = (8, 16, 32, 64)
    # tgn / cmin heads (Table 5): anchor widths in steps per dataset name; others use window_sizes
    anchor_widths: dict[str, tuple[int, ...]] = field(default_factory=dict)
    stride_ratio: float = 0.125
    stride_steps: int | None = None
    freeze_embeddings: bool = True
    # what the model sees of the video: features = the video's features; constant = zeros in place of
    # every video's features (the blind baseline of Table 7: only the query and the position prior remain)
    video_input: Literal["features", "constant"] = "features"


@dataclass(frozen=True)
class LossConfig:
    """Eq. 15-18."""

    tau: float = 0.55
    alpha: float = 0.005
    offset_unit: Literal["steps", "window"] = "steps"
    tgn_pos_iou: float = 0.5  # TGN head: anchor positive when IoU > this (JaywongWang/TGN)
    tgn_neg_iou: float = 0.5  # TGN head: anchor negative when IoU <= this; in between ignored
    # TGN head: per-scale weights of the two terms: pos_weight = ((1 - p_k) / p_k, 1) as
    # JaywongWang/TGN trains (data_provider.py:73-75, model.py:347-348); frequency = (1 - p_k, p_k)
    tgn_weights: Literal["pos_weight", "frequency"] = "pos_weight"
    cmin_min_iou_ratio: float = 0.3  # CMIN head: labels below this x the best IoU are 0 (CMIN)


@dataclass(frozen=True)
class TrainConfig:
    """Section 4.3 optimisation, plus what the paper leaves open."""

    lr: float = 4e-4
    batch_size: int = 64
    epochs: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 5.0
    seed: int = 0
    num_workers: int = 0
    amp: Literal["off", "bf16"] = "bf16"
    compile: bool = False
    fused_optimizer: bool = True
    sync_every: int = 50


@dataclass(frozen=True)
class EvalConfig:
    """Section 4.2: R@n, IoU=m and mIoU."""

    top_n: tuple[int, ...] = (1, 5)
    iou_thresholds: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7)
    nms_threshold: float = 0.5
    batch_size: int = 256
    max_predictions: int = 10
    # protocol (fian/metrics.py): gt = hit is IoU > m (S4.2 wording), ge = IoU >= m (TALL's and
    # CMIN's code); fixed = NMS at nms_threshold for every m, per_level = NMS at m - 0.05 (TALL's
    # evaluator, jiyanggao/TALL main.py)
    iou_rule: Literal["gt", "ge"] = "gt"
    nms: Literal["fixed", "per_level"] = "per_level"
    # a named preset of (iou_rule, nms[, nms_threshold]): EVAL_PROTOCOLS; custom = the keys as set
    protocol: Literal["custom", "tall", "2dtan", "cmin"] = "custom"
    # the video-shuffle check (stage shuffle, Table 7): seed of the derangement of the split's videos
    shuffle_seed: int = 0


# eval.protocol presets: the keys each stands for, with the released evaluator it reproduces
EVAL_PROTOCOLS: dict[str, dict[str, Any]] = {
    # jiyanggao/TALL main.py compute_IoU_recall_top_n_forreg: nms_temporal(..., iou_thresh - 0.05)
    # (keeps IoU <= overlap), then a hit is iou >= iou_thresh
    "tall": {"iou_rule": "ge", "nms": "per_level"},
    # microsoft/2D-TAN lib/core/eval.py: one nms(thresh=TEST.NMS_THRESH) list (keeps ovr <= thresh),
    # a hit is overlap > t; experiments/*/*.yaml NMS_THRESH: 0.5
    "2dtan": {"iou_rule": "gt", "nms": "fixed", "nms_threshold": 0.5},
    # ikuinen/CMIN_moment_retrieval runners/runner_final.py eval: the single best box per query,
    # a hit is IoUs >= m (R@1 and mIoU only; criteria.py's compute_IoU_recall is never called):
    # no NMS touches the top-1; R@n > 1 under this preset uses one list at eval.nms_threshold (ours)
    "cmin": {"iou_rule": "ge", "nms": "fixed"},
}


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow observes the runs."""

    tracking_uri: str = "sqlite:///mlflow.db"
    enabled: bool = True


@dataclass(frozen=True)
class ExtractConfig:
    """Video feature extraction from raw videos (issue 4; S4.3 names C3D and I3D features)."""

    backbone: Literal["c3d", "i3d"] = "c3d"
    fps: float | None = None  # decode at this frame rate (resampled by timestamps); None = source fps
    clip_len: int = 16  # frames per clip fed to the backbone
    stride_frames: int = 8  # frames between the starts of consecutive clips (= frames per feature)
    layer: Literal["fc6", "fc7"] = "fc7"  # C3D layer whose (post-ReLU) activations are the feature
    c3d_mean_rgb: tuple[float, ...] = (101.41, 97.66, 90.25)  # Sports-1M per-channel mean, R,G,B
    c3d_bgr: bool = True  # feed C3D channels in BGR order (the Caffe model's order)
    batch_size: int = 32  # clips per forward pass
    num_workers: int = 2  # decoding processes (0 = decode in the main process)
    allow_random_weights: bool = False  # OFFLINE FALLBACK for synthetic data only: never silent
    amp: Literal["off", "bf16"] = "bf16"  # autocast dtype on CUDA; the CPU always runs fp32

    def __post_init__(self) -> None:
        if self.fps is not None and self.fps <= 0:
            raise ConfigError(f"extract.fps: must be > 0 or null, got {self.fps}")
        for key in ("clip_len", "stride_frames", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"extract.{key}: must be >= 1, got {getattr(self, key)}")
        if self.num_workers < 0:
            raise ConfigError(f"extract.num_workers: must be >= 0, got {self.num_workers}")
        if len(self.c3d_mean_rgb) != 3:
            raise ConfigError(f"extract.c3d_mean_rgb: need 3 values (R, G, B), got {self.c3d_mean_rgb}")


@dataclass(frozen=True)
class PredictConfig:
    """What one prediction may cost, and which server files the served model may read (issue 18).

    ``fian predict`` and the served MLflow model (:mod:`fian.serve`) refuse a request over any
    limit before decoding anything, with an error naming the key; docs/ARCHITECTURE.md "The
    served model".  The values in effect are the training run's (in its checkpoint), overridden
    at load time (``--limit KEY=VALUE``; the served model's ``model_config`` key ``predict``).
    """

    max_top: int = 100  # most windows one query may ask for ('top'); never more than the model's candidates
    max_rows: int = 64  # most rows (queries) in one request to the served model
    max_query_words: int = 200  # a longer query is refused (words past text.max_query_len are dropped, said)
    max_query_bytes: int = 4096  # UTF-8 bytes of one query
    max_file_bytes: int = 256 * 2**20  # size of one video file (or .npy features), on disk or in a request
    max_video_seconds: float = 1800.0  # a longer video (header, or frames met while decoding) is refused
    max_video_frames: int = 30000  # frames decoded at the recipe's rate (memory: crop^2 x 3 bytes each)
    max_feature_rows: int = 100000  # rows of one video's precomputed features
    path_root: str | None = None  # served model: folder whose files 'video'/'features' may name; null = none

    def __post_init__(self) -> None:
        for key in ("max_top", "max_rows", "max_query_words", "max_query_bytes", "max_file_bytes",
                    "max_video_frames", "max_feature_rows"):  # fmt: skip
            if getattr(self, key) < 1:
                raise ConfigError(f"predict.{key}: must be >= 1, got {getattr(self, key)}")
        if not self.max_video_seconds > 0:  # also NaN
            raise ConfigError(f"predict.max_video_seconds: must be > 0, got {self.max_video_seconds}")
        if self.path_root is not None and not self.path_root.strip():
            raise ConfigError("predict.path_root: an empty string; use null for no server paths")


@dataclass(frozen=True)
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    text: TextConfig = field(default_factory=TextConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    variant: str = "fian"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Dotted keys, for MLflow params."""
        out: dict[str, Any] = {}

        def walk(prefix: str, obj: Any) -> None:
            if isinstance(obj, dict):
                for k, v in obj.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                out[prefix] = obj

        walk("", self.to_dict())
        return out


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


# upper bounds of the keys that size an allocation (ours): far above any setting of the paper, far
# below what would exhaust memory before a clear message could say why
MAX_QUERY_LEN = 512
MAX_NUM_STEPS = 2048


def _check_range(cfg: Config) -> None:
    m, tr, lo, fe, te = cfg.model, cfg.train, cfg.loss, cfg.features, cfg.text
    problems: list[tuple[str, str]] = []
    if m.hidden % m.heads:
        problems.append(("model.heads", f"hidden={m.hidden} is not divisible by heads={m.heads}"))
    if m.hidden % m.self_attn_heads:
        problems.append(("model.self_attn_heads", f"hidden={m.hidden} not divisible by {m.self_attn_heads}"))
    if m.hidden % 2:
        problems.append(("model.hidden", "must be even (two GRU directions)"))
    if not m.window_sizes or any(k < 1 for k in m.window_sizes):
        problems.append(("model.window_sizes", f"need positive sizes, got {m.window_sizes}"))
    elif max(m.window_sizes) > fe.num_steps:
        problems.append(("model.window_sizes", f"{max(m.window_sizes)} > features.num_steps={fe.num_steps}"))
    if not 0 < m.stride_ratio <= 1:
        problems.append(("model.stride_ratio", f"must be in (0, 1], got {m.stride_ratio}"))
    if m.stride_steps is not None and m.stride_steps < 1:
        problems.append(("model.stride_steps", "must be >= 1"))
    if not m.branches or len(set(m.branches)) != len(m.branches):
        problems.append(("model.branches", f"one or both of qv, vq, got {m.branches}"))
    if m.fusion in ("concat", "matrix") and len(m.branches) != 2:
        problems.append(("model.fusion", f"{m.fusion} needs both branches"))
    if m.fusion == "gate" and not m.iterate:
        problems.append(("model.fusion", "gate needs iterate: true (it uses Q(1)/Q(2))"))
    if not 0 < m.dropout < 1 and m.dropout != 0:
        problems.append(("model.dropout", "must be in [0, 1)"))
    if not 0 < lo.tau < 1:
        problems.append(("loss.tau", f"must be in (0, 1), got {lo.tau}"))
    if lo.alpha < 0:
        problems.append(("loss.alpha", "must be >= 0"))
    for key, bad, rule in (("lr", tr.lr <= 0, "> 0"), ("batch_size", tr.batch_size < 1, ">= 1"),
                           ("epochs", tr.epochs < 0, ">= 0")):
        if bad:
            problems.append((f"train.{key}", f"must be {rule}"))
    for ds, widths in m.anchor_widths.items():  # Table 5 heads; only this dataset's entry must fit T
        top = fe.num_steps if ds == cfg.dataset.name else float("inf")
        if not widths or any(not 1 <= w <= top for w in widths):
            problems.append((f"model.anchor_widths.{ds}", f"need widths in [1, num_steps={fe.num_steps}], got {widths}"))
    if not 0 < lo.tgn_neg_iou <= lo.tgn_pos_iou < 1:
        problems.append(("loss.tgn_neg_iou", f"need 0 < tgn_neg_iou <= tgn_pos_iou < 1, got {lo.tgn_neg_iou}, {lo.tgn_pos_iou}"))
    if not 0 <= lo.cmin_min_iou_ratio < 1:
        problems.append(("loss.cmin_min_iou_ratio", f"must be in [0, 1), got {lo.cmin_min_iou_ratio}"))
    if m.head == "cmin" and lo.offset_unit != "steps":
        problems.append(("loss.offset_unit", "the cmin head regresses offsets in steps (as CMIN, in frames)"))
    if tr.sync_every < 1:
        problems.append(("train.sync_every", "must be >= 1"))
    if not 1 <= fe.num_steps <= MAX_NUM_STEPS:
        problems.append(("features.num_steps", f"must be in [1, {MAX_NUM_STEPS}] (S4.3 uses 64 and 200; a prepared "
                                               "split holds [videos, num_steps, feature_dim] floats)"))
    for key, bad, rule in (("glove_epochs", te.glove_epochs < 0, ">= 0"), ("glove_window", te.glove_window < 1, ">= 1"),
                           ("glove_x_max", te.glove_x_max <= 0, "> 0"), ("glove_lr", te.glove_lr <= 0, "> 0"),
                           ("glove_batch_size", te.glove_batch_size < 1, ">= 1")):
        if bad:
            problems.append((f"text.{key}", f"must be {rule}"))
    if not 1 <= te.max_query_len <= MAX_QUERY_LEN:
        problems.append(("text.max_query_len", f"must be in [1, {MAX_QUERY_LEN}] (the longest query of the releases "
                                               "has 82 words; the token table is [queries, max_query_len])"))
    if any(not 0 < t < 1 for t in cfg.eval.iou_thresholds):
        problems.append(("eval.iou_thresholds", "each in (0, 1)"))
    elif cfg.eval.nms == "per_level" and any(t < 0.05 for t in cfg.eval.iou_thresholds):
        problems.append(("eval.nms", "per_level suppresses at m - 0.05: every eval.iou_thresholds m must be >= 0.05"))
    preset = EVAL_PROTOCOLS.get(cfg.eval.protocol, {})
    differ = {k: v for k, v in preset.items() if getattr(cfg.eval, k) != v}
    if differ:
        want = ", ".join(f"{k}: {v}" for k, v in preset.items())
        problems.append(("eval.protocol", f"{cfg.eval.protocol} means {want}; a later layer changed "
                                          f"{sorted(differ)}: set eval.protocol: custom to combine them"))
    if cfg.eval.shuffle_seed < 0:
        problems.append(("eval.shuffle_seed", "must be >= 0 (a numpy seed)"))
    if problems:
        raise RangeError(problems, cfg)


# the other keys a range rule depends on: named (with their values and files) in its message
RELATED = {"model.heads": ("model.hidden",), "model.self_attn_heads": ("model.hidden",),
           "model.window_sizes": ("features.num_steps",), "model.fusion": ("model.branches", "model.iterate"),
           "eval.nms": ("eval.iou_thresholds",), "loss.tgn_neg_iou": ("loss.tgn_pos_iou",),
           "eval.protocol": ("eval.iou_rule", "eval.nms", "eval.nms_threshold")}


class RangeError(ConfigError):
    """Out-of-range values: each problem names its key, its value and the file that set it."""

    def __init__(self, problems: list[tuple[str, str]], cfg: Config,
                 origin: typing.Callable[[str], str | None] = lambda key: None) -> None:
        self.problems, self.cfg = problems, cfg

        def show(key: str) -> str:
            value: Any = cfg
            try:
                for part in key.split("."):
                    value = getattr(value, part)
            except AttributeError:  # a rule over a whole section
                return key
            value = list(value) if isinstance(value, tuple) else value
            where = origin(key)
            return f"{key} = {value!r}" + (f" (in {where})" if where else "")

        super().__init__("; ".join(", ".join(show(k) for k in (key, *RELATED.get(key, ()))) + f": {rule}"
                                   for key, rule in problems))


def _origin(key: str, layers: list[tuple[str, dict[str, Any]]]) -> str:
    """The last layer that sets the dotted ``key`` ("default" when none does)."""
    for name, data in reversed(layers):
        node: Any = data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            return name
    return "default"


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; build nested dataclasses."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(tp, value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):  # YAML's .nan / .inf pass every range check written as 'not x < 0'
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _duplicate_keys(node: Any, loader: yaml.SafeLoader, prefix: str = "") -> list[tuple[str, int, int]]:
    """``(dotted key, first line, repeated line)`` for each key given twice in one mapping of ``node``."""
    out: list[tuple[str, int, int]] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *anchor' may repeat: YAML's own rule
                continue
            key = loader.construct_object(key_node, deep=True) if isinstance(key_node, yaml.ScalarNode) else None
            dotted = f"{prefix}.{key}" if prefix else str(key)
            line = key_node.start_mark.line + 1
            if key is not None:
                try:
                    first = seen.setdefault(key, line)
                except TypeError:  # an unhashable key: the constructor's own error names it
                    first = line
                if first != line:
                    out.append((dotted, first, line))
            out += _duplicate_keys(value_node, loader, dotted)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out += _duplicate_keys(item, loader, f"{prefix}[{i}]")
    return out


def load_yaml(path: str | Path, error: type[Exception] = ValueError, what: str = "file") -> Any:
    """A YAML file read as ``yaml.safe_load`` does (data, never code), but strict: a byte that is not
    UTF-8, or a key given twice in one mapping (YAML keeps the last one silently), raises ``error``
    naming the file, the line and the (dotted) key.  Every params / workflow config reader uses it."""
    from fian.io import read_utf8

    path = Path(path)
    try:
        text = read_utf8(path, error)
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        dups = _duplicate_keys(node, loader)
        if dups:
            where = "; ".join(f"{k!r} at lines {a} and {b}" for k, a, b in dups[:5])
            raise error(f"{path}: key(s) given twice in one mapping: {where}{' ...' * (len(dups) > 5)}; YAML would "
                        "silently keep only the last: remove one")
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML: {e}") from None
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    data = load_yaml(path, ConfigError, "params file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def unset_pruned(data: dict[str, Any]) -> dict[str, Any]:
    """An overrides layer without its unset keys: a null value sets nothing, nor does a section
    of null values (params.yaml lists every key at null).  An empty mapping ``{}`` is a value."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict) and v:
            v = unset_pruned(v)
            if not v:
                continue
        if v is not None:
            out[k] = v
    return out


def read_overrides(path: str | Path) -> dict[str, Any]:
    """The overrides layer (params.yaml): a YAML file whose null keys are not set (:func:`unset_pruned`)."""
    return unset_pruned(read_yaml(path))


def parse_set(pairs: Sequence[str], where: str = "--set") -> dict[str, Any]:
    """``["train.lr=1e-4", "model.window_sizes=[8, 16]"]`` -> a nested mapping (a layer).

    A value is YAML (``true``, ``[8, 16]``, ``null``), and ``1e-4``-style numbers are numbers (YAML 1.1
    reads them as strings).  The layer is validated like a file when loaded (:func:`load_config`)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"{where} {pair!r}: expected KEY=VALUE with a dotted key, e.g. train.lr=1e-4")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{where} {pair!r}: the value is not valid YAML: {e}") from None
        if isinstance(value, str) and not text.strip().startswith(("'", '"')):
            try:
                value = float(value) if any(c in value for c in ".eE") else int(value)
            except ValueError:
                pass
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where} {pair!r}: {part} was given a value above")
        node[leaf] = value
    return out


def expand_protocol(data: dict[str, Any], where: str = "") -> dict[str, Any]:
    """A layer with its ``eval.protocol`` preset written out: the preset's keys
    (:data:`EVAL_PROTOCOLS`) set in that same layer, so that they win over earlier layers.  The
    layer itself giving one of them another value is a :class:`ConfigError` (a later layer doing
    so is refused by the range check).  ``custom``, or no protocol, leaves the layer as it is."""
    ev = data.get("eval")
    name = ev.get("protocol") if isinstance(ev, dict) else None
    if not isinstance(name, str) or name not in EVAL_PROTOCOLS:
        return data
    clash = {k: ev[k] for k, v in EVAL_PROTOCOLS[name].items() if k in ev and ev[k] != v}
    if clash:
        want = ", ".join(f"{k}: {v}" for k, v in EVAL_PROTOCOLS[name].items())
        raise ConfigError(f"{where or 'params'}: eval.protocol {name} means {want}, but the same layer sets "
                          f"{', '.join(f'eval.{k}: {v}' for k, v in clash.items())}: use eval.protocol: custom")
    return {**data, "eval": {**ev, **EVAL_PROTOCOLS[name]}}


def config_from_dict(data: dict[str, Any], where: str = "", expand: bool = True) -> Config:
    """One mapping (all layers merged) -> a validated Config; ``expand``: its eval.protocol preset
    written out first (:func:`expand_protocol`; load_config has done so layer by layer)."""
    if expand:
        data = expand_protocol(data, where)
    cfg = _build(Config, data, where)
    _check_range(cfg)
    return cfg


def load_config(
    *files: str | Path,
    overrides: dict[str, Any] | None = None,
    extra: Sequence[tuple[str, dict[str, Any]]] = (),
) -> Config:
    """Merge the YAML ``files`` in order (base, dataset, variant) and validate.

    ``extra``: further layers merged after the files, as ``(name, data)`` (the overrides file
    params.yaml read by :func:`read_overrides`, the ``--set`` pairs of :func:`parse_set`); errors
    name them like files.  Each layer is checked on its own for unknown keys and types, so that an
    error names the layer that introduced it; the merged result is then range-checked.
    """
    merged: dict[str, Any] = {}
    layers: list[tuple[str, dict[str, Any]]] = []  # (file, its data): which file set a key
    named = [(str(f), read_yaml(f)) for f in files] + [(n, d) for n, d in extra if d]
    if overrides:
        named.append(("overrides", overrides))
    for f, data in named:
        layers.append((f, data))
        try:
            _build(Config, data, "")
        except ConfigError as e:
            raise ConfigError(f"{f}: {e}") from None
        data = expand_protocol(data, f)
        layers[-1] = (f, data)
        merged = _merge(merged, data)
    try:
        return config_from_dict(merged, expand=False)
    except RangeError as e:
        raise RangeError(e.problems, e.cfg, lambda key: _origin(key, layers)) from None
    except ConfigError as e:
        names = ", ".join(str(f) for f in files)
        raise ConfigError(f"{names}: {e}") from None


def params_files(params_dir: str | Path, dataset: str, variant: str) -> list[Path]:
    """The three layers for (dataset, variant)."""
    d = Path(params_dir)
    return [d / "base.yaml", d / "datasets" / f"{dataset}.yaml", d / "variants" / f"{variant}.yaml"]


def load_params(params_dir: str | Path, dataset: str, variant: str) -> Config:
    files = params_files(params_dir, dataset, variant)
    cfg = load_config(*files)
    return dataclasses.replace(cfg, variant=variant)


def stride_for(window: int, ratio: float, steps: int | None) -> int:
    """theta_s for a window of size theta_k (Section 3.4, Table 6)."""
    if steps is not None:
        return steps
    return max(1, int(round(window * ratio)))
