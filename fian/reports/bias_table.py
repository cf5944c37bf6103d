"""Table 7 (ours, not in the paper): how much of FIAN's score comes from the video.

For every dataset of the workflow config, four "(ours)" rows on the evaluated split:

- ``FIAN (ours)``: the full model, ``results/<dataset>/fian/``;
- ``Moment prior (ours)``: the query- and video-blind baseline, ``results/<dataset>/prior/``;
- ``Blind FIAN (ours)``: FIAN trained and evaluated with every video's features replaced by zeros
  (params/variants/blind.yaml, ``model.video_input: constant``), ``results/<dataset>/blind/``;
- ``FIAN, videos shuffled (ours)``: the trained FIAN evaluated with each query shown the features of
  another video of the split (stage shuffle), ``results/<dataset>/fian/shuffled/``.

A model that grounds its queries in the video falls toward the prior when the videos are shuffled;
one that does not, does not (Otani et al., BMVC 2020).  Cells are percentages; with several seeds
the mean ± sample standard deviation (the caption gives n), read from the runs' summaries as Tables
1-6 do (:func:`fian.reports.tables.collect_ours`).  Datasets that stand in for real ones (generated:
the synthetic demo, the rehearsal's tiny copies) form a block of their own under "Not a
reproduction", each row naming its dataset, never bold.  Beside ``table7.tex``: ``table7.md``,
``table7.csv`` (every seed's value) and ``table7.provenance.json`` (where each row came from).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fian.reports.paper_results import REFERENCE_VARIANT, TableSpec
from fian.reports.tables import (
    BASELINE,
    DATASET_NAMES,
    MD,
    NOT_RUN,
    TEX,
    Markup,
    OurRow,
    _best,
    _read_json,
    _seeds_words,
    collect_ours,
    csv_lines,
    footnote,
    our_cells,
    protocol_text,
)

KEY = "table7"
BLIND_VARIANT = "blind"  # params/variants/blind.yaml
SHUFFLED = f"{REFERENCE_VARIANT}/shuffled"  # results/<dataset>/fian/shuffled/ (stage shuffle)
COLUMNS = ("R@1,IoU=0.5", "R@1,IoU=0.7", "R@5,IoU=0.5", "R@5,IoU=0.7", "mIoU")
ROWS = (
    ("FIAN (ours)", REFERENCE_VARIANT),
    ("Moment prior (ours)", BASELINE),
    ("Blind FIAN (ours)", BLIND_VARIANT),
    ("FIAN, videos shuffled (ours)", SHUFFLED),
)


def entry(item: str) -> tuple[str, str | None]:
    """``dataset`` or ``dataset:split`` (a dataset reported on its own test splits, e.g.
    ``charades_cd:test_ood``) -> (dataset, its split or None: the table's split)."""
    name, _, split = item.partition(":")
    return name, split or None


def _spec(dataset: str) -> TableSpec:
    return TableSpec(key=KEY, dataset=dataset, caption="", first_column="Method", columns=COLUMNS, rows=(), ours=ROWS)


def collect(results: str | Path, datasets: Sequence[str], *, stand_in: Sequence[str] = (), split: str = "test",
            seeds: Sequence[int] | None = None) -> dict[str, list[OurRow]]:  # fmt: skip
    """``{dataset: its four rows}``, in the order of ``datasets`` (``dataset`` or ``dataset:split``:
    :func:`entry`); a run that does not exist is a row without cells ("---"); a malformed metrics or
    summary file: ValueError naming it."""
    out = {}
    for item in datasets:
        d, own = entry(item)
        rows = collect_ours(_spec(d), Path(results), d, own or split, seeds)
        out[item] = [dataclasses.replace(r, stand_in=d in stand_in) for r in rows]
    return out


def shuffle_seeds(results: str | Path, datasets: Sequence[str], split: str, seeds: Sequence[int] | None) -> list[int]:
    """The ``eval.shuffle_seed`` values the shuffled runs recorded (their ``info_<split>.json``)."""
    found = set()
    for item in datasets:
        d, own = entry(item)
        folder, name = Path(results) / d / REFERENCE_VARIANT, f"info_{own or split}.json"
        infos = [folder / "shuffled" / name] if seeds is None else [
            folder / f"seed{s}" / "shuffled" / name for s in seeds]  # fmt: skip
        for path in infos:
            data = _read_json(path)
            seed = (data.get("shuffle") or {}).get("seed") if isinstance(data, dict) else None
            if isinstance(seed, int):
                found.add(seed)
    return sorted(found)


def caption(groups: Mapping[str, Sequence[OurRow]], split: str, markup: Markup = TEX,
            shuffle_seed: Sequence[int] = ()) -> str:  # fmt: skip
    """What each row means, where the numbers come from, the seeds and the protocol."""
    rows = [r for rs in groups.values() for r in rs]
    own_splits = (" (a dataset with test splits of its own, as Charades-CD's test_iid and test_ood: each "
                  "of them, named beside the dataset)") if any(entry(k)[1] for k in groups) else ""
    seed = (f"{markup.code('eval.shuffle_seed')} = {', '.join(map(str, shuffle_seed))}" if shuffle_seed
            else markup.code("eval.shuffle_seed"))  # fmt: skip
    text = [
        "How much of the score comes from the video (ours; not in the paper). Per dataset of the workflow config, "
        f"{markup.text(split)} split{own_splits}. FIAN (ours): the full model. Moment prior: a baseline that reads neither "
        "query nor video (the most frequent training moments, scaled to each video's duration). Blind FIAN: the "
        "same model trained and evaluated with every video's features replaced by zeros "
        f"({markup.code('params/variants/blind.yaml')}), so only the query and the position prior it learns "
        "remain (the query-only check of Otani et al., BMVC 2020). FIAN, videos shuffled: the trained FIAN "
        "evaluated with each query shown the features of another video of the split (a derangement of the "
        f"videos seeded by {seed}; the query, its ground truth and duration are its own). If FIAN grounds its "
        "queries in the video, shuffling drops it toward the prior and blind FIAN scores well below it; if "
        "neither falls far, the score comes from the query and where moments usually are.",
        f"R@{markup.math('$n$', 'n')}, IoU={markup.math('$m$', 'm')}: percentage of queries with at least one of "
        f"the top-{markup.math('$n$', 'n')} moments hitting the ground truth; mIoU: mean IoU of the top-1 moment. "
        f"{NOT_RUN}: not run (blind: list {markup.code('blind')} in the dataset's variants; shuffled: "
        f"{markup.code('shuffle: true')} in the workflow config).",
    ]
    if any(not r.stand_in for r in rows):
        text.append("Bold: best of each column within a dataset.")
    if any(r.stand_in for r in rows):
        text.append(markup.bold("Not a reproduction:") + " rows of a generated stand-in dataset (the synthetic demo, "
                    "the rehearsal's tiny copies) stand in their own block, name their dataset and are never bold.")  # fmt: skip
    seeds = _seeds_words(rows, markup)
    if seeds:
        text.append(seeds[0].upper() + seeds[1:] + " (the moment prior: one fit).")
    protocols = {protocol_text(r.protocol, markup) for r in rows if r.values is not None}
    if len(protocols) == 1:
        text.append(f"Protocol: {protocols.pop()}.")
    elif protocols:
        text.append(markup.bold("Rows use different protocols:") + " " + "; ".join(sorted(protocols)) + ".")
    return " ".join(text)


def _lines(rows: Sequence[OurRow], markup: Markup) -> list[list[str]]:
    """Cell texts of one dataset's rows; bold: the best mean per column (never for a stand-in)."""
    n = len(COLUMNS)
    means = [r.values for r in rows if r.values is not None and not r.stand_in]
    best = [_best(means, j) for j in range(n)] if means else [None] * n
    return [our_cells(r, n, markup, best) for r in rows]


def _name(item: str, markup: Markup) -> str:
    d, own = entry(item)
    return f"{markup.text(DATASET_NAMES.get(d, d))} ({markup.code(d)}{', ' + markup.text(own) if own else ''})"


def render_tex(groups: Mapping[str, Sequence[OurRow]], split: str, shuffle_seed: Sequence[int] = ()) -> str:
    n = len(COLUMNS)
    row = lambda cells: " & ".join(cells) + r" \\"  # noqa: E731
    lines = [
        "% Table 7 (ours): FIAN beside the moment prior, blind FIAN and the video-shuffle check; "
        "generated by `python -m fian_pipeline.tables`.",
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{{caption(groups, split, TEX, shuffle_seed)}}}",
        rf"\label{{tab:{KEY}}}",
        r"\begin{tabular}{l" + "c" * n + "}",
        r"\toprule",
        " & R@1 & R@1 & R@5 & R@5 & " + r" \\",
        "Method & IoU=0.5 & IoU=0.7 & IoU=0.5 & IoU=0.7 & mIoU " + r"\\",
    ]
    real = [d for d, rs in groups.items() if not any(r.stand_in for r in rs)]
    stand = [d for d in groups if d not in real]
    for d in real:
        lines += [r"\midrule", rf"\multicolumn{{{n + 1}}}{{l}}{{\emph{{{_name(d, TEX)}}}}} \\"]
        lines += [row(c) for c in _lines(groups[d], TEX)]
    if stand:
        lines += [r"\midrule", rf"\multicolumn{{{n + 1}}}{{l}}{{\emph{{Not a reproduction: generated stand-in "
                  r"datasets (not comparable with real data)}} \\"]  # fmt: skip
        for d in stand:
            lines += [r"\midrule", rf"\multicolumn{{{n + 1}}}{{l}}{{\emph{{{_name(d, TEX)}}}}} \\"]
            lines += [row(c) for c in _lines(groups[d], TEX)]
    if not groups:
        lines += [r"\midrule", rf"\multicolumn{{{n + 1}}}{{l}}{{no dataset given}} \\"]
    lines += [r"\bottomrule", r"\end{tabular}", r"\par\smallskip", rf"{{\footnotesize {footnote(KEY, TEX)}\par}}",
              r"\end{table}", ""]  # fmt: skip
    return "\n".join(lines)


def render_md(groups: Mapping[str, Sequence[OurRow]], split: str, shuffle_seed: Sequence[int] = ()) -> str:
    header = ["| Dataset | Method | R@1,IoU=0.5 | R@1,IoU=0.7 | R@5,IoU=0.5 | R@5,IoU=0.7 | mIoU |",
              "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    real = [d for d, rs in groups.items() if not any(r.stand_in for r in rs)]
    stand = [d for d in groups if d not in real]
    lines = ["### Table 7: how much of the score comes from the video (ours)", ""]

    def block(ds: Sequence[str]) -> list[str]:
        return header + ["| " + " | ".join([_name(d, MD), *c]) + " |" for d in ds for c in _lines(groups[d], MD)]

    if real:
        lines += block(real) + [""]
    if stand:
        lines += ["**Not a reproduction: generated stand-in datasets** (not comparable with real data):", ""]
        lines += block(stand) + [""]
    if not groups:
        lines += ["(no dataset given)", ""]
    lines += [caption(groups, split, MD, shuffle_seed), "", footnote(KEY, MD), ""]
    return "\n".join(lines)


def render_csv(groups: Mapping[str, Sequence[OurRow]]) -> str:
    import csv
    import io

    buf = io.StringIO()
    fields = ["table", "block", "row", "dataset", "variant", "seed", "metric", "value_percent"]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for d, rows in groups.items():
        w.writerows(csv_lines(_spec(d), rows))
    return buf.getvalue()


def provenance(groups: Mapping[str, Sequence[OurRow]], split: str) -> dict[str, Any]:
    from fian.reports.tables import provenance as table_provenance

    rows = [row for d, rs in groups.items()
            for row in table_provenance(_spec(d), rs, split=entry(d)[1] or split)["rows"]]  # fmt: skip
    return {
        "table": KEY,
        "split": split,
        "about": "per (ours) row: the MLflow runs (train, evaluate / shuffle), git commit and dirty flag, sha256 of "
        "the files the model read, seeds, device, batch, evaluation protocol (train_info.json / info_<split>.json "
        "'provenance'; the shuffled rows' info_<split>.json also hold 'shuffle': the seed and which video each "
        "video's queries saw)",
        "rows": rows,
    }


def render(results: str | Path, datasets: Sequence[str], *, stand_in: Sequence[str] = (), split: str = "test",
           seeds: Sequence[int] | None = None, kinds: Sequence[str] = (".tex",)) -> dict[str, str]:  # fmt: skip
    """``{"table7.tex": ..., ...}`` for ``kinds`` (.tex, .md, .csv, .provenance.json); everything is
    read (and checked) before anything is returned."""
    groups = collect(results, datasets, stand_in=stand_in, split=split, seeds=seeds)
    shuffle_seed = shuffle_seeds(results, datasets, split, seeds)
    files = {
        ".tex": lambda: render_tex(groups, split, shuffle_seed),
        ".md": lambda: render_md(groups, split, shuffle_seed),
        ".csv": lambda: render_csv(groups),
        ".provenance.json": lambda: json.dumps(provenance(groups, split), indent=1) + "\n",
    }
    return {f"{KEY}{k}": files[k]() for k in kinds}
