"""LaTeX (booktabs) versions of the paper's Tables 1-6, with our numbers beside the reported ones.

Each table keeps the paper's columns and rows (``paper_results.yaml``: the reported numbers as
data) and adds one "(ours)" row per run of ours that belongs to it, read from
``results/<dataset>/<variant>/metrics_<split>.json`` (fractions; printed as percentages).
"---" marks a run that does not exist (not run); "-" is the paper's own "not reported".

Bold marks the best value of each column.  When our rows come from the table's own dataset they
compete with the paper's rows; when they come from a stand-in dataset (the synthetic demo) the
two blocks are not comparable and each block gets its own bold.  Captions say which dataset our
numbers come from and the evaluation protocol of our rows (hit rule and NMS, read from the
``"protocol"`` key of each metrics file, as the evaluate stage wrote it; see fian/metrics.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fian.io import read_json
from fian.reports.paper_results import TableSpec, load_paper_results

DATASET_NAMES = {
    "activitynet": "ActivityNet Captions",
    "tacos": "TACoS",
    "charades": "Charades-STA",
    "synthetic": "SYNTHETIC demo",
    # the rehearsal (workflow/config/paper-mini.yaml): tiny generated copies of the three releases
    "activitynet_mini": "REHEARSAL ActivityNet Captions (tiny, generated)",
    "tacos_mini": "REHEARSAL TACoS (tiny, generated)",
    "charades_mini": "REHEARSAL Charades-STA (tiny, generated)",
}
NOT_RUN = "---"
NOT_REPORTED = "-"


@dataclass(frozen=True)
class OurRow:
    label: str
    variant: str
    path: Path  # the metrics file it comes from (may not exist)
    values: tuple[float | None, ...] | None  # percentages per column; None = not run
    protocol: dict[str, str] | None = None  # the metrics file's "protocol" (fian.metrics.protocol)


def tex_escape(text: str) -> str:
    """Escape plain text (paths, dataset names) for LaTeX."""
    out = text.replace("\\", r"\textbackslash{}")
    for ch in "&%$#_{}":
        out = out.replace(ch, "\\" + ch)
    return out.replace("~", r"\textasciitilde{}").replace("^", r"\textasciicircum{}")


def read_metrics(path: str | Path) -> dict[str, float]:
    """A ``metrics_<split>.json`` of the evaluate/baseline stages: metric -> fraction in [0, 1].

    Raises ValueError naming the file (and key) for malformed JSON, a unit other than
    "fraction", or a metric that is not a number in [0, 1].
    """
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of metrics")
    unit = data.get("unit", "fraction")
    if unit != "fraction":
        raise ValueError(f"{path}: key 'unit': expected 'fraction', got {unit!r}")
    out: dict[str, float] = {}
    for k, v in data.items():
        if not (k.startswith("R@") or k == "mIoU"):
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not 0 <= v <= 1:
            raise ValueError(f"{path}: key {k!r}: expected a fraction in [0, 1], got {v!r}")
        out[k] = float(v)
    return out


def read_protocol(path: str | Path) -> dict[str, str] | None:
    """The ``"protocol"`` entry of a metrics file or of its ``info_<split>.json`` beside it (the
    evaluate stage keeps text out of DVC's metrics files); top level, or one level down under a text
    key; None when neither records one."""
    path = Path(path)
    info = path.with_name(path.name.replace("metrics_", "info_", 1))
    for f in (path, info):
        data = read_json(f) if f.is_file() else None
        if isinstance(data, dict):
            for d in (data, *(v for v in data.values() if isinstance(v, dict))):
                if isinstance(d.get("protocol"), dict):
                    return {str(k): str(v) for k, v in d["protocol"].items()}
    return None


def protocol_tex(p: dict[str, str] | None) -> str:
    """One protocol in LaTeX words: "hit: IoU $> m$; NMS at IoU $m - 0.05$ per level (CMIN's evaluation)"."""
    if p is None:
        return "not recorded in its metrics file"
    hit = {"gt": r"IoU $> m$", "ge": r"IoU $\geq m$"}.get(p.get("iou_rule", ""), tex_escape(p.get("hit", "?")))
    if p.get("nms") == "per_level":
        nms = r"NMS at IoU $m - 0.05$, one ranked list per $m$ (CMIN's evaluation)"
    elif p.get("nms") == "fixed":
        nms = rf"NMS at IoU {tex_escape(p.get('nms_threshold', '?'))} for every $m$"
    else:
        nms = "NMS " + tex_escape(p.get("nms", "?"))
    return f"hit: {hit}; {nms}"


def collect_ours(spec: TableSpec, results: Path, dataset: str, split: str) -> list[OurRow]:
    rows = []
    for label, variant in spec.ours:
        path = results / dataset / variant / f"metrics_{split}.json"
        if not path.exists():
            rows.append(OurRow(label, variant, path, None))
            continue
        metrics = read_metrics(path)
        values = tuple(100.0 * metrics[c] if c in metrics else None for c in spec.columns)
        rows.append(OurRow(label, variant, path, values, read_protocol(path)))
    return rows


def _best(block: Sequence[Sequence[float | None]], j: int) -> float | None:
    vals = [round(r[j], 2) for r in block if r[j] is not None]
    return max(vals) if vals else None


def _cells(values: Sequence[float | None], best: Sequence[float | None], missing: str) -> list[str]:
    out = []
    for v, b in zip(values, best, strict=True):
        if v is None:
            out.append(missing)
        elif b is not None and round(v, 2) == b:
            out.append(rf"\textbf{{{v:.2f}}}")
        else:
            out.append(f"{v:.2f}")
    return out


def _header(spec: TableSpec) -> list[str]:
    tops, bottoms = [], []
    for c in spec.columns:
        rank, iou = c.split(",")
        tops.append(rank)
        bottoms.append(iou)
    return [" & " + " & ".join(tops) + r" \\", spec.first_column + " & " + " & ".join(bottoms) + r" \\"]


def caption(spec: TableSpec, source: str, split: str, ours: Sequence[OurRow]) -> str:
    """The paper's caption, then where our rows come from and the evaluation protocol of each block."""
    name = DATASET_NAMES.get(source, source)
    text = [
        spec.caption,
        r"R@$n$, IoU=$m$: percentage of queries with at least one of the top-$n$ moments hitting "
        r"the ground truth at IoU level $m$.",
        f"Rows without ``(ours)'': as reported by the paper ({NOT_REPORTED}: not reported), whose "
        r"Section 4.2 counts a hit when the IoU is larger than $m$ (NMS threshold not given).",
    ]
    where = tex_escape(f"results/{source}/<variant>/metrics_{split}.json")
    if source == spec.dataset:
        text.append(
            f"(ours): this repository's runs on {tex_escape(name)}, {tex_escape(split)} split "
            rf"(\texttt{{{where}}}); {NOT_RUN}: not run. Bold: best of each column."
        )
    else:
        text.append(
            rf"\textbf{{Our rows come from the {tex_escape(name)} dataset, not from "
            rf"{tex_escape(DATASET_NAMES.get(spec.dataset, spec.dataset))}}} "
            rf"(\texttt{{{where}}}, {tex_escape(split)} split): they check the pipeline end to end and "
            rf"are not comparable with the paper's numbers; {NOT_RUN}: not run. "
            "Bold: best of each column within the paper's rows and within ours."
        )
    run = [r for r in ours if r.values is not None]
    protocols = {protocol_tex(r.protocol) for r in run}
    if len(protocols) == 1:
        text.append(f"Protocol of our rows: {protocols.pop()}.")
    elif not protocols:
        text.append(f"Protocol of our rows: none run ({NOT_RUN}).")
    else:
        text.append(r"\textbf{Our rows use different protocols:} "
                    + "; ".join(f"{r.label}: {protocol_tex(r.protocol)}" for r in run) + ".")
    if any(r.variant == "prior" for r in ours):
        text.append("Moment prior: a query-independent baseline (the most frequent training moments).")
    return " ".join(text)


def render_table(spec: TableSpec, ours: Sequence[OurRow], *, source: str, split: str) -> str:
    """One table as a LaTeX ``table`` environment (booktabs)."""
    paper_vals = [v for _, v in spec.rows]
    our_vals = [r.values for r in ours if r.values is not None]
    n = len(spec.columns)
    if source == spec.dataset:
        best = [_best(paper_vals + our_vals, j) for j in range(n)]
        best_ours = best
    else:
        best = [_best(paper_vals, j) for j in range(n)]
        best_ours = [_best(our_vals, j) for j in range(n)]
    lines = [
        f"% Table {spec.number} of Qu et al. (ACM MM 2020), generated by `python -m fian_pipeline.tables`.",
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{{caption(spec, source, split, ours)}}}",
        rf"\label{{tab:{spec.key}}}",
        r"\begin{tabular}{l" + "c" * n + "}",
        r"\toprule",
        *_header(spec),
        r"\midrule",
    ]
    for method, values in spec.rows:
        lines.append(method + " & " + " & ".join(_cells(values, best, NOT_REPORTED)) + r" \\")
    if ours:
        lines.append(r"\midrule")
    for r in ours:
        values = r.values if r.values is not None else (None,) * n
        lines.append(r.label + " & " + " & ".join(_cells(values, best_ours, NOT_RUN)) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def render_all(
    results: str | Path, *, ours_from: str | Mapping[str, str] | None = None, split: str = "test"
) -> dict[str, str]:
    """``{"table1.tex": ..., ...}``.  ``ours_from``: take every table's "(ours)" rows from this
    dataset (the synthetic demo) instead of the table's own dataset; a mapping ``{table dataset:
    our dataset}`` does so per table dataset (the rehearsal: ``{"tacos": "tacos_mini", ...}``;
    a table dataset it does not name keeps its own)."""
    results = Path(results)
    out = {}
    for key, spec in load_paper_results().items():
        if isinstance(ours_from, Mapping):
            source = ours_from.get(spec.dataset, spec.dataset)
        else:
            source = ours_from or spec.dataset
        ours = collect_ours(spec, results, source, split)
        out[f"{key}.tex"] = render_table(spec, ours, source=source, split=split)
    return out
