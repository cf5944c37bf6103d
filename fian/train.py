"""The training loop: Adam (Section 4.3), AMP, DDP, atomic checkpoints, exact resume.

One epoch:

1. every rank draws the same permutation of the training split from a generator seeded with
   ``seed`` and ``epoch`` (so a resumed run draws the same order) and cuts it into global batches
   of ``train.batch_size``; each rank keeps its shard (:func:`fian.distributed.shard_epoch`);
2. each batch is gathered from the preloaded split by tensor indexing on the device
   (``GroundingSplit.subset(order).batches(...)``, no per-item Python); the model
   runs under bf16 autocast on CUDA (``train.amp``), the loss in fp32; gradients are clipped to
   ``train.grad_clip`` and Adam (fused on CUDA) steps;
3. loss sums stay on the device; the host reads them every ``train.sync_every`` steps (progress
   bar, non-finite check) and once at the end of the epoch, so the step itself never waits;
4. validation (:func:`fian.evaluate.evaluate`), one summary line, a checkpoint (rank 0, atomic)
   and ``on_epoch(record)``.

The best epoch on validation by ``R@1,IoU=0.5`` (:data:`fian.evaluate.PRIMARY_METRIC`, ties
broken by mIoU) is kept; without a validation split the last epoch is the best.  At the end the model holds the best
weights.  A non-finite loss raises :class:`NonFiniteLossError` naming the epoch, step, loss term,
split rows and video ids of the batch that produced it.

Checkpoint (``torch.save`` dict, see :func:`save_checkpoint`): ``config`` (the resolved
``Config.to_dict()``), ``model`` (last weights), ``best_model``, ``optimizer``, ``epoch`` (epochs
done), ``rng`` (python / numpy / torch / cuda states), ``best_metric``, ``best_epoch``,
``history``.  Only tensors and plain types (format 2): :func:`load_checkpoint` reads it with
``torch.load(weights_only=True)`` and refuses, naming the file, one that carries pickled objects.
``load_checkpoint`` + ``fian.config.config_from_dict`` rebuild the model.
"""

from __future__ import annotations

import logging
import math
import pickle
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fian.distributed import DistInfo, reduce_mean, reduce_sum, shard_epoch
from fian.evaluate import PRIMARY_METRIC, autocast_ctx, predict_and_score
from fian.io import atomic_path
from fian.losses import seconds_to_steps

if TYPE_CHECKING:
    from fian.config import Config, EvalConfig, TrainConfig
    from fian.data.dataset import GroundingSplit

log = logging.getLogger("fian.train")

CHECKPOINT_FORMAT = 2  # 2: weights_only-safe (RNG states as tensors and plain types); 1: pickled numpy/python states
TERMS = ("loss", "align", "boundary")  # the loss terms summed per epoch (FIANLoss keys)


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or inf; the message names the batch that caused it."""


# ---------------------------------------------------------------------------------------------
# Seeds and RNG state
# ---------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The python / numpy / torch (/ cuda) RNG states as tensors and plain types (``weights_only``-safe).

    ``random.getstate()`` is ``(version, 625 ints, gauss_next)``; numpy's legacy state is
    ``("MT19937", uint32[624], pos, has_gauss, cached_gaussian)``: both become dicts of a
    ``torch.int64`` tensor and plain numbers; :func:`set_rng_state` turns them back.
    """
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": None if gauss_next is None else float(gauss_next)},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }  # fmt: skip
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states :func:`rng_state` returned (as stored in a checkpoint)."""
    py, npy = state["python"], state["numpy"]
    random.setstate((int(py["version"]), tuple(int(x) for x in py["state"].tolist()), py["gauss_next"]))
    keys = npy["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, int(npy["pos"]), int(npy["has_gauss"]), float(npy["cached_gaussian"])))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of epoch ``epoch`` (same on every rank and after a resume)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


class UnsafeCheckpointError(ValueError):
    """A checkpoint holds pickled Python objects (it could run code when loaded): refused, not loaded."""


_PLAIN = (bool, int, float, str, type(None), torch.Tensor)


def _plain(obj: Any) -> Any:
    """numpy scalars (metrics) -> Python numbers; containers walked; everything else as is."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_plain(v) for v in obj)
    return obj.item() if isinstance(obj, np.generic) else obj


def _check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise ``TypeError`` naming the first value that ``torch.load(weights_only=True)`` would refuse."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str | int):
                raise TypeError(f"{where}: key {k!r} is a {type(k).__name__}, not str or int")
            _check_plain(v, f"{where}.{k}")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
    elif type(obj) not in _PLAIN and not isinstance(obj, torch.Tensor):
        raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__name__}: a checkpoint holds "
                        "only tensors and plain types (dict, list, tuple, str, int, float, bool, None)")  # fmt: skip


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temp file beside ``path``, then rename.

    ``state`` must hold only tensors and plain types (checked first: a ``TypeError`` names the
    offending entry), so that :func:`load_checkpoint` reads it with ``weights_only=True``.
    """
    payload = _plain({"format": CHECKPOINT_FORMAT, **state})
    _check_plain(payload)
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(payload, tmp)


def _unsafe_globals(path: Path, error: Exception) -> list[str] | None:
    """The Python globals a refused file would import (read from its opcodes, nothing run), or
    None when torch refused it for another reason (garbage, truncation)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - a legacy (non-zip) or broken file: fall back to torch's message
        names = []
    if names:
        return list(names)
    lines = [ln.strip() for ln in str(error).splitlines() if "global" in ln.lower() and "unsupported" in ln.lower()]
    return [lines[0][:200]] if lines else None


def _refusal(path: Path, names: list[str]) -> UnsafeCheckpointError:
    hint = ""
    if all(n.startswith("numpy.") for n in names):
        hint = (" It looks like a checkpoint of an older fian (format 1, numpy RNG state), which"
                " this version no longer loads: retrain.")  # fmt: skip
    return UnsafeCheckpointError(
        f"{path}: refused to load: the file holds pickled Python objects ({', '.join(names[:8])}), and "
        f"unpickling them could run code from the file. A fian checkpoint (format {CHECKPOINT_FORMAT}) holds "
        f"only tensors and plain types and is read with torch.load(weights_only=True).{hint} Do not unpickle "
        "it unless you trust where it came from."
    )


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``.

    A missing file raises ``FileNotFoundError``; a file with pickled objects
    :class:`UnsafeCheckpointError` (nothing of it is executed); a truncated or foreign file, or
    another checkpoint format, ``ValueError``; all name the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refused it; never retried unsafely
        names = _unsafe_globals(path, e)
        if names is not None:
            raise _refusal(path, names) from None
        reason = next((ln.strip() for ln in str(e).splitlines() if ln.strip().startswith("Unsupported")), "")
        raise ValueError(f"{path}: not a readable checkpoint (UnpicklingError: {reason or 'not a torch file'})") from None
    except Exception as e:  # truncated or not a torch file
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or "format" not in ckpt:
        raise ValueError(f"{path}: not a fian checkpoint (no 'format' key; format {CHECKPOINT_FORMAT} expected)")
    if ckpt["format"] != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path}: fian checkpoint format {ckpt['format']!r}, this version reads format {CHECKPOINT_FORMAT} "
            "only: retrain"
        )
    missing = [k for k in ("config", "model", "best_model", "epoch") if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {missing}")
    check_finite_weights(ckpt, path)
    return ckpt


def check_finite_weights(ckpt: dict[str, Any], path: str | Path) -> None:
    """Raise ``ValueError`` naming the file and the first tensor of ``model`` / ``best_model`` that
    holds NaN or inf: such weights make every score NaN, and evaluation would write all-zero metrics
    (a NaN never beats a threshold) and prediction an empty list, both with exit 0."""
    for part in ("best_model", "model"):
        state = ckpt[part]
        if not isinstance(state, dict):
            raise ValueError(f"{path}: {part} is a {type(state).__name__}, not a state dict")
        for name, t in state.items():
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad = ~torch.isfinite(t)
                kinds = sorted({"nan" if v != v else ("inf" if v > 0 else "-inf") for v in t[bad][:1000].tolist()})
                raise ValueError(f"{path}: {part} tensor {name!r} {list(t.shape)} holds {int(bad.sum())} non-finite "
                                 f"value(s) ({', '.join(kinds)}): the checkpoint is corrupt or its training diverged; "
                                 "refusing to evaluate or predict with it (retrain, or resume from an earlier state)")


def build_model_from_checkpoint(
    ckpt: dict[str, Any],
    embeddings: torch.Tensor | None = None,
    vocab_size: int | None = None,
    *,
    best: bool = True,
    check_inputs: bool = True,
) -> tuple[torch.nn.Module, Config]:
    """Rebuild the model a checkpoint was trained with (its stored config) and load its weights.

    ``best``: the best-on-validation weights (default) or the last epoch's.  ``embeddings`` /
    ``vocab_size`` as for :func:`fian.model.build.build_model` (the weights overwrite them).
    """
    from fian.config import config_from_dict
    from fian.model.build import build_model

    if ckpt.get("config") is None:
        raise ValueError("checkpoint carries no config: cannot rebuild its model")
    cfg = config_from_dict(ckpt["config"], where="checkpoint config")
    model = build_model(cfg, embeddings, vocab_size, check_inputs=check_inputs)
    model.load_state_dict(ckpt["best_model" if best else "model"])
    return model, cfg


def _config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def build_optimizer(model: torch.nn.Module, train_cfg: TrainConfig, device: torch.device) -> torch.optim.Adam:
    """Adam over the trainable parameters (Section 4.3); fused on CUDA when ``train.fused_optimizer``."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = device.type == "cuda" and train_cfg.fused_optimizer
    return torch.optim.Adam(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay, fused=fused or None)


def _describe_batch(split: GroundingSplit, rows: torch.Tensor, limit: int = 20) -> str:
    rows_l = rows.tolist()
    vids = split.records["video_id"].iloc[rows_l[:limit]].astype(str).tolist()
    more = f" (+{len(rows_l) - limit} more)" if len(rows_l) > limit else ""
    return f"split rows {rows_l[:limit]}{more}, video ids {vids}{more}"


def _nonfinite_terms(values: torch.Tensor) -> list[str]:
    return [t for t, v in zip(TERMS, values.tolist(), strict=True) if not math.isfinite(v)]


def fit(
    model: torch.nn.Module,
    loss_fn: torch.nn.Module,
    train: GroundingSplit,
    val: GroundingSplit | None,
    *,
    train_cfg: TrainConfig,
    eval_cfg: EvalConfig,
    num_steps: int,
    checkpoint: str | Path | None,
    resume: bool = False,
    resume_from: str | Path | dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    config: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    dist_info: DistInfo | None = None,
    progress: bool = True,
    offset_unit: str | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` for ``train_cfg.epochs`` epochs; return the history (one dict per epoch).

    ``checkpoint``: where to write after every epoch (rank 0; None: nowhere).  ``resume``: start
    from it when it exists.  ``resume_from``: start from this checkpoint instead (a path or a
    :func:`load_checkpoint` dict; :mod:`fian.resume` chooses it).  A resumed checkpoint's ``config``
    must equal ``config`` except ``train.epochs`` (raising it continues a finished run), and it must
    not hold more epochs than ``train.epochs``.  ``extra``: plain entries stored in every checkpoint
    beside the training state (e.g. :data:`fian.resume.META`).  ``config``: the resolved
    ``Config.to_dict()`` stored in the checkpoint.  ``device``: default CUDA when available.
    ``dist_info``: this rank under DDP (the process group must be initialised), default one
    process.  ``on_epoch(record)`` runs on rank 0 after each epoch's checkpoint.  ``offset_unit``
    (for decoding on validation): default ``loss_fn.offset_unit``.
    """
    info = dist_info or DistInfo()
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    main = info.is_main
    offset_unit = offset_unit or getattr(loss_fn, "offset_unit", "steps")
    seed_everything(train_cfg.seed + info.rank)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    model.to(device)
    train = train.to(device)  # the whole split preloaded; batches are gathered on the device
    val = val.to(device) if val is not None else None
    optimizer = build_optimizer(model, train_cfg, device)

    history: list[dict[str, Any]] = []
    start_epoch, best_epoch = 0, 0
    best_metric: tuple[float, float] = (-math.inf, -math.inf)
    best_state: dict[str, torch.Tensor] | None = None
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    if resume_from is None and resume and ckpt_path is not None and ckpt_path.exists():
        resume_from = ckpt_path
    if resume_from is not None:
        ckpt = resume_from if isinstance(resume_from, dict) else load_checkpoint(resume_from, map_location=device)
        where = resume_from if not isinstance(resume_from, dict) else "checkpoint"
        if config is not None:
            diff = [d for d in _config_diff(ckpt["config"], config) if not d.startswith("train.epochs:")]
            if diff:
                raise ValueError(f"{where}: cannot resume, the config changed: {'; '.join(diff[:10])}")
        if int(ckpt["epoch"]) > train_cfg.epochs:
            raise ValueError(f"{where}: cannot resume, it holds {ckpt['epoch']} epochs but train.epochs={train_cfg.epochs}")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        start_epoch, history = int(ckpt["epoch"]), list(ckpt["history"])
        best_metric, best_epoch = tuple(ckpt["best_metric"]), int(ckpt["best_epoch"])
        best_state = {k: v.to(device) for k, v in ckpt["best_model"].items()}
        if main:
            log.info("resumed from %s after epoch %d (best epoch %d)", where, start_epoch, best_epoch)
    elif resume and main:
        log.info("no checkpoint at %s: starting from epoch 0", ckpt_path)

    step_model: torch.nn.Module = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        step_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if train_cfg.compile:
        step_model = torch.compile(step_model)

    for epoch in range(start_epoch, train_cfg.epochs):
        t0 = time.perf_counter()
        sums = _train_epoch(
            step_model, loss_fn, optimizer, train, model=model, train_cfg=train_cfg, num_steps=num_steps,
            epoch=epoch, device=device, info=info, progress=progress and main,
        )  # fmt: skip
        sums = reduce_sum(sums, info).tolist()  # one host sync per epoch
        n = max(sums[-1], 1.0)
        record: dict[str, Any] = {"epoch": epoch + 1, **{t: sums[i] / n for i, t in enumerate(TERMS)}}
        record["lr"] = optimizer.param_groups[0]["lr"]
        if val is not None:
            metrics = _validate(
                model, val, eval_cfg=eval_cfg, num_steps=num_steps, device=device, info=info, amp=train_cfg.amp,
                offset_unit=offset_unit,
            )  # fmt: skip
            record.update({f"val/{k}": v for k, v in metrics.items()})
            score = (metrics[PRIMARY_METRIC], metrics.get("mIoU", 0.0))  # ties broken by mIoU
        else:
            score = (float(epoch + 1), 0.0)  # no validation: the last epoch is the best
        if score > best_metric:
            best_metric, best_epoch = score, epoch + 1
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        record["time_s"] = time.perf_counter() - t0
        record["best_epoch"] = best_epoch
        history.append(record)
        if main:
            log.info(_summary(record, train_cfg.epochs))
            if ckpt_path is not None:
                save_checkpoint(
                    ckpt_path,
                    {
                        "config": config,
                        "model": model.state_dict(),
                        "best_model": best_state,
                        "optimizer": optimizer.state_dict(),
                        "epoch": epoch + 1,
                        "rng": rng_state(),
                        "best_metric": best_metric,
                        "best_epoch": best_epoch,
                        "best_by": f"{PRIMARY_METRIC}, then mIoU" if val is not None else "last epoch",
                        "history": history,
                        **(extra or {}),
                    },
                )
            if on_epoch is not None:
                on_epoch(record)
    if best_state is not None:
        model.load_state_dict(best_state)
    return history


def _train_epoch(
    step_model: torch.nn.Module,
    loss_fn: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    train: GroundingSplit,
    *,
    model: torch.nn.Module,
    train_cfg: TrainConfig,
    num_steps: int,
    epoch: int,
    device: torch.device,
    info: DistInfo,
    progress: bool,
) -> torch.Tensor:
    """One pass; returns ``[loss*n, align*n, boundary*n, n]`` summed over this rank, on the device."""
    from tqdm import tqdm

    step_model.train()
    perm = epoch_permutation(len(train), train_cfg.seed, epoch)  # [Q], same on every rank
    order, local_bs, global_sizes = shard_epoch(perm, train_cfg.batch_size, info)
    n_steps = len(global_sizes)
    part = train.subset(order)  # this rank's queries in epoch order; videos shared, not copied
    sums = torch.zeros(len(TERMS) + 1, device=device, dtype=torch.float64)
    step_terms = torch.zeros(n_steps, len(TERMS), device=device)  # per-step terms, read at sync points
    params = [p for p in model.parameters() if p.requires_grad]
    # in a log file (Snakemake, SLURM) the bar refreshes every 10 s instead of filling the log
    bar = tqdm(total=n_steps, desc=f"epoch {epoch + 1}", disable=not progress, leave=False, dynamic_ncols=True,
               mininterval=0.1 if sys.stderr.isatty() else 10.0)
    checked = 0  # steps whose terms were checked for finiteness

    def rows_of(step: int) -> torch.Tensor:
        return order[step * local_bs : (step + 1) * local_bs]  # host copy: rows of train

    def check(upto: int) -> None:
        nonlocal checked
        if upto <= checked:
            return
        vals = step_terms[checked:upto].cpu()  # the host sync
        bad = (~torch.isfinite(vals)).any(dim=1).nonzero()
        if len(bad):
            s = checked + int(bad[0])
            raise NonFiniteLossError(
                f"non-finite loss at epoch {epoch + 1}, step {s + 1}/{n_steps} "
                f"(term {', '.join(_nonfinite_terms(vals[s - checked]))}): {_describe_batch(train, rows_of(s))}"
            )
        checked = upto
        bar.set_postfix(loss=f"{vals[-1, 0].item():.4f}")

    for step, batch in enumerate(part.batches(local_bs, shuffle=False)):  # gathered on the device
        with autocast_ctx(device, train_cfg.amp):
            out = step_model(batch.video, batch.video_mask, batch.words, batch.word_mask)
        gt_steps = seconds_to_steps(batch.gt, batch.duration, num_steps)  # [B, 2] seconds -> steps
        try:
            terms = loss_fn(_fp32(out), gt_steps)
        except FloatingPointError as e:
            raise NonFiniteLossError(
                f"non-finite loss at epoch {epoch + 1}, step {step + 1}/{n_steps} ({e}): "
                f"{_describe_batch(train, rows_of(step))}"
            ) from None
        n_local = len(batch)
        # DDP averages gradients over ranks: weight this shard by its share of the global batch
        weight = n_local * info.world_size / global_sizes[step]
        optimizer.zero_grad(set_to_none=True)
        (terms["loss"] * weight).backward()
        if train_cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, train_cfg.grad_clip, foreach=True)
        optimizer.step()
        detached = torch.stack([terms[t].detach().float() for t in TERMS])  # [3]
        step_terms[step] = detached
        sums[:-1] += detached.double() * n_local
        sums[-1] += n_local
        bar.update(1)
        if (step + 1) % train_cfg.sync_every == 0:
            check(step + 1)
    check(n_steps)
    bar.close()
    return sums


def _fp32(out: Any) -> Any:
    from fian.evaluate import _float_output

    return _float_output(out)


def _validate(
    model: torch.nn.Module,
    val: GroundingSplit,
    *,
    eval_cfg: EvalConfig,
    num_steps: int,
    device: torch.device,
    info: DistInfo,
    amp: str,
    offset_unit: str,
) -> dict[str, float]:
    """Metrics on ``val``: each rank scores a contiguous shard, means weighted by query count."""
    part = val
    if info.enabled:
        bounds = np.linspace(0, len(val), info.world_size + 1).round().astype(int)
        part = val.subset(torch.arange(bounds[info.rank], bounds[info.rank + 1]))
    # predict + score (eval.iou_rule / eval.nms), without the predictions table that evaluate() also builds
    *_, metrics = predict_and_score(
        model, part, eval_cfg=eval_cfg, num_steps=num_steps, device=device, amp=amp, offset_unit=offset_unit
    )
    return reduce_mean(metrics, len(part), info, device)


def _summary(r: dict[str, Any], epochs: int) -> str:
    line = f"epoch {r['epoch']:>3}/{epochs} | loss {r['loss']:.4f} align {r['align']:.4f} boundary {r['boundary']:.4f}"
    shown = [k for k in ("R@1,IoU=0.5", "R@1,IoU=0.7", "mIoU") if f"val/{k}" in r]
    if shown:
        line += " | val " + " ".join(f"{k} {100 * r[f'val/{k}']:.2f}%" for k in shown)
    return line + f" | epoch {r['time_s']:.1f} s ({'train + val' if shown else 'train'}, wall)"
