"""Which keys of two configs differ, and whether they matter for using a trained checkpoint.

A checkpoint is rebuilt from the config it was trained with; the ``--params`` of a later stage
(evaluate on another dataset, say) describe the data it is given.  Keys that shape the model or
its inputs must agree; the others (the dataset's name, splits and sources, training settings,
evaluation settings, tracking) may differ: e.g. ``dataset.name`` alone does not change the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# dotted prefixes of the keys that change the model or the inputs it sees (a key matches a prefix
# when it equals it or starts with it followed by a dot)
MATTERS = (
    "model",  # the architecture (the model is rebuilt from the checkpoint's own model section)
    "features",  # num_steps and the downsampling of the feature sequences
    "dataset.feature_dim", "dataset.feature_layout", "dataset.backbone",  # which features
    "text.word_dim", "text.max_query_len", "text.lowercase", "text.oov",  # how a query becomes ids
    "loss.offset_unit",  # how the output is decoded into seconds
    "extract.backbone", "extract.layer", "extract.fps", "extract.clip_len", "extract.stride_frames",
    "extract.c3d_mean_rgb", "extract.c3d_bgr",  # how features are computed from video
)  # fmt: skip
WHY = {
    "model": "the architecture",
    "features": "the downsampling of the features",
    "dataset": "which features the model reads",
    "text": "how a query becomes token ids",
    "loss": "how the output is decoded into seconds",
    "extract": "how features are computed from video",
}


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


def matters(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in MATTERS)


@dataclass(frozen=True)
class ConfigDiff:
    """``(key, trained value, given value)`` of the keys that matter, and of those that do not."""

    matter: list[tuple[str, Any, Any]]
    harmless: list[tuple[str, Any, Any]]

    @staticmethod
    def _fmt(items: list[tuple[str, Any, Any]]) -> str:
        return "; ".join(f"{k}: {a!r} (checkpoint) vs {b!r} (--params)" for k, a, b in items)

    def describe_matter(self) -> str:
        """One line per reason: the keys that change the model or its inputs."""
        return "; ".join(
            f"{k}: {a!r} (checkpoint) vs {b!r} (--params) [changes {WHY.get(k.split('.')[0], 'the model')}]"
            for k, a, b in self.matter
        )

    def describe_harmless(self) -> str:
        return self._fmt(self.harmless)


def compare(trained: dict[str, Any], given: dict[str, Any]) -> ConfigDiff:
    """Compare ``Config.to_dict()`` of the checkpoint (``trained``) with that of ``--params`` (``given``)."""
    a, b = flatten(trained), flatten(given)
    diff = [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return ConfigDiff([d for d in diff if matters(d[0])], [d for d in diff if not matters(d[0])])
