"""Which params layer gives each key its value (the layers merge key by key, later wins).

``fian.config.load_config`` merges ``base.yaml < datasets/<d>.yaml < variants/<v>.yaml`` the same
way (:func:`fian.config._merge`); this module keeps, for every leaf of the merged tree, the layer
that set it.  Both front ends track exactly these (file, key) pairs:

* Snakemake gets the merged values of the keys a stage reads as its ``params:`` (the params rerun
  trigger then reruns a job when one of those values changes; the layer files are not inputs);
* dvc.yaml lists, per stage instance, each key under the file that wins for it (a key that a later
  layer overrides is not tracked in the earlier file).

A leaf is a value that is not a mapping (a list is one leaf), or an empty mapping.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from fian.config import ConfigError, read_yaml


@lru_cache(maxsize=256)
def _read(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    return read_yaml(path)  # cached per (path, mtime, size)


def read_layer(path: str | Path) -> dict[str, Any]:
    """A params file's raw mapping (cached by path, mtime and size: a Snakefile asks once per job)."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ConfigError(f"{p}: params file not found") from None
    return _read(str(p), st.st_mtime_ns, st.st_size)


def _leaves(data: Any, prefix: str) -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: data}


def resolve(layers: Sequence[Mapping[str, Any]]) -> dict[str, tuple[int, Any]]:
    """Dotted leaf key -> (index of the layer that sets it, value), merging as fian.config does."""
    origin: dict[str, tuple[int, Any]] = {}

    def is_dict(key: str) -> bool:
        return any(k.startswith(key + ".") for k in origin)

    def put(idx: int, key: str, value: Any) -> None:
        if isinstance(value, dict) and (is_dict(key) or not key):
            for k, v in value.items():
                put(idx, f"{key}.{k}" if key else str(k), v)
            return
        for k in [k for k in origin if k == key or k.startswith(key + ".")]:
            del origin[k]  # a later non-mapping (or a mapping over a non-mapping) replaces the subtree
        for k, v in _leaves(value, key).items():
            origin[k] = (idx, v)

    for idx, data in enumerate(layers):
        put(idx, "", dict(data))
    return origin


def _selected(key: str, prefixes: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def winners(files: Sequence[str | Path], prefixes: Sequence[str], root: str | Path = ".") -> dict[str, dict[str, Any]]:
    """For the keys under ``prefixes``: {winning file (as given): {dotted key: value}}, files in order."""
    root = Path(root)
    origin = resolve([read_layer(root / f) for f in files])
    out: dict[str, dict[str, Any]] = {str(f): {} for f in files}
    for key in sorted(origin):
        idx, value = origin[key]
        if _selected(key, prefixes):
            out[str(files[idx])][key] = value
    return {f: keys for f, keys in out.items() if keys}


def values_json(files: Sequence[str | Path], prefixes: Sequence[str], root: str | Path = ".") -> str:
    """The merged values of the keys under ``prefixes``, as canonical JSON (a Snakemake param)."""
    merged: dict[str, Any] = {}
    for keys in winners(files, prefixes, root).values():
        merged.update(keys)
    return json.dumps(merged, sort_keys=True, default=str)


def explain(key: str, files: Sequence[str | Path], root: str | Path = ".") -> list[tuple[str, Any, bool]]:
    """(file, value it sets, wins?) for each layer that sets ``key`` or a key under it."""
    root = Path(root)
    origin = resolve([read_layer(root / f) for f in files])
    rows: list[tuple[str, Any, bool]] = []
    for idx, f in enumerate(files):
        sub = {k: v for k, v in _leaves(read_layer(root / f), "").items() if k == key or k.startswith(key + ".")}
        for k, v in sorted(sub.items()):
            rows.append((f"{f}: {k}", v, origin.get(k, (None,))[0] == idx))
    return rows


def overridden(files: Sequence[str | Path], root: str | Path = ".") -> list[tuple[str, str, str]]:
    """(key, file whose value is overridden, winning file) for every key set in more than one layer."""
    root = Path(root)
    datas = [read_layer(root / f) for f in files]
    origin = resolve(datas)
    out = []
    for idx, data in enumerate(datas):
        for k in sorted(_leaves(data, "")):
            if k and k in origin and origin[k][0] != idx:
                out.append((k, str(files[idx]), str(files[origin[k][0]])))
    return out
