"""The ``fian`` console script: ``fian <stage> ARGS`` is ``python -m fian_pipeline.<stage> ARGS``.

fian render [--check] [--config workflow/config/paper.yaml]
fian train --params params/base.yaml params/datasets/tacos.yaml params/variants/fian.yaml ...
fian demo
fian params explain train.lr --dataset tacos   which layer sets a key
fian predict --checkpoint results/<d>/<v>/checkpoint.pt --video clip.mp4 --query "..." [--top 5] [--json]
fian plots-template      an offline page for `dvc plots show --html-template .dvc/plots/offline.html`
fian --help          lists the stages (so does ``fian`` alone)
fian --version
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# command -> module of pipeline/ (the stage modules of the registry, plus the tools)
TOOLS = {"render": "render", "demo": "demo", "params": "params", "predict": "predict",
         "plots-template": "plots_template"}


def commands() -> dict[str, str]:
    from fian_pipeline.registry import STAGES

    out = {s.module: s.module for s in STAGES}
    out.update(TOOLS)
    return dict(sorted(out.items()))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmds = commands()
    if not argv or argv[0] in ("-h", "--help"):
        from fian_pipeline.common import plain_text

        print(plain_text(__doc__))
        print("commands: " + ", ".join(cmds))
        print("help of one command: fian <command> --help")
        return 0
    if argv[0] in ("-V", "--version"):
        from fian import __version__

        print(f"fian {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in cmds:
        print(f"error: unknown command {name!r}; one of: {', '.join(cmds)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"fian_pipeline.{cmds[name]}")
    from fian_pipeline.common import run_stage

    return run_stage(module.main, rest)


if __name__ == "__main__":
    sys.exit(main())
