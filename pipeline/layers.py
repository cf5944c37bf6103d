"""Which params layer gives each key its value (the layers merge key by key, later wins).

``fian.config.load_config`` merges ``base.yaml < datasets/<d>.yaml < variants/<v>.yaml`` the same
way (:func:`fian.config._merge`); this module keeps, for every leaf of the merged tree, the layer
that set it.  Both front ends track exactly these (file, key) pairs:

* Snakemake gets the merged values of the keys a stage reads as its ``params:`` (the params rerun
  trigger then reruns a job when one of those values changes; the layer files are not inputs);
* dvc.yaml lists, per stage instance, each key under the file that wins for it (a key that a later
  layer overrides is not tracked in the earlier file).

A leaf is a value that is not a mapping (a list is one leaf), or an empty mapping.

The top layer is the overrides file ``params.yaml`` (DVC's default params file, so that
``dvc exp run -S train.epochs=5`` works): it lists every key of the config at null (= not set),
so DVC can track each key there (a key missing from a params file is an error to DVC), and a key
an experiment sets wins over the three layers.  Its null keys are pruned before merging
(:func:`fian.config.unset_pruned`); dvc.yaml lists, per stage, every key it reads under
params.yaml as well as under the lower layer that wins for it (:func:`override_keys`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from fian.config import ConfigError, read_yaml, unset_pruned


@lru_cache(maxsize=256)
def _read(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    return read_yaml(path)  # cached per (path, mtime, size)


def read_layer(path: str | Path, overrides: bool = False) -> dict[str, Any]:
    """A params file's raw mapping (cached by path, mtime and size: a Snakefile asks once per job);
    ``overrides``: the overrides file, its null keys pruned (they set nothing)."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ConfigError(f"{p}: params file not found") from None
    data = _read(str(p), st.st_mtime_ns, st.st_size)
    return unset_pruned(data) if overrides else data


def _layers(files: Sequence[str | Path], root: Path, overrides: str | Path | None) -> list[dict[str, Any]]:
    datas = [read_layer(root / f) for f in files]
    if overrides is not None:
        datas.append(read_layer(root / overrides, overrides=True))
    return datas


def override_keys() -> list[str]:
    """Every key the overrides file lists (at null in git): the config's leaves, descending into
    nested sections (dataset.policy) but not into values that are mappings or lists themselves
    (dataset.splits, model.anchor_widths, text.glove: set them whole)."""
    import dataclasses
    import typing

    from fian.config import Config

    keys: list[str] = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key = f"{prefix}.{f.name}" if prefix else f.name
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                walk(tp, key)  # type: ignore[arg-type]
            elif prefix:  # Config.variant is not a params key (the variant file's name)
                keys.append(key)

    walk(Config, "")
    return keys


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


def winners(
    files: Sequence[str | Path], prefixes: Sequence[str], root: str | Path = ".", overrides: str | Path | None = None
) -> dict[str, dict[str, Any]]:
    """For the keys under ``prefixes``: {winning file (as given): {dotted key: value}}, files in order
    (``overrides``: the overrides file, last, its null keys pruned)."""
    root = Path(root)
    names = [str(f) for f in files] + ([str(overrides)] if overrides is not None else [])
    origin = resolve(_layers(files, root, overrides))
    out: dict[str, dict[str, Any]] = {n: {} for n in names}
    for key in sorted(origin):
        idx, value = origin[key]
        if _selected(key, prefixes):
            out[names[idx]][key] = value
    return {f: keys for f, keys in out.items() if keys}


def values_json(
    files: Sequence[str | Path], prefixes: Sequence[str], root: str | Path = ".", overrides: str | Path | None = None
) -> str:
    """The merged values of the keys under ``prefixes``, as canonical JSON (a Snakemake param)."""
    merged: dict[str, Any] = {}
    for keys in winners(files, prefixes, root, overrides).values():
        merged.update(keys)
    return json.dumps(merged, sort_keys=True, default=str)


def explain(
    key: str, files: Sequence[str | Path], root: str | Path = ".", overrides: str | Path | None = None
) -> list[tuple[str, Any, bool]]:
    """(file, value it sets, wins?) for each layer that sets ``key`` or a key under it."""
    root = Path(root)
    datas = _layers(files, root, overrides)
    names = [*files, *([overrides] if overrides is not None else [])]
    origin = resolve(datas)
    rows: list[tuple[str, Any, bool]] = []
    for idx, (f, data) in enumerate(zip(names, datas, strict=True)):
        sub = {k: v for k, v in _leaves(data, "").items() if k == key or k.startswith(key + ".")}
        for k, v in sorted(sub.items()):
            rows.append((f"{f}: {k}", v, origin.get(k, (None,))[0] == idx))
    return rows


def overridden(
    files: Sequence[str | Path], root: str | Path = ".", overrides: str | Path | None = None
) -> list[tuple[str, str, str]]:
    """(key, file whose value is overridden, winning file) for every key set in more than one layer."""
    root = Path(root)
    datas = _layers(files, root, overrides)
    names = [str(f) for f in [*files, *([overrides] if overrides is not None else [])]]
    origin = resolve(datas)
    out = []
    for idx, data in enumerate(datas):
        for k in sorted(_leaves(data, "")):
            if k and k in origin and origin[k][0] != idx:
                out.append((k, names[idx], names[origin[k][0]]))
    return out
