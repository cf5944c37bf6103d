"""Stage ``train``: fit FIAN on a prepared dataset, keep the best epoch on validation.

    python -m fian_pipeline.train --params params/base.yaml params/datasets/<d>.yaml params/variants/<v>.yaml \
        --data data/processed/<d> --text data/interim/<d>/text --out results/<d>/<v> \
        [--state state/train/<d>/<v>] [--restart | --resume] [--seed N]

Several GPUs: ``torchrun --nproc_per_node N -m fian_pipeline.train ...`` (DDP; the global batch stays
``train.batch_size``; only rank 0 writes files and logs to MLflow).

Reads ``<data>/train.h5`` and ``<data>/val.h5`` (when the dataset has a ``val`` split, or for a
dataset without a split list, when the file exists); writes ``checkpoint.pt`` (after every epoch,
atomically), ``history.csv`` (one row per epoch), ``train_metrics.json`` (the best epoch's
validation metrics as fractions: numbers only, for DVC) and ``train_info.json`` (unit, best_by,
the evaluation protocol, and ``provenance``: seed, MLflow run, commit, device, batch, input hashes
and sources; pipeline/provenance.py).

``--seed N`` (a workflow config with ``seeds:``, one job per seed) replaces params' ``train.seed``
for this run: the initial weights, the batch order and the run key follow it, and the MLflow run
is named and tagged with it (docs/PIPELINE.md "Seeds and intervals").

Resuming (docs/TRAINING.md "Resume"): with ``--state`` (the workflow passes it) the state after
every epoch goes to ``<state>/<run key>.pt`` (:mod:`fian.resume`), which neither Snakemake nor DVC
deletes; a rerun of the same command continues from the last completed epoch of the same run
key, and ``checkpoint.pt`` is written when training ends.  ``--restart`` starts afresh.  Without
``--state``, ``--resume`` continues from ``<out>/checkpoint.pt`` and an existing checkpoint is
never overwritten silently (``--restart`` to replace it).  Each attempt is its own MLflow run:
a resumed one is tagged ``fian.resumed_from`` and holds all epochs' metrics (the earlier ones
replayed from the checkpoint); a predecessor left RUNNING by a killed process is marked KILLED.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import yaml

from fian.config import Config
from fian.io import atomic_path, write_json
from fian_pipeline.common import (
    StageError,
    applied_overrides,
    eta_seconds,
    interrupt_on_signal,
    load,
    override_tags,
    parser,
    print_epoch,
    run_stage,
    seed_arg,
    warn_loud,
    with_seed,
)

log = logging.getLogger("fian.train")


def main(argv: Sequence[str] | None = None) -> int:
    p: argparse.ArgumentParser = parser("train", __doc__)
    p.add_argument("--data", type=Path, required=True, help="folder of the prepared splits (<split>.h5)")
    p.add_argument("--text", type=Path, required=True, help="folder of vocab.json and embeddings.npy")
    p.add_argument("--out", type=Path, required=True, help="output folder (checkpoint.pt, history.csv, train_metrics.json)")
    p.add_argument("--state", type=Path, default=None,
                   help="folder of the resumable training state (not an output; the workflow passes "
                        "state/train/<dataset>/<variant>): a rerun continues the same run from its last epoch")  # fmt: skip
    how = p.add_mutually_exclusive_group()
    how.add_argument("--resume", action="store_true", help="without --state: continue from <out>/checkpoint.pt if it exists")
    how.add_argument("--restart", action="store_true", help="start afresh: delete this run's state, replace the checkpoint")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    p.add_argument("--seed", type=seed_arg, default=None,
                   help="train.seed of this run, over the params' value (the workflow's per-seed jobs)")  # fmt: skip
    args = p.parse_args(argv)
    cfg = with_seed(load(args), args.seed)
    overrides = applied_overrides(args)  # params.yaml's set keys and --set: recorded in MLflow and the checkpoint

    from fian.data.dataset import GroundingSplit, load_embeddings
    from fian.distributed import init_from_env, shutdown
    from fian.evaluate import protocol_info
    from fian.losses import build_loss, training_moments
    from fian.model.build import build_model
    from fian.tracking import build_tracker, data_hashes
    from fian.train import NonFiniteLossError, fit, seed_everything

    # a cancelled job (Snakemake, SLURM, torchrun send SIGTERM) unwinds: the MLflow run ends KILLED
    previous = signal.signal(signal.SIGTERM, interrupt_on_signal)
    info, device = init_from_env(args.device)
    try:
        train_path = args.data / "train.h5"
        val_path = args.data / "val.h5"
        has_val = "val" in cfg.dataset.splits if cfg.dataset.splits else val_path.exists()
        train = GroundingSplit.load(train_path)
        val = GroundingSplit.load(val_path) if has_val else None
        if val is None and info.is_main:
            log.warning("%s has no validation split: the last epoch is kept as the best", cfg.dataset.name)
        for name, split in (("train", train), ("val", val)):
            if split is not None and split.num_steps != cfg.features.num_steps:
                raise StageError(
                    f"{args.data / (name + '.h5')}: num_steps={split.num_steps} but features.num_steps={cfg.features.num_steps}"
                )
            if split is not None and split.feature_dim != cfg.dataset.feature_dim:
                raise StageError(
                    f"{args.data / (name + '.h5')}: feature_dim={split.feature_dim} but dataset.feature_dim={cfg.dataset.feature_dim}"
                )
        embeddings, vocab = load_embeddings(args.text)
        if train.attrs.get("random_weights") and info.is_main:
            warn_loud(f"{train_path}: features come from a RANDOMLY initialised backbone (offline fallback)")

        # The data were validated when the split was loaded; the per-forward checks and the loss's
        # per-step finiteness check each sync host and device on CUDA (fit checks every sync_every steps).
        seed_everything(cfg.train.seed)  # the initial weights are part of the seeded run
        model = build_model(cfg, embeddings, check_inputs=device.type != "cuda")
        loss_fn = build_loss(cfg, training_moments(train))  # TGN's weights come from the train split
        loss_fn.check_finite = device.type != "cuda"

        inputs = [train_path, *([val_path] if val is not None else []), args.text / "embeddings.npy", args.text / "vocab.json"]
        ckpt_path = args.out / "checkpoint.pt"
        hashes = data_hashes(inputs) if info.is_main else {}  # run key, MLflow tags, provenance
        with contextlib.ExitStack() as stack:
            # -- where to start: the run's state (--state), <out>/checkpoint.pt (--resume) or afresh
            state, start = _start_point(args, cfg, hashes, ckpt_path, info, stack)
            prev = (start[1].get(TRACKING) or {}) if start is not None else {}
            attempt = int((start[1].get(META) or {}).get("attempt", 0)) + 1 if start is not None else 1
            link = {"fian.attempt": str(attempt)}
            link.update(override_tags(args))
            if state is not None:
                link.update({"fian.state_key": state.key, "fian.state_dir": str(state.folder.resolve())})
            if start is not None:
                link["fian.resumed_at_epoch"] = str(int(start[1]["epoch"]))
                if prev.get("run_id"):
                    link["fian.resumed_from"] = str(prev["run_id"])

            tracker = build_tracker(cfg, stage="train", hashes=hashes, active=info.is_main, out=args.out,
                                    seed=args.seed,
                                    tags={"world_size": str(info.world_size), "device": str(device), **link})  # fmt: skip
            with tracker:
                tracker.log_params(cfg.flat())
                _log_inputs(tracker, cfg.dataset.name, {"train": (train_path, train), "val": (val_path, val)}, hashes)
                for record in start[1]["history"] if start is not None else ():
                    tracker.log_metrics(_epoch_metrics(record), step=record["epoch"])  # this run: epochs 1..E

                timed: list[float] = []  # wall seconds of the epochs this process ran (not the resumed ones)

                def on_epoch(record: dict) -> None:
                    tracker.log_metrics(_epoch_metrics(record), step=record["epoch"])
                    timed.append(float(record["time_s"]))
                    eta = eta_seconds(timed, cfg.train.epochs - int(record["epoch"]))
                    print_epoch(cfg, record, eta_s=eta, seed=args.seed)  # one console line per epoch (the bar goes to the log)

                extra = {META: {"key": state.key if state else None, "attempt": attempt},
                         TRACKING: {"run_id": tracker.run_id, "experiment": tracker.experiment if tracker.run_id else None},
                         OVERRIDES: overrides}  # fmt: skip
                try:
                    history = fit(
                        model, loss_fn, train, val,
                        train_cfg=cfg.train, eval_cfg=cfg.eval, num_steps=cfg.features.num_steps,
                        checkpoint=state.live if state is not None else ckpt_path,
                        resume_from=start[1] if start is not None else None, extra=extra,
                        on_epoch=on_epoch, config=stored_config(cfg), device=device, dist_info=info,
                    )  # fmt: skip
                except NonFiniteLossError as e:
                    raise StageError(f"{train_path}: {e}") from e
                if info.is_main:
                    if state is not None:  # the output checkpoint: the state that holds the last epoch
                        trained = len(history) > (int(start[1]["epoch"]) if start is not None else 0)
                        source = state.live if trained or start is None else start[0]
                        if Path(source).resolve() != ckpt_path.resolve():
                            with atomic_path(ckpt_path) as tmp:
                                shutil.copyfile(source, tmp)
                    from fian_pipeline.mlflow_model import (
                        package_model,  # predict bundle + MLflow pyfunc model
                    )

                    model_id = package_model(ckpt_path, cfg, vocab, train.attrs, tracker)
                    from fian_pipeline.provenance import (
                        device_info,
                        git_state,
                        mlflow_ref,
                        sources,
                        strip_prefix,
                    )

                    provenance = {
                        "seed": cfg.train.seed, "mlflow": mlflow_ref(tracker), **git_state(),
                        "device": device_info(device, info.world_size),
                        "batch_size": {"effective": cfg.train.batch_size,
                                       "per_device": cfg.train.batch_size // info.world_size},
                        "inputs_sha256": strip_prefix(hashes), **sources(cfg, args.text, train.attrs),
                        "run_key": state.key if state is not None else None,
                    }  # fmt: skip
                    summary = write_outputs(args.out, history, has_val=val is not None, vocab_size=len(vocab),
                                            protocol=protocol_info(cfg.eval), provenance=provenance)  # fmt: skip
                    tracker.log_metrics({f"best/{k}": v for k, v in summary.items() if isinstance(v, float)},
                                        model_id=model_id)  # fmt: skip
                    with tempfile.TemporaryDirectory() as tmp:
                        cfg_file = Path(tmp) / "config.yaml"
                        cfg_file.write_text(yaml.safe_dump(_plain(stored_config(cfg)), sort_keys=False))
                        tracker.log_artifact(cfg_file)
                    # not checkpoint.pt: the logged model (package_model) holds it already, as its
                    # artifact "checkpoint"; a second copy in the run cost one more checkpoint write
                    # per job (~200 MB at the paper's sizes)
                    for name in ("history.csv", "train_metrics.json"):
                        tracker.log_artifact(args.out / name)
    finally:
        shutdown()
        signal.signal(signal.SIGTERM, previous)
    return 0


META, TRACKING = "resume", "tracking"  # checkpoint entries: {"key", "attempt"}, {"run_id", "experiment"}
OVERRIDES = "overrides"  # checkpoint entry: {dotted key: value} of params.yaml's set keys and --set


def _epoch_metrics(record: dict) -> dict:
    """What MLflow gets for one epoch of the history (step = the epoch)."""
    return {k: v for k, v in record.items() if k != "epoch"}


def _start_point(args, cfg, hashes: dict, ckpt_path: Path, info, stack: contextlib.ExitStack):  # noqa: ANN001, ANN202
    """``(state, start)``: the locked :class:`fian.resume.TrainState` (None without ``--state``) and
    the checkpoint to resume from, ``(path, loaded dict)``, or None for a fresh start."""
    from fian.distributed import broadcast_object
    from fian.resume import TrainState, code_version, key_material, run_key
    from fian.train import load_checkpoint

    if args.state is None:
        if ckpt_path.exists() and not (args.resume or args.restart):
            raise StageError(f"{ckpt_path} exists: pass --resume to continue it or --restart to replace it "
                             "(or --state to resume by run key)")  # fmt: skip
        return None, ((ckpt_path, load_checkpoint(ckpt_path)) if args.resume and ckpt_path.exists() else None)
    hashes = broadcast_object(hashes, info)  # rank 0 hashed the inputs
    key = run_key(cfg.to_dict(), hashes, code_version())
    state = TrainState(args.state, key)
    chosen: object = None
    if info.is_main:
        try:
            stack.enter_context(state)  # the lock: held until the stage ends
            start = state.prepare(cfg.train.epochs, also=[ckpt_path], restart=args.restart,
                                  describe={"key": key, **key_material(cfg.to_dict(), hashes, code_version())})  # fmt: skip
            chosen = ("ok", str(start[0]) if start else None)
        except Exception as e:  # noqa: BLE001 - the other ranks must not wait for rank 0 for ever
            broadcast_object(("error", f"{type(e).__name__}: {e}"), info)
            raise
    chosen = broadcast_object(chosen, info)
    if not info.is_main:
        if chosen[0] == "error":
            raise StageError(f"rank 0 failed to prepare the training state: {chosen[1]}")
        start = (Path(chosen[1]), load_checkpoint(chosen[1])) if chosen[1] else None
    return state, start


def _log_inputs(tracker, dataset: str, splits: dict, hashes: dict) -> None:  # noqa: ANN001
    """The splits as MLflow datasets, with their annotation and feature hashes (``hashes``: the
    files' sha256 of :func:`fian.tracking.data_hashes`, not computed again)."""
    from fian.tracking import split_digests

    if tracker.run_id is None:
        return
    for name, (path, split) in splits.items():
        if split is not None:
            tracker.log_dataset(f"{dataset}/{name}", path, context="training" if name == "train" else "validation",
                                digests=split_digests(split.records, split.video),
                                sha256=hashes.get(f"data_sha256.{Path(path).name}"))  # fmt: skip


def write_outputs(out: Path, history: list[dict], *, has_val: bool, vocab_size: int, protocol: dict[str, str],
                  provenance: dict | None = None) -> dict:  # fmt: skip
    """``history.csv`` and ``train_metrics.json`` (best epoch; fractions) from the fit history;
    ``train_info.json``: the text (best_by, unit, protocol) and ``provenance`` (where the run came from)."""
    if not history:
        raise StageError(f"{out}: no epoch was trained (train.epochs is 0?)")
    frame = pd.DataFrame(history)
    with atomic_path(out / "history.csv") as tmp:
        frame.to_csv(tmp, index=False)
    best_epoch = int(history[-1]["best_epoch"])
    best = next(r for r in history if r["epoch"] == best_epoch)
    summary = {
        **{k: float(v) for k, v in best.items() if k.startswith("val/")},
        "best_epoch": best_epoch,
        "best_by": "val/R@1,IoU=0.5, ties by val/mIoU" if has_val else "last epoch (no validation split)",
        "epochs": int(history[-1]["epoch"]),
        "final_loss": float(history[-1]["loss"]),
        "vocab_size": vocab_size,
        "unit": "fraction",
    }
    numbers = {k: v for k, v in summary.items() if isinstance(v, int | float)}  # DVC: a metrics file holds numbers
    write_json(out / "train_metrics.json", numbers)
    text = {k: v for k, v in summary.items() if k not in numbers}
    # wall-clock figures differ on every run: in the info file, not among DVC's metrics (dvc metrics diff)
    train_time = float(sum(r["time_s"] for r in history))
    extra = {"provenance": provenance} if provenance is not None else {}
    write_json(out / "train_info.json", {**text, "train_time_s": train_time, "protocol": protocol, **extra})
    return {**summary, "train_time_s": train_time}


def stored_config(cfg: Config) -> dict:
    """``cfg.to_dict()`` as the checkpoint and the run's config.yaml artifact keep it: a password in
    ``tracking.tracking_uri`` redacted (both are logged to the tracking server; the model does not
    depend on the key)."""
    from fian.tracking import redact

    d = cfg.to_dict()
    d["tracking"]["tracking_uri"] = redact(d["tracking"]["tracking_uri"])
    return d


def _plain(obj: object) -> object:
    """Tuples -> lists so that yaml.safe_dump writes plain YAML."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


if __name__ == "__main__":
    sys.exit(run_stage(main))
