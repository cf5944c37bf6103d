"""The paper's Tables 1-6 with our numbers beside the reported ones: LaTeX (booktabs), a Markdown
twin, a CSV of every seed's value and a provenance file per table.

Each table keeps the paper's columns and rows (``paper_results.yaml``: the reported numbers as
data) and adds one "(ours)" row per run of ours that belongs to it (percentages):

- one run per variant (a workflow config without ``seeds:``): ``results/<dataset>/<variant>/
  metrics_<split>.json`` (fractions), with ``info_<split>.json`` and ``train_info.json`` beside it;
- several seeds (``seeds:``): the variant's ``summary_<split>.json`` (stage aggregate); a cell is
  the mean ± sample standard deviation over the seeds (the caption gives n), and rows of a variant
  compared with full FIAN (stage compare, ``compare_fian_<split>.json``) get a paired block below
  the table: the mean difference of R@1 with its paired bootstrap interval over queries, the
  paper's difference and whether its sign is reproduced.

"---" marks a run that does not exist (not run); "-" is the paper's own "not reported".

When our rows come from the table's own dataset they compete with the paper's rows and bold marks
the best mean of each column over both.  Rows from a stand-in dataset (the synthetic demo, the
rehearsal's tiny copies) must not look like a reproduction: they stand in a separate block under a
line saying so, carry the dataset's name in each row ("FIAN (ours) on synthetic") and are never
bold (the paper's block keeps its own bold).  Captions say which dataset our numbers come from and
the evaluation protocol of our rows (hit rule and NMS, from each run's ``"protocol"``; fian/metrics.py).

Beside ``table<k>.tex``: ``table<k>.md`` (the same table for READMEs and GitHub), ``table<k>.csv``
(one line per value: the paper's, and every seed's of ours) and ``table<k>.provenance.json`` (per
"(ours)" row, whose cells all come from the same runs: the MLflow runs, commit and dirty flag,
sha256 of the feature and word-vector files with their sources, seeds, device kind and count,
effective batch size, protocol; pipeline/provenance.py writes them at train/evaluate time).

Reusable pieces for other tables: :func:`cell_text` (the values of n seeds -> one cell),
:func:`collect_ours` / :class:`OurRow` (a run's values and provenance), :func:`csv_lines`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fian.io import read_json
from fian.reports.paper_results import REFERENCE_VARIANT, TableSpec, load_paper_results
from fian.reports.stats import format_mean_std

DATASET_NAMES = {
    "activitynet": "ActivityNet Captions",
    "tacos": "TACoS",
    "charades": "Charades-STA",
    "charades_cd": "Charades-CD",  # Yuan et al. 2021: Charades-STA re-split (test_iid, test_ood)
    "activitynet_cd": "ActivityNet-CD",  # Yuan et al. 2021: ActivityNet Captions re-split
    "synthetic": "SYNTHETIC demo",
    # the rehearsal (workflow/config/paper-mini.yaml): tiny generated copies of the three releases
    "activitynet_mini": "REHEARSAL ActivityNet Captions (tiny, generated)",
    "tacos_mini": "REHEARSAL TACoS (tiny, generated)",
    "charades_mini": "REHEARSAL Charades-STA (tiny, generated)",
}
NOT_RUN = "---"
NOT_REPORTED = "-"
BASELINE = "prior"  # results/<dataset>/prior/: the moment prior, one run whatever the seeds
COMPARED = ("R@1,IoU=0.5", "R@1,IoU=0.7")  # the metrics of the paired block (the compare stage's)
KINDS = (".tex", ".md", ".csv", ".provenance.json")  # the files of one table


def summary_file(split: str) -> str:
    """A variant's summary of its seeds (stage aggregate) in ``results/<dataset>/<variant>/``."""
    return f"summary_{split}.json"


def compare_file(split: str, reference: str = REFERENCE_VARIANT) -> str:
    """A variant's comparison with the reference (stage compare) in ``results/<dataset>/<variant>/``."""
    return f"compare_{reference}_{split}.json"


@dataclass(frozen=True)
class OurRow:
    """One "(ours)" row: every seed's value per column (percentages) and where they came from."""

    label: str
    variant: str
    path: Path  # the file its numbers come from (metrics or summary; may not exist)
    cells: tuple[tuple[float, ...] | None, ...] | None  # per column, one value per seed; None: not run
    protocol: dict[str, str] | None = None  # the runs' "protocol" (fian.metrics.protocol)
    dataset: str = ""
    seeds: tuple[int | None, ...] = ()  # the seed of each value (None: not recorded)
    runs: tuple[dict, ...] = ()  # per seed: {"seed", "train": provenance, "evaluate": provenance}
    comparison: dict | None = None  # the compare stage's file, for a variant compared with FIAN
    comparison_path: Path | None = None
    stand_in: bool = False  # from a stand-in dataset (not the table's): never bold, own block

    @property
    def values(self) -> tuple[float | None, ...] | None:
        """The mean of each column (percentages), None where the column is missing; None: not run."""
        if self.cells is None:
            return None
        return tuple(math.fsum(c) / len(c) if c else None for c in self.cells)

    @property
    def n(self) -> int:
        return max((len(c) for c in self.cells or () if c), default=0)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def tex_escape(text: str) -> str:
    """Escape plain text (paths, dataset names) for LaTeX."""
    out = text.replace("\\", r"\textbackslash{}")
    for ch in "&%$#_{}":
        out = out.replace(ch, "\\" + ch)
    return out.replace("~", r"\textasciitilde{}").replace("^", r"\textasciicircum{}")


def _fraction(path: Path, key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not 0 <= v <= 1:
        raise ValueError(f"{path}: key {key!r}: expected a fraction in [0, 1], got {v!r}")
    return float(v)


def read_json_object(path: Path) -> dict:
    """A JSON file holding an object; ValueError naming the file otherwise."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def read_metrics(path: str | Path) -> dict[str, float]:
    """A ``metrics_<split>.json`` of the evaluate/baseline stages: metric (R@n,IoU=m, dR@n,IoU=m, mIoU) -> fraction in [0, 1].

    Raises ValueError naming the file (and key) for malformed JSON, a unit other than
    "fraction", or a metric that is not a number in [0, 1].
    """
    path = Path(path)
    data = read_json_object(path)
    unit = data.get("unit", "fraction")
    if unit != "fraction":
        raise ValueError(f"{path}: key 'unit': expected 'fraction', got {unit!r}")
    return {k: _fraction(path, k, v) for k, v in data.items() if k.startswith(("R@", "dR@")) or k == "mIoU"}


def read_summary(path: str | Path, seeds: Sequence[int]) -> dict[str, dict[int, float]]:
    """A ``summary_<split>.json`` (stage aggregate): metric -> {seed: fraction}.  Its seeds must be
    ``seeds`` (else it is stale: an error naming the file)."""
    path = Path(path)
    data = read_json_object(path)
    if data.get("unit", "fraction") != "fraction":
        raise ValueError(f"{path}: key 'unit': expected 'fraction', got {data.get('unit')!r}")
    if list(data.get("seeds") or []) != list(seeds):
        raise ValueError(f"{path}: key 'seeds': summarizes seeds {data.get('seeds')}, the config has {list(seeds)}")
    out: dict[str, dict[int, float]] = {}
    for name, m in (data.get("metrics") or {}).items():
        vals = (m or {}).get("values") if isinstance(m, dict) else None
        if not isinstance(vals, dict) or sorted(vals) != sorted(str(s) for s in seeds):
            raise ValueError(f"{path}: key 'metrics.{name}.values': expected one value per seed {list(seeds)}")
        out[name] = {s: _fraction(path, f"metrics.{name}.values.{s}", vals[str(s)]) for s in seeds}
    return out


def read_protocol(path: str | Path) -> dict[str, str] | None:
    """The ``"protocol"`` entry of a metrics file or of its ``info_<split>.json`` beside it (the
    evaluate stage keeps text out of DVC's metrics files); top level, or one level down under a text
    key; None when neither records one."""
    path = Path(path)
    info = path.with_name(path.name.replace("metrics_", "info_", 1))
    for f in (path, info):
        data = _read_json(f)
        if isinstance(data, dict):
            for d in (data, *(v for v in data.values() if isinstance(v, dict))):
                if isinstance(d.get("protocol"), dict):
                    return {str(k): str(v) for k, v in d["protocol"].items()}
    return None


def _read_json(path: Path) -> Any:
    """A JSON file's content, or None when it does not exist (provenance is recorded where it can be)."""
    if not path.is_file():
        return None
    return read_json(path)


def _provenance(path: Path) -> dict | None:
    data = _read_json(path)
    return data.get("provenance") if isinstance(data, dict) else None


def collect_ours(
    spec: TableSpec, results: Path, dataset: str, split: str, seeds: Sequence[int] | None = None
) -> list[OurRow]:
    """The "(ours)" rows of ``spec`` from the runs of ``dataset`` (``seeds``: a config with
    ``seeds:``, read the summaries and comparisons; the moment prior is one run either way)."""
    rows = []
    stand_in = dataset != spec.dataset
    for label, variant in spec.ours:
        run = results / dataset / variant
        base = {"label": label, "variant": variant, "dataset": dataset, "stand_in": stand_in}
        if seeds is None or variant == BASELINE:
            path = run / f"metrics_{split}.json"
            if not path.exists():
                rows.append(OurRow(path=path, cells=None, **base))
                continue
            metrics = read_metrics(path)
            train, evaluate = _provenance(run / "train_info.json"), _provenance(run / f"info_{split}.json")
            seed = (evaluate or train or {}).get("seed")
            rows.append(OurRow(
                path=path, cells=tuple((100.0 * metrics[c],) if c in metrics else None for c in spec.columns),
                protocol=read_protocol(path), seeds=(seed,),
                runs=({"seed": seed, "metrics_file": str(path), "train": train, "evaluate": evaluate},), **base,
            ))  # fmt: skip
            continue
        path = run / summary_file(split)
        if not path.exists():
            rows.append(OurRow(path=path, cells=None, **base))
            continue
        per_seed = read_summary(path, seeds)
        summary = read_json(path)
        cpath = run / compare_file(split)
        comparison = _read_json(cpath) if variant != REFERENCE_VARIANT else None
        rows.append(OurRow(
            path=path,
            cells=tuple(tuple(100.0 * per_seed[c][s] for s in seeds) if c in per_seed else None for c in spec.columns),
            protocol={str(k): str(v) for k, v in (summary.get("protocol") or {}).items()} or None,
            seeds=tuple(seeds), runs=tuple(summary.get("runs") or ()), comparison=comparison,
            comparison_path=cpath if comparison is not None else None, **base,
        ))  # fmt: skip
    return rows


# --------------------------------------------------------------------------------------------
# Cells, in LaTeX or Markdown
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Markup:
    """The few things LaTeX and Markdown write differently."""

    tex: bool

    def bold(self, s: str) -> str:
        return rf"\textbf{{{s}}}" if self.tex else f"**{s}**"

    def code(self, s: str) -> str:
        return rf"\texttt{{{tex_escape(s)}}}" if self.tex else f"`{s}`"

    def text(self, s: str) -> str:
        return tex_escape(s) if self.tex else s

    def label(self, s: str) -> str:
        """A row label of paper_results.yaml (LaTeX already): kept, or made readable in Markdown."""
        return s if self.tex else s.replace("\\theta", "θ").replace("$", "")

    @property
    def pm(self) -> str:
        return r"\,{\scriptsize$\pm$}\," if self.tex else " ± "

    def math(self, tex: str, md: str) -> str:
        return tex if self.tex else md


TEX, MD = Markup(True), Markup(False)


def cell_text(values: Sequence[float] | None, markup: Markup = TEX, *, bold: bool = False, missing: str = NOT_RUN) -> str:
    """One cell from the values of n seeds (percentages): ``"61.23 ± 0.45"`` (mean ± sample std,
    n > 1), ``"61.23"`` (n = 1) or ``missing``; bold when asked."""
    if not values:
        return missing
    text = format_mean_std(values, pm=markup.pm)
    return markup.bold(text) if bold else text


def _best(block: Sequence[Sequence[float | None]], j: int) -> float | None:
    vals = [round(r[j], 2) for r in block if r[j] is not None]
    return max(vals) if vals else None


def _is_best(v: float | None, best: float | None) -> bool:
    return v is not None and best is not None and round(v, 2) == best


def _header(spec: TableSpec, markup: Markup) -> list[list[str]]:
    tops, bottoms = [], []
    for c in spec.columns:
        rank, iou = c.split(",")
        tops.append(rank)
        bottoms.append(iou)
    return [["", *tops], [spec.first_column, *bottoms]]


# --------------------------------------------------------------------------------------------
# Captions and notes
# --------------------------------------------------------------------------------------------


def protocol_text(p: Mapping[str, str] | None, markup: Markup = TEX) -> str:
    """One protocol in words: "hit: IoU $> m$; NMS at IoU $m - 0.05$, one ranked list per $m$ (...)"."""
    if p is None:
        return "not recorded in its metrics file"
    hit = {
        "gt": markup.math(r"IoU $> m$", "IoU > m"),
        "ge": markup.math(r"IoU $\geq m$", "IoU ≥ m"),
    }.get(p.get("iou_rule", ""), markup.text(p.get("hit", "?")))
    if p.get("nms") == "per_level":
        nms = markup.math(r"NMS at IoU $m - 0.05$, one ranked list per $m$", "NMS at IoU m - 0.05, one ranked list per m")
        nms += " (TALL's evaluator)"
    elif p.get("nms") == "fixed":
        nms = f"NMS at IoU {markup.text(p.get('nms_threshold', '?'))} for every " + markup.math("$m$", "m")
    else:
        nms = "NMS " + markup.text(p.get("nms", "?"))
    named = {"tall": "TALL's", "2dtan": "2D-TAN's", "cmin": "CMIN's"}.get(p.get("preset", ""))
    return (f"{named} protocol, " if named else "") + f"hit: {hit}; {nms}"


def protocol_tex(p: dict[str, str] | None) -> str:
    """:func:`protocol_text` in LaTeX."""
    return protocol_text(p, TEX)


def _seeds_words(ours: Sequence[OurRow], markup: Markup) -> str | None:
    """"mean ± sample standard deviation over n = 3 seeds (0, 1, 2)", when a row has n > 1."""
    many = [r for r in ours if r.cells is not None and r.n > 1]
    if not many:
        return None
    ns = sorted({r.n for r in many})
    seeds = sorted({s for r in many for s in r.seeds if s is not None})
    n = markup.math(f"$n = {ns[0]}$", f"n = {ns[0]}") if len(ns) == 1 else "n = " + "/".join(map(str, ns))
    pm = markup.math(r"$\pm$", "±")
    return (f"(ours) cells are the mean {pm} sample standard deviation over {n} "
            f"seeds ({', '.join(map(str, seeds))}) of one training run each")  # fmt: skip


def caption(spec: TableSpec, source: str, split: str, ours: Sequence[OurRow], markup: Markup = TEX) -> str:
    """The paper's caption, then where our rows come from, the seeds, the protocol of our rows."""
    name = DATASET_NAMES.get(source, source)
    paper_caption = spec.caption if markup.tex else markup.label(spec.caption)
    m_level = markup.math("$m$", "m")
    text = [
        paper_caption,
        *([markup.text(spec.note)] if spec.note else []),
        f"R@{markup.math('$n$', 'n')}, IoU={m_level}: percentage of queries with at least one of the top-"
        f"{markup.math('$n$', 'n')} moments hitting the ground truth at IoU level {m_level}.",
        f"Rows without ``(ours)'': as reported by the paper ({NOT_REPORTED}: not reported), whose "
        f"Section 4.2 counts a hit when the IoU is larger than {m_level} (NMS threshold not given)."
        if markup.tex else
        f'Rows without "(ours)": as reported by the paper ({NOT_REPORTED}: not reported), whose '
        "Section 4.2 counts a hit when the IoU is larger than m (NMS threshold not given).",
    ]  # fmt: skip
    seeded = any(r.path.name == summary_file(split) for r in ours)
    what = summary_file(split) if seeded else f"metrics_{split}.json"
    where = markup.code(f"results/{source}/<variant>/{what}")
    if source == spec.dataset:
        text.append(
            f"(ours): this repository's runs on {markup.text(name)}, {markup.text(split)} split "
            f"({where}); {NOT_RUN}: not run. Bold: best of each column."
        )
    else:
        text.append(
            markup.bold(f"Not a reproduction: our rows come from the {markup.text(name)} dataset "
                        f"({markup.text(source)}), not from {markup.text(DATASET_NAMES.get(spec.dataset, spec.dataset))}")
            + f" ({where}, {markup.text(split)} split): they check the pipeline end to end, are not comparable "
            f"with the paper's numbers and stand in their own block, never bold; {NOT_RUN}: not run. "
            "Bold: best of each column of the paper's rows."
        )  # fmt: skip
    seeds = _seeds_words(ours, markup)
    if seeds:
        text.append(seeds[0].upper() + seeds[1:] + ".")
    run = [r for r in ours if r.values is not None]
    protocols = {protocol_text(r.protocol, markup) for r in run}
    if len(protocols) == 1:
        text.append(f"Protocol of our rows: {protocols.pop()}.")
    elif not protocols:
        text.append(f"Protocol of our rows: none run ({NOT_RUN}).")
    else:
        text.append(markup.bold("Our rows use different protocols:") + " "
                    + "; ".join(f"{markup.label(r.label)}: {protocol_text(r.protocol, markup)}" for r in run) + ".")  # fmt: skip
    if any(r.variant == BASELINE for r in ours):
        text.append("Moment prior: a query-independent baseline (the most frequent training moments).")
    if _has_ablations(spec) and not seeded:
        text.append(
            f"Paired intervals against FIAN (ours) come with several seeds (workflow config {markup.code('seeds:')}, "
            "docs/PIPELINE.md)."
        )
    return " ".join(text)


def _has_ablations(spec: TableSpec) -> bool:
    variants = {v for _, v in spec.ours}
    return REFERENCE_VARIANT in variants and bool(variants - {REFERENCE_VARIANT, BASELINE})


def footnote(key: str, markup: Markup = TEX) -> str:
    """Where every seed's value and the provenance of each (ours) cell are (files beside the table)."""
    return (f"Every value of every seed: {markup.code(key + '.csv')}; where each (ours) number came from "
            f"(MLflow runs, commit, data hashes, seeds, device, batch, protocol): {markup.code(key + '.provenance.json')} "
            "(beside this file).")  # fmt: skip


# --------------------------------------------------------------------------------------------
# The paired block (Tables 4-6)
# --------------------------------------------------------------------------------------------


def _paper_value(spec: TableSpec, label: str, metric: str) -> float | None:
    if metric not in spec.columns:
        return None
    j = spec.columns.index(metric)
    for method, values in spec.rows:
        if method == label:
            return values[j]
    return None


def paired_rows(spec: TableSpec, ours: Sequence[OurRow], markup: Markup = TEX) -> list[list[str]]:
    """One line per compared row: label, then per metric of :data:`COMPARED` the difference with its
    interval (percentage points; † when it contains 0), the paper's difference and whether ours has its sign."""
    ref_label = next((label for label, v in spec.ours if v == REFERENCE_VARIANT), None)
    paper_ref = ref_label.removesuffix(" (ours)") if ref_label else None
    out = []
    for r in ours:
        if not r.comparison:
            continue
        line = [markup.label(_row_label(r, markup))]
        for metric in COMPARED:
            c = (r.comparison.get("metrics") or {}).get(metric)
            if c is None:
                line += [NOT_RUN, NOT_REPORTED, NOT_REPORTED]
                continue
            d, lo, hi = 100 * c["difference"], 100 * c["low"], 100 * c["high"]
            dagger = markup.math(r"$^\dagger$", "†") if c["contains_zero"] else ""
            line.append(f"{_signed(d, markup)} [{_signed(lo, markup)}, {_signed(hi, markup)}]{dagger}")
            mine = _paper_value(spec, r.label.removesuffix(" (ours)"), metric)
            ref = _paper_value(spec, paper_ref, metric) if paper_ref else None
            if mine is None or ref is None:
                line += [NOT_REPORTED, NOT_REPORTED]
                continue
            paper_d = mine - ref
            line.append(_signed(paper_d, markup))
            line.append("yes" if paper_d != 0 and (d > 0) == (paper_d > 0) and d != 0 else "no")
        out.append(line)
    return out


def _reference_label(spec: TableSpec) -> str:
    """The "(ours)" row label of full FIAN in this table (Table 5: "FIAN-Full (ours)")."""
    return next((label for label, v in spec.ours if v == REFERENCE_VARIANT), "FIAN (ours)")


def _signed(x: float, markup: Markup) -> str:
    text = f"{x:+.2f}"
    return markup.math(f"${text}$", text.replace("-", "−"))


def _paired_caption(spec: TableSpec, ours: Sequence[OurRow], markup: Markup) -> str:
    first = next(r.comparison for r in ours if r.comparison)
    b = first.get("bootstrap") or {}
    level = 100 * float(b.get("level", 0.95))
    ref = _reference_label(spec)
    delta = markup.math(r"$\Delta$", "Δ")
    dagger = markup.math(r"$^\dagger$", "†")
    return (
        f"Paired comparison with {markup.label(ref)} on the same {first.get('n_queries', '?')} queries: "
        f"{delta} = the row's R@1 minus FIAN's, in percentage points, seeds pooled "
        f"({first.get('n_runs', '?')} per variant), with its {level:g}% paired bootstrap interval over queries "
        f"({b.get('resamples', '?')} resamples, seed {b.get('seed', '?')}); "
        f"{dagger}: the interval contains 0 (no difference shown at this level). "
        f"Paper {delta}: the same difference in the paper's rows ({NOT_REPORTED}: not reported); "
        "sign: whether ours has the paper's sign."
    )


# --------------------------------------------------------------------------------------------
# One table
# --------------------------------------------------------------------------------------------


def _row_label(r: OurRow, markup: Markup) -> str:
    """The row's label; a stand-in dataset's name follows it ("FIAN (ours) on synthetic")."""
    return f"{r.label} on {markup.text(r.dataset)}" if r.stand_in else r.label


def _table_lines(spec: TableSpec, ours: Sequence[OurRow], markup: Markup) -> tuple[list[list[str]], list[list[str]], bool]:
    """(paper rows, our rows, stand-in) as cell texts, bold applied."""
    n = len(spec.columns)
    paper_vals = [v for _, v in spec.rows]
    our_vals = [r.values for r in ours if r.values is not None]
    stand_in = any(r.stand_in for r in ours)
    if stand_in:
        best = [_best(paper_vals, j) for j in range(n)]
        best_ours: list[float | None] = [None] * n  # a stand-in block is never bold
    else:
        best = best_ours = [_best(paper_vals + our_vals, j) for j in range(n)]
    paper = [
        [markup.label(method)]
        + [NOT_REPORTED if v is None else (markup.bold(f"{v:.2f}") if _is_best(v, b) else f"{v:.2f}")
           for v, b in zip(values, best, strict=True)]
        for method, values in spec.rows
    ]  # fmt: skip
    return paper, [our_cells(r, n, markup, best_ours) for r in ours], stand_in


def our_cells(r: OurRow, n: int, markup: Markup, best: Sequence[float | None]) -> list[str]:
    """One "(ours)" row as cell texts (label, then ``n`` cells), bold where its mean is ``best``."""
    cells = r.cells if r.cells is not None else (None,) * n
    means = r.values if r.values is not None else (None,) * n
    return [markup.label(_row_label(r, markup))] + [
        cell_text(c, markup, bold=_is_best(m, b)) for c, m, b in zip(cells, means, best, strict=True)
    ]


def render_table(spec: TableSpec, ours: Sequence[OurRow], *, source: str, split: str) -> str:
    """One table as a LaTeX ``table`` environment (booktabs)."""
    n = len(spec.columns)
    paper, mine, stand_in = _table_lines(spec, ours, TEX)
    tex_row = lambda cells: " & ".join(cells) + r" \\"  # noqa: E731
    lines = [
        f"% Table {spec.number} of Qu et al. (ACM MM 2020), generated by `python -m fian_pipeline.tables`.",
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{{caption(spec, source, split, ours, TEX)}}}",
        rf"\label{{tab:{spec.key}}}",
        r"\begin{tabular}{l" + "c" * n + "}",
        r"\toprule",
        *(" & ".join(h) + r" \\" for h in _header(spec, TEX)),
        r"\midrule",
        *(tex_row(r) for r in paper),
    ]
    if mine:
        lines.append(r"\midrule")
        if stand_in:
            name = tex_escape(ours[0].dataset)
            lines.append(rf"\multicolumn{{{n + 1}}}{{l}}{{\emph{{Not a reproduction: our runs on {name}, a stand-in "
                         r"dataset (not comparable with the rows above)}} \\")  # fmt: skip
        lines += [tex_row(r) for r in mine]
    lines += [r"\bottomrule", r"\end{tabular}"]
    paired = paired_rows(spec, ours, TEX)
    if paired:
        lines += [
            r"\par\medskip",
            rf"{{\footnotesize {_paired_caption(spec, ours, TEX)}\par}}\smallskip",
            r"\begin{tabular}{lcccccc}",
            r"\toprule",
            r" & \multicolumn{3}{c}{R@1, IoU=0.5} & \multicolumn{3}{c}{R@1, IoU=0.7} \\",
            rf"vs.\ {_reference_label(spec)} & $\Delta$ [95\% interval] & paper $\Delta$ & sign & $\Delta$ [95\% interval] & paper $\Delta$ & sign \\",
            r"\midrule",
            *(tex_row(r) for r in paired),
            r"\bottomrule",
            r"\end{tabular}",
        ]
    lines += [r"\par\smallskip", rf"{{\footnotesize {footnote(spec.key, TEX)}\par}}", r"\end{table}", ""]
    return "\n".join(lines)


def _md_table(header: Sequence[Sequence[str]], rows: Sequence[Sequence[str]]) -> list[str]:
    top = [" ".join(x for x in col if x).strip() for col in zip(*header, strict=True)]
    out = ["| " + " | ".join(top) + " |", "|" + "|".join(["---"] + ["---:"] * (len(top) - 1)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def render_markdown(spec: TableSpec, ours: Sequence[OurRow], *, source: str, split: str) -> str:
    """The Markdown twin of :func:`render_table` (GitHub renders it): the same rows, our stand-in
    rows in a table of their own, the caption as text below."""
    paper, mine, stand_in = _table_lines(spec, ours, MD)
    header = _header(spec, MD)
    lines = [f"### Table {spec.number}: {MD.label(spec.caption.splitlines()[0].split('. ')[0])}", ""]
    if stand_in:
        lines += _md_table(header, paper) + [""]
        lines += [f"**Not a reproduction: our runs on {ours[0].dataset}, a stand-in dataset** "
                  "(not comparable with the table above):", ""]  # fmt: skip
        lines += _md_table(header, mine)
    else:
        lines += _md_table(header, paper + mine)
    paired = paired_rows(spec, ours, MD)
    if paired:
        lines += ["", _paired_caption(spec, ours, MD), ""]
        lines += _md_table(
            [["", "R@1,IoU=0.5", "", "", "R@1,IoU=0.7", "", ""],
             [f"vs. {MD.label(_reference_label(spec))}", "Δ [95% interval]", "paper Δ", "sign", "Δ [95% interval]",
              "paper Δ", "sign"]],
            paired,
        )  # fmt: skip
    lines += ["", caption(spec, source, split, ours, MD), "", footnote(spec.key, MD), ""]
    return "\n".join(lines)


def csv_lines(spec: TableSpec, ours: Sequence[OurRow]) -> list[dict[str, Any]]:
    """One record per value: the paper's (block ``paper``) and every seed's of ours (block ``ours``,
    or ``stand-in`` for another dataset's runs), in percent."""
    out: list[dict[str, Any]] = []
    for method, values in spec.rows:
        for c, v in zip(spec.columns, values, strict=True):
            if v is not None:
                out.append({"table": spec.key, "block": "paper", "row": method, "dataset": spec.dataset, "variant": "",
                            "seed": "", "metric": c, "value_percent": v})  # fmt: skip
    for r in ours:
        for c, vals in zip(spec.columns, r.cells or (), strict=False):
            for s, v in zip(r.seeds or (None,) * len(vals or ()), vals or (), strict=True):
                out.append({"table": spec.key, "block": "stand-in" if r.stand_in else "ours", "row": r.label,
                            "dataset": r.dataset, "variant": r.variant, "seed": "" if s is None else s, "metric": c,
                            "value_percent": round(v, 6)})  # fmt: skip
    return out


def render_csv(spec: TableSpec, ours: Sequence[OurRow]) -> str:
    buf = io.StringIO()
    fields = ["table", "block", "row", "dataset", "variant", "seed", "metric", "value_percent"]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(csv_lines(spec, ours))
    return buf.getvalue()


def provenance(spec: TableSpec, ours: Sequence[OurRow], *, split: str) -> dict[str, Any]:
    """Per "(ours)" row (every cell of a row comes from the same runs): where its numbers came from."""
    rows = []
    for r in ours:
        rows.append({
            "row": r.label,
            "dataset": r.dataset,
            "variant": r.variant,
            "stand_in": r.stand_in,
            "columns": list(spec.columns),
            "run": r.cells is not None,
            "file": str(r.path),
            "n": r.n,
            "seeds": list(r.seeds),
            "protocol": r.protocol,
            "runs": list(r.runs),
            "comparison_file": str(r.comparison_path) if r.comparison_path else None,
        })  # fmt: skip
    return {
        "table": spec.key,
        "split": split,
        "about": "per (ours) row: the MLflow runs (train and evaluate), git commit and dirty flag, sha256 of the "
        "feature and word-vector files the model read and their sources, seed, device kind and count, effective "
        "batch size, evaluation protocol (train_info.json / info_<split>.json 'provenance'; docs/PIPELINE.md)",
        "rows": rows,
    }


# --------------------------------------------------------------------------------------------
# All tables
# --------------------------------------------------------------------------------------------


def render_all(
    results: str | Path,
    *,
    ours_from: str | Mapping[str, str] | None = None,
    split: str = "test",
    seeds: Sequence[int] | None = None,
    kinds: Sequence[str] = (".tex",),
) -> dict[str, str]:
    """``{"table1.tex": ..., ...}`` (and ``.md``, ``.csv``, ``.provenance.json`` for those ``kinds``).

    ``ours_from``: take every table's "(ours)" rows from this dataset (the synthetic demo) instead
    of the table's own dataset; a mapping ``{table dataset: our dataset}`` does so per table
    dataset (the rehearsal: ``{"tacos": "tacos_mini", ...}``; a table dataset it does not name
    keeps its own).  ``seeds``: read each variant's summary and comparison (a config with
    ``seeds:``).  Everything is read (and checked) before anything is returned."""
    results = Path(results)
    out: dict[str, str] = {}
    for key, spec in load_paper_results().items():
        if isinstance(ours_from, Mapping):
            source = ours_from.get(spec.dataset, spec.dataset)
        else:
            source = ours_from or spec.dataset
        ours = collect_ours(spec, results, source, split, seeds)
        files = {
            ".tex": lambda: render_table(spec, ours, source=source, split=split),  # noqa: B023
            ".md": lambda: render_markdown(spec, ours, source=source, split=split),  # noqa: B023
            ".csv": lambda: render_csv(spec, ours),  # noqa: B023
            ".provenance.json": lambda: json.dumps(provenance(spec, ours, split=split), indent=1) + "\n",  # noqa: B023
        }
        for kind in kinds:
            out[f"{key}{kind}"] = files[kind]()
    return out
