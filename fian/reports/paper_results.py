"""The paper's Tables 1-6 as data (``paper_results.yaml`` beside this module), loaded and checked."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

PAPER_RESULTS = Path(__file__).with_name("paper_results.yaml")
METRIC_RE = re.compile(r"^R@(\d+),IoU=(0\.\d+)$")
REFERENCE_VARIANT = "fian"  # full FIAN: the row every ablation of Tables 4-6 is compared with (ours and the paper's)


@dataclass(frozen=True)
class TableSpec:
    """One table of the paper: its columns, the reported rows and which of our runs join it."""

    key: str  # "table1" ... "table6"
    dataset: str  # the dataset its numbers come from
    caption: str  # the paper's caption
    first_column: str  # "Method" or "Stride Size"
    columns: tuple[str, ...]  # metric names "R@n,IoU=m"
    rows: tuple[tuple[str, tuple[float | None, ...]], ...]  # (method, percentages; None = "-")
    ours: tuple[tuple[str, str], ...]  # (row label, variant of results/<dataset>/<variant>/)
    note: str = ""  # ours, not the paper's: said in the caption after the paper's (e.g. how our runs were selected)

    @property
    def number(self) -> int:
        return int(self.key.removeprefix("table"))


def load_paper_results(path: str | Path = PAPER_RESULTS) -> dict[str, TableSpec]:
    """Read and validate the tables; a malformed entry raises ValueError naming file and table/row."""
    from fian.config import load_yaml

    path = Path(path)
    data = load_yaml(path)  # strict: a table or row key given twice is an error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must map table keys to tables")
    tables: dict[str, TableSpec] = {}
    for key, t in data.items():
        where = f"{path}: {key}"
        try:
            columns = tuple(t["columns"])
            for c in columns:
                if not METRIC_RE.match(c):
                    raise ValueError(f"column {c!r} is not 'R@n,IoU=m'")
            rows = []
            for i, (method, values) in enumerate(t["rows"]):
                if len(values) != len(columns):
                    raise ValueError(f"row {i} ({method}): {len(values)} values for {len(columns)} columns")
                if any(v is not None and not (isinstance(v, int | float) and 0 <= v <= 100) for v in values):
                    raise ValueError(f"row {i} ({method}): values must be percentages in [0, 100] or null")
                rows.append((str(method), tuple(None if v is None else float(v) for v in values)))
            ours = tuple((str(label), str(variant)) for label, variant in t["ours"])
            tables[key] = TableSpec(
                key=key,
                dataset=str(t["dataset"]),
                caption=str(t["caption"]).strip(),
                first_column=str(t["first_column"]),
                columns=columns,
                rows=tuple(rows),
                ours=ours,
                note=" ".join(str(t.get("note") or "").split()),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None
    return tables
