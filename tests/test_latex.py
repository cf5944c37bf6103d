"""Each generated table compiles with pdflatex in a minimal document (marker: latex)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from fian.reports.tables import render_all

pytestmark = pytest.mark.latex


@pytest.mark.skipif(
    shutil.which("pdflatex") is None,
    reason="pdflatex not installed (apt-get install texlive-latex-base texlive-latex-recommended)",
)
def test_tables_compile(tmp_path: Path) -> None:
    res = tmp_path / "results/synthetic/fian"
    res.mkdir(parents=True)
    ms = {f"R@{n},IoU={m}": 0.5 for n in (1, 5) for m in (0.1, 0.3, 0.5, 0.7)}
    (res / "metrics_test.json").write_text(json.dumps({**ms, "mIoU": 0.4, "unit": "fraction"}))
    tables = render_all(tmp_path / "results", ours_from="synthetic")
    # Table 7: a real dataset's block (bold) and a stand-in's, with cells of every kind
    charades = tmp_path / "results/charades/fian"
    shutil.copytree(res, charades)
    shutil.copytree(res, charades / "shuffled")
    from fian.reports import bias_table

    tables.update(bias_table.render(tmp_path / "results", ["charades", "synthetic"], stand_in=["synthetic"]))
    assert "table7.tex" in tables
    for name, tex in tables.items():
        (tmp_path / name).write_text(tex)
    inputs = "\n".join(rf"\input{{{name}}}\clearpage" for name in tables)
    doc = tmp_path / "doc.tex"
    doc.write_text(
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
        + inputs
        + "\n\\end{document}\n"
    )
    proc = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]
    pdf = (tmp_path / "doc.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and len(pdf) > 10_000
    assert "Undefined control sequence" not in proc.stdout
    if shutil.which("pdftotext"):
        text = subprocess.run(
            ["pdftotext", "doc.pdf", "-"], cwd=tmp_path, capture_output=True, text=True
        ).stdout
        for needle in (
            "MCN [11]",
            "FIAN-Matrix",
            "FIAN (ours)",
            "64.10",
            "39.16",
            "58.55",
            "50.00",
            "Stride Size",
        ):
            assert needle in text, needle
        assert text.count("Table") >= 6
