"""Which params layer sets a key (``fian params``).

    fian params explain KEY [--params params/base.yaml params/datasets/<d>.yaml [params/variants/<v>.yaml]]
    fian params explain KEY --dataset tacos [--variant soft]
    fian params overridden --dataset synthetic      every key a later layer overrides

Layers merge key by key, later wins (fian/config.py); params.yaml (the overrides layer, every key
at null = not set in git) comes last when it exists (``--overrides ''`` leaves it out).  ``explain`` prints each layer's value of
KEY (or of each key under it) and marks the winner; a key no layer sets takes the code default
(fian/config.py), printed last.  Nothing warns about an override unless asked: this is the asking.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fian.config import EVAL_PROTOCOLS, ConfigError, load_config, read_overrides
from fian_pipeline.common import command_parser, run_stage
from fian_pipeline.layers import explain, overridden


def _files(args: Any) -> list[str]:
    if args.params:
        return [str(p) for p in args.params]
    files = ["params/base.yaml", f"params/datasets/{args.dataset}.yaml"]
    if args.variant:
        files.append(f"params/variants/{args.variant}.yaml")
    return files


def main(argv: Sequence[str] | None = None) -> int:
    p = command_parser("params", __doc__, whole_doc=True)
    p.add_argument("action", choices=["explain", "overridden"], help="what to print")
    p.add_argument("key", nargs="?", help="dotted key or section, e.g. train.lr or model (explain)")
    p.add_argument("--params", nargs="+", type=Path, metavar="YAML", help="the layers, in order")
    p.add_argument("--dataset", default="synthetic", help="layers base + datasets/<dataset>.yaml (default synthetic)")
    p.add_argument("--variant", default="fian", help="+ variants/<variant>.yaml (default fian; '' for none)")
    p.add_argument("--overrides", default="params.yaml", help="the overrides layer, last (default params.yaml if present)")
    args = p.parse_args(argv)
    files = _files(args)
    over = args.overrides if args.overrides and Path(args.overrides).is_file() else None
    extra = [(over, read_overrides(over))] if over else []
    cfg = load_config(*files, extra=extra)  # the layers must be valid; names the file and key otherwise
    files_shown = [*files, over] if over else files
    if args.action == "overridden":
        rows = overridden(files, overrides=over)
        for key, loser, winner in rows:
            print(f"{key}: {loser} is overridden by {winner}")
        if not rows:
            print("no key is set in more than one layer")
        return 0
    if not args.key:
        raise ConfigError("fian params explain: name a KEY, e.g. train.lr")
    rows = explain(args.key, files, overrides=over)
    default: Any = cfg.to_dict()
    for part in args.key.split("."):
        if not isinstance(default, dict) or part not in default:
            raise ConfigError(f"{args.key}: no such key (sections: {', '.join(cfg.to_dict())})")
        default = default[part]
    width = max((len(r[0]) for r in rows), default=0)
    for where, value, wins in rows:
        print(f"{where:<{width}}  {value!r}{'   <- wins' if wins else '   (overridden)'}")
    effective = [r for r in rows if r[2]]
    section, _, leaf = args.key.partition(".")
    if section == "eval" and leaf in EVAL_PROTOCOLS.get(cfg.eval.protocol, {}):
        print(f"eval.protocol = {cfg.eval.protocol!r} sets {args.key} = {default!r} in the layer that names it, over "
              "the layers before it (fian/config.py EVAL_PROTOCOLS)")  # fmt: skip
    if not effective:
        print(f"{args.key}: set by no layer of {' < '.join(files_shown)}; the code default applies: {default!r}")
    else:
        print(f"effective ({' < '.join(files_shown)}): {args.key} = {default!r}")
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(main))
