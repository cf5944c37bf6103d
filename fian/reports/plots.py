"""Figures: a Figure-6-like timeline (ground truth vs top-1 prediction), training curves, and the
attention of each refinement step for a query (fian.attention_maps).

matplotlib with the Agg backend (no display); imported lazily so that ``import fian`` stays light.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fian.io import atomic_path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pick_queries(frame: pd.DataFrame, n: int = 4) -> pd.DataFrame:
    """A few queries to show, deterministically: evenly spaced over the split (by row order)."""
    if frame.empty:
        raise ValueError("no predictions to plot")
    idx = np.unique(np.linspace(0, len(frame) - 1, num=min(n, len(frame))).round().astype(int))
    return frame.iloc[idx]


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def timeline(frame: pd.DataFrame, out: str | Path, *, n: int = 4, title: str = "") -> Path:
    """Figure 6 of the paper: for ``n`` queries, the ground-truth moment and the top-1 prediction
    as bars over the video's duration, the sentence as each panel's title.

    ``frame``: predictions as read by ``fian.evaluate.read_predictions`` (sentence, gt_start,
    gt_end, duration, segments ranked best first, in seconds).
    """
    plt = _pyplot()
    rows = pick_queries(frame, n)
    fig, axes = plt.subplots(len(rows), 1, figsize=(8, 1.7 * len(rows) + 0.4), squeeze=False)
    for ax, (_, r) in zip(axes[:, 0], rows.iterrows(), strict=True):
        gt = (float(r["gt_start"]), float(r["gt_end"]))
        segs = list(r["segments"])
        ax.broken_barh([(gt[0], gt[1] - gt[0])], (1.1, 0.8), color="tab:green")
        ax.text(gt[1], 1.5, f" {gt[0]:.1f}-{gt[1]:.1f}s", va="center", fontsize=8)
        if segs:
            p = (float(segs[0][0]), float(segs[0][1]))
            ax.broken_barh([(p[0], p[1] - p[0])], (0.1, 0.8), color="tab:blue")
            ax.text(p[1], 0.5, f" {p[0]:.1f}-{p[1]:.1f}s  IoU {_iou(gt, p):.2f}", va="center", fontsize=8)
        ax.set_xlim(0, float(r["duration"]))
        ax.set_ylim(0, 2)
        ax.set_yticks([0.5, 1.5], ["FIAN top-1", "GT"])
        ax.set_title("\n".join(textwrap.wrap(str(r["sentence"]), 90)), fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("time (s)")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out)


def training_curves(history: pd.DataFrame, out: str | Path, *, title: str = "") -> Path:
    """Loss terms (left) and validation metrics (right) per epoch, from ``history.csv``."""
    if "epoch" not in history.columns or history.empty:
        raise ValueError("history has no 'epoch' column or no rows")
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    for col in ("loss", "align", "boundary"):
        if col in history.columns:
            left.plot(history["epoch"], history[col], marker="o", ms=3, label=col)
    left.set_xlabel("epoch")
    left.set_ylabel("training loss")
    left.legend(fontsize=8)
    val_cols = [c for c in history.columns if c.startswith("val/")]
    for col in val_cols:
        right.plot(history["epoch"], 100 * history[col], marker="o", ms=3, label=col.removeprefix("val/"))
    right.set_xlabel("epoch")
    right.set_ylabel("validation (%)")
    if val_cols:
        right.legend(fontsize=7, ncol=3, loc="best")
    else:
        right.text(0.5, 0.5, "no validation split", ha="center", va="center", transform=right.transAxes)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out)


def _save(fig: Any, out: str | Path) -> Path:
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=120, format=out.suffix.lstrip(".") or "png")
    _pyplot().close(fig)
    return out


@dataclass(frozen=True)
class AttentionPanel:
    """One refinement step's attention for one query, time along x: ``matrix [n_words, n_steps]``
    (query -> video: each row, a word, sums to 1 over the steps; video -> query: each column, a
    step, sums to 1 over the words), ``words``: the row labels, ``title``: which step it is."""

    title: str
    matrix: np.ndarray
    words: Sequence[str]
    rows_sum_to_one: bool


def attention_panels(maps: Sequence[Any], b: int, words: Sequence[str], n_steps: int) -> list[AttentionPanel]:
    """:class:`AttentionPanel` of sample ``b`` from :func:`fian.attention_maps.capture_attention`'s
    maps (averaged over heads, real words and steps only), each drawn with time along x."""
    panels = []
    for m in maps:
        real = m.real(b, len(words), n_steps).numpy()
        matrix = real if m.query_rows else real.T  # video -> query: [steps, words] -> [words, steps]
        title = f"branch {m.branch}, step {m.step}: {m.direction}   ({m.equation})"
        panels.append(AttentionPanel(title, matrix, list(words), m.query_rows))
    return panels


def _draw_attention(ax: Any, panel: AttentionPanel, duration: float, marks: Sequence[tuple[float, float, str, str]]) -> Any:
    n_words, n_steps = panel.matrix.shape
    im = ax.imshow(panel.matrix, aspect="auto", cmap="viridis", interpolation="nearest",
                   extent=(0, duration, n_words, 0), vmin=0)  # fmt: skip
    ax.set_yticks(np.arange(n_words) + 0.5, [w[:14] for w in panel.words], fontsize=7)
    sums = "each word's row sums to 1" if panel.rows_sum_to_one else "each step's column sums to 1"
    ax.set_title(f"{panel.title}; {sums}", fontsize=8, loc="left")
    for start, end, color, label in marks:
        for x in (start, end):
            ax.axvline(x, color=color, lw=1.2, ls="--", label=label if x == start else None)
    return im


def attention_figure(
    out: str | Path,
    panels: Sequence[AttentionPanel],
    duration: float,
    *,
    sentence: str,
    gt: tuple[float, float] | None = None,
    top1: tuple[float, float] | None = None,
    title: str = "",
) -> Path:
    """The attention of each refinement step for one query (one panel per step, time along x),
    with the ground truth (green) and the top-1 prediction (white) marked."""
    if not panels:
        raise ValueError("no attention maps to draw (the model has no cross-modal encoder?)")
    plt = _pyplot()
    n_words = panels[0].matrix.shape[0]
    h = 0.22 * n_words + 0.9
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, h * len(panels) + 1.0), squeeze=False, sharex=True)
    marks = ([(*gt, "tab:green", "ground truth")] if gt else []) + ([(*top1, "white", "top-1")] if top1 else [])
    for ax, panel in zip(axes[:, 0], panels, strict=True):
        im = _draw_attention(ax, panel, duration, marks)
        fig.colorbar(im, ax=ax, fraction=0.02, pad=0.01)
    if marks:
        axes[0, 0].legend(fontsize=7, loc="upper right", framealpha=0.6)
    axes[-1, 0].set_xlabel("time (s)")
    head = "\n".join(textwrap.wrap(sentence, 90))
    fig.suptitle(f"{title}\n{head}" if title else head, fontsize=9)
    fig.tight_layout()
    return _save(fig, out)


def moments_timeline(
    out: str | Path,
    query: str,
    duration: float,
    moments: Sequence[Any],
    thumbnails: Sequence[tuple[float, np.ndarray]] = (),
    *,
    title: str = "",
    attention: Sequence[AttentionPanel] = (),
) -> Path:
    """Figure 6 for one prediction: frame thumbnails along the video's timeline and the top-n
    windows (``moments``: ``.start``, ``.end``, ``.score`` in seconds, best first) as bars below;
    then, with ``attention`` (:func:`attention_panels`), the attention of each refinement step
    on the same time axis, the top-1 window marked.

    ``thumbnails``: ``(time in seconds, RGB uint8 [H, W, 3])`` pairs (none for precomputed features).
    """
    plt = _pyplot()
    n = max(len(moments), 1)
    heights = [1.2, 0.35 * n + 0.3] if len(thumbnails) else [0.35 * n + 0.3]
    heights += [0.22 * p.matrix.shape[0] + 0.9 for p in attention]
    fig, axes = plt.subplots(len(heights), 1, figsize=(9, sum(heights) + 0.9), squeeze=False,
                             gridspec_kw={"height_ratios": heights}, sharex=True)  # fmt: skip
    for ax, panel in zip(axes[len(heights) - len(attention) :, 0], attention, strict=True):
        top = [(moments[0].start, moments[0].end, "white", "top-1")] if len(moments) else []
        _draw_attention(ax, panel, duration, top)
    if len(thumbnails):
        ax = axes[0, 0]
        width = duration / len(thumbnails)
        for t, img in thumbnails:
            ax.imshow(img, extent=(t - 0.48 * width, t + 0.48 * width, 0, 1), aspect="auto")
        ax.set_ylim(0, 1)
        ax.set_yticks([])
        ax.set_title("\n".join(textwrap.wrap(query, 90)), fontsize=9, loc="left")
    ax = axes[len(heights) - len(attention) - 1, 0]
    for rank, m in enumerate(moments, 1):
        y = n - rank
        ax.broken_barh([(m.start, m.end - m.start)], (y + 0.15, 0.7), color="tab:blue", alpha=0.4 + 0.6 * m.score)
        ax.text(m.end, y + 0.5, f" {m.start:.1f}-{m.end:.1f}s  {m.score:.2f}", va="center", fontsize=8)
    ax.set_yticks([n - r + 0.5 for r in range(1, len(moments) + 1)], [f"top-{r}" for r in range(1, len(moments) + 1)])
    ax.set_ylim(0, n)
    ax.set_xlim(0, duration)
    axes[-1, 0].set_xlabel("time (s)")
    if not len(thumbnails):
        ax.set_title("\n".join(textwrap.wrap(query, 90)), fontsize=9, loc="left")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, out)
