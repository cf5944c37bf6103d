"""``fian plots-template``: an HTML template for ``dvc plots show|diff`` that works offline.

    fian plots-template [OUT]          default OUT: .dvc/plots/offline.html
    dvc plots show --html-template .dvc/plots/offline.html
    dvc config plots.html_template plots/offline.html      # then plain `dvc plots show` uses it

DVC's default page loads vega, vega-lite and vega-embed from a CDN, so offline (a cluster node, a
laptop on a train) it renders a blank page.  This template holds the three libraries inline, taken
from the copies the installed Snakemake ships for its own reports (``snakemake/assets/data/``,
each with its license); the page keeps DVC's ``{plot_divs}`` placeholder and no ``{scripts}`` one,
so DVC adds no CDN tag.  ``make demo`` writes it when it is missing.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from fian.io import write_text
from fian_pipeline.common import StageError, command_parser, run_stage

DEFAULT_OUT = Path(".dvc/plots/offline.html")
LIBRARIES = ("vega/vega.js", "vega-lite/vega-lite.js", "vega-embed/vega-embed.js")  # load order

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot (offline: vega, vega-lite and vega-embed inline)</title>
{inline}
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def assets_dir() -> Path:
    """Where the installed Snakemake keeps its copies of the vega libraries."""
    import snakemake

    return Path(snakemake.__file__).parent / "assets" / "data"


def template(assets: Path | None = None) -> str:
    """The page: each library inline in its own script element, its license as a comment."""
    assets = assets or assets_dir()
    blocks = []
    for rel in LIBRARIES:
        js_path, lic_path = assets / rel, assets / rel.split("/")[0] / "LICENSE"
        if not js_path.is_file():
            raise StageError(f"{js_path}: not found (the installed snakemake ships vega for its reports; "
                             "reinstall it, or use DVC's default page online)")  # fmt: skip
        js = js_path.read_text(encoding="utf-8")
        if "</script" in js.lower():
            raise StageError(f"{js_path}: holds '</script', cannot be inlined in an HTML page")
        lic = lic_path.read_text(encoding="utf-8").replace("*/", "* /") if lic_path.is_file() else ""
        blocks.append(f"    <script>/* {rel}\n{lic}*/\n{js}\n    </script>")
    return PAGE.replace("{inline}", "\n".join(blocks))  # str.format would read the JS's braces


def main(argv: Sequence[str] | None = None) -> int:
    p = command_parser("plots-template", __doc__, whole_doc=True)
    p.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT, help=f"the page to write (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    write_text(args.out, template())
    print(f"wrote {args.out}: `dvc plots show --html-template {args.out}` renders offline")
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main))
