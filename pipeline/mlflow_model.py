"""The trained model as an MLflow pyfunc model: ``mlflow.pyfunc.load_model(uri).predict(df)`` and
``mlflow models serve -m <uri>`` answer what ``fian predict`` answers, within the limits of params
section ``predict`` (:mod:`fian.serve`; docs/ARCHITECTURE.md "The served model").

Input (one row per query; signature below): ``query`` (string) and exactly one of ``video_bytes``
(a video file's bytes, base64), ``features_bytes`` + ``duration`` (an ``.npy`` file of ``[n, D]``
features, base64), or, only on a server started with ``predict.path_root``, ``video`` /
``features`` (+ ``video_id``) naming a file under that folder.  Param ``top`` (default 5, at most
``predict.max_top``).  Output: one row per ranked moment, ``query_index`` (row of the input),
``rank`` (1 = best), ``start``, ``end`` (seconds) and ``score``, best first after NMS.

The train stage logs it as ``<dataset>-<variant>`` (a logged model of the train run, registered in
the model registry under that name; alias ``best``: the version whose training run has the best
validation score, :data:`BEST_ALIAS`), "from code" (``pipeline/pyfunc_model.py``, no pickled
object) with the checkpoint as its one artifact and the ``fian`` package as its code: it loads
without this checkout and needs only the third-party packages of its requirements.  Its
``model_config`` holds ``device``, ``backbone_weights`` (None) and ``predict`` (the limits), all
overridable when loading: ``load_model(uri, model_config={...})``, or for ``mlflow models serve``
the environment variable ``SERVING_MODEL_CONFIG='{"backbone_weights": "/srv/c3d.pickle"}'``.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fian.config import Config
    from fian.tracking import Tracker

log = logging.getLogger("fian.train")

OUTPUT_COLUMNS = ("query_index", "rank", "start", "end", "score")
BEST_ALIAS = "best"
# the third-party distributions the model imports (torch pinned to the training build's version)
REQUIREMENTS = ("numpy", "pandas", "h5py", "pyyaml", "av")


def model_name(cfg: Config) -> str:
    """The logged and registered name of a train run's model: ``<dataset>-<variant>``."""
    return f"{cfg.dataset.name}-{cfg.variant}"


def signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([
        ColSpec("string", "query"),
        ColSpec("string", "video_bytes", required=False),  # base64: a missing cell of a binary column breaks
        ColSpec("string", "features_bytes", required=False),  # MLflow's JSON parsing of the whole request
        ColSpec("double", "duration", required=False),
        ColSpec("string", "video", required=False),
        ColSpec("string", "features", required=False),
        ColSpec("string", "video_id", required=False),
    ])  # fmt: skip
    outputs = Schema([
        ColSpec("long", "query_index"), ColSpec("long", "rank"),
        ColSpec("double", "start"), ColSpec("double", "end"), ColSpec("double", "score"),
    ])  # fmt: skip
    return ModelSignature(inputs=inputs, outputs=outputs, params=ParamSchema([ParamSpec("top", "long", 5)]))


def input_example(cfg: Config, vocab: list[str]) -> Any:
    """One row the model answers anywhere: a query of vocabulary words and one row of zero features."""
    import numpy as np
    import pandas as pd

    words = [w for w in vocab[2:] if w.isalpha()][:4] or vocab[2:6]
    buf = io.BytesIO()
    np.save(buf, np.zeros((1, cfg.dataset.feature_dim), np.float32), allow_pickle=False)
    return pd.DataFrame({"query": [" ".join(words)], "features_bytes": [base64.b64encode(buf.getvalue()).decode()],
                         "duration": [10.0]})  # fmt: skip


def model_config(cfg: Config) -> dict[str, Any]:
    """The logged ``model_config``: every key a loader may override (MLflow drops unknown ones)."""
    return {"device": "cpu", "backbone_weights": None, "predict": dataclasses.asdict(cfg.predict)}


def log_model(checkpoint: str | Path, cfg: Config, vocab: list[str]) -> Any:
    """Log the pyfunc model of ``checkpoint`` into the active MLflow run as :func:`model_name`;
    return MLflow's ``ModelInfo`` (``model_uri``, ``model_id``)."""
    import mlflow
    import torch

    import fian

    code = Path(__file__).with_name("pyfunc_model.py")
    return mlflow.pyfunc.log_model(
        name=model_name(cfg),
        python_model=str(code),
        artifacts={"checkpoint": str(checkpoint)},
        code_paths=[str(Path(fian.__file__).parent)],  # the library travels with the model: code/fian
        signature=signature(),
        input_example=input_example(cfg, vocab),
        model_config=model_config(cfg),
        # given (no fian: it is the model's code), so that MLflow does not load the model to infer them
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", *REQUIREMENTS],
    )


def register(model_uri: str, name: str, score: tuple[float, ...] | None, uri: str) -> Any:
    """Register ``model_uri`` as a new version of ``name``; give it alias :data:`BEST_ALIAS` when its
    validation ``score`` (``best_metric`` of the checkpoint: R@1,IoU=0.5 then mIoU) beats the one of
    the version holding the alias, or no version holds it.  Returns the new ``ModelVersion``."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from fian.tracking import retry, store_lock

    client = MlflowClient(uri)
    tags = {"fian.val_score": ",".join(map(repr, score))} if score is not None else {}
    with store_lock(uri):  # one job at a time compares and moves the alias (SQLite; a server: see docs)
        mv = retry(lambda: mlflow.register_model(model_uri, name, tags=tags), "register the model")
        try:
            holder = client.get_model_version_by_alias(name, BEST_ALIAS)
        except MlflowException:  # no version holds it yet
            holder = None
        held = holder.tags.get("fian.val_score") if holder is not None else None
        held_score = tuple(float(x) for x in held.split(",")) if held else None
        if holder is None or (score is not None and (held_score is None or score > held_score)):
            retry(lambda: client.set_registered_model_alias(name, BEST_ALIAS, mv.version), "set the alias")
            log.info("MLflow model %s version %s is now @%s", name, mv.version, BEST_ALIAS)
    return mv


def package_model(checkpoint: Path, cfg: Config, vocab: list[str], split_attrs: dict, tracker: Tracker) -> str | None:
    """Train stage, after fit: make ``checkpoint`` self-contained (the predict bundle) and, when
    tracking, log it as the run's model :func:`model_name` and register it.  Returns the logged
    model's id (None when not tracking)."""
    from fian.predict import attach_bundle, make_bundle
    from fian.train import load_checkpoint

    bundle = make_bundle(cfg, vocab, split_attrs)
    attach_bundle(checkpoint, bundle)
    if not bundle["recipe"]["recomputable"]:
        log.info("%s: features cannot be recomputed from video (%s): the model accepts precomputed features only",
                 checkpoint, bundle["recipe"]["reason"])  # fmt: skip
    if not (tracker.enabled and tracker.run_id is not None):  # outside the stage's MLflow run
        return None
    info = log_model(checkpoint, cfg, vocab)
    ckpt = load_checkpoint(checkpoint)
    validated = "best_by" in ckpt and ckpt["best_by"] != "last epoch"  # fian.train: best on validation
    score = tuple(float(x) for x in ckpt["best_metric"]) if validated and "best_metric" in ckpt else None
    mv = register(info.model_uri, model_name(cfg), score, tracker.uri)
    log.info("MLflow model logged: %s (model id %s), registered as %s version %s", info.model_uri, info.model_id,
             model_name(cfg), mv.version)  # fmt: skip
    return info.model_id


def logged_model_of(train_run_id: str, uri: str) -> str | None:
    """The id of the model the train run ``train_run_id`` logged (None when it logged none, or the
    run is not in this store)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from fian.tracking import retry

    client = MlflowClient(uri)
    try:
        experiment = retry(lambda: client.get_run(train_run_id), "find the train run").info.experiment_id
    except MlflowException:
        return None
    found = retry(lambda: client.search_logged_models([experiment], f"source_run_id = '{train_run_id}'", max_results=5),
                  "find the logged model")  # fmt: skip
    return found[0].model_id if found else None
