"""The trained model as an MLflow pyfunc model: ``mlflow.pyfunc.load_model(uri).predict(df)`` and
``mlflow models serve -m <uri> --env-manager local`` answer what ``fian predict`` answers.

Input (one row per query; signature below): ``query`` (string) and either ``video`` (a video file
the model can read) or ``features`` + ``video_id`` (+ ``duration``, seconds) for precomputed
features in the checkpoint's ``dataset.feature_layout``.  Param ``top`` (default 5).  Output: one
row per ranked moment, ``query_index`` (row of the input), ``rank`` (1 = best), ``start``, ``end``
(seconds) and ``score``, best first after NMS.

The model is logged "from code" (``fian_pipeline/pyfunc_model.py``: class ``FianModel``; no pickled object) with
the checkpoint as its one artifact; backbone weights of a non-random recipe are passed at load time:
``load_model(uri, model_config={"backbone_weights": "c3d.pickle"})``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from fian.config import Config
    from fian.tracking import Tracker

log = logging.getLogger("fian.train")

OUTPUT_COLUMNS = ("query_index", "rank", "start", "end", "score")


def signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([
        ColSpec("string", "query"),
        ColSpec("string", "video", required=False),
        ColSpec("string", "features", required=False),
        ColSpec("string", "video_id", required=False),
        ColSpec("double", "duration", required=False),
    ])  # fmt: skip
    outputs = Schema([
        ColSpec("long", "query_index"), ColSpec("long", "rank"),
        ColSpec("double", "start"), ColSpec("double", "end"), ColSpec("double", "score"),
    ])  # fmt: skip
    return ModelSignature(inputs=inputs, outputs=outputs, params=ParamSchema([ParamSpec("top", "long", 5)]))


def _value(row: pd.Series, key: str) -> Any:
    v = row.get(key)
    return None if v is None or (isinstance(v, float) and v != v) else v  # NaN: absent


def predict_frame(predictor: Any, frame: pd.DataFrame, *, top: int) -> pd.DataFrame:
    """The pyfunc contract over a :class:`~fian.predict.Predictor` (every row checked first)."""
    from fian.predict import PredictError

    if "query" not in frame.columns:
        raise PredictError("model input: a 'query' column is required")
    encoded = []
    for i, row in frame.reset_index(drop=True).iterrows():
        video, feats = _value(row, "video"), _value(row, "features")
        if (video is None) == (feats is None):
            raise PredictError(f"model input row {i}: give exactly one of 'video' and 'features' (+ 'video_id')")
        if video is not None:
            v = predictor.encode_video(video)
        else:
            vid = _value(row, "video_id")
            if vid is None:
                raise PredictError(f"model input row {i}: 'features' needs a 'video_id'")
            d = _value(row, "duration")
            v = predictor.load_features(feats, str(vid), duration=None if d is None else float(d))
        predictor.encode_query(str(row["query"]))  # every row checked before any answer
        encoded.append((str(row["query"]), v))
    rows = []
    for i, (q, v) in enumerate(encoded):
        for rank, m in enumerate(predictor.predict(q, v, top=top), 1):
            rows.append((i, rank, m.start, m.end, m.score))
    out = pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))
    return out.astype({"query_index": "int64", "rank": "int64", "start": "float64", "end": "float64", "score": "float64"})


def log_model(checkpoint: str | Path) -> str:
    """Log the pyfunc model of ``checkpoint`` into the active MLflow run; return its model URI."""
    import mlflow
    import torch

    from fian import __version__

    code = Path(__file__).with_name("pyfunc_model.py")
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(code),
        artifacts={"checkpoint": str(checkpoint)},
        signature=signature(),
        # given, so that MLflow does not load the model in a subprocess to infer them
        pip_requirements=[f"fian=={__version__}", f"torch=={torch.__version__.split('+')[0]}",
                          f"mlflow=={mlflow.__version__}", "av", "h5py", "pandas", "numpy"],  # fmt: skip
    )
    return info.model_uri


def package_model(checkpoint: Path, cfg: Config, vocab: list[str], split_attrs: dict, tracker: Tracker) -> None:
    """Train stage, after fit: make ``checkpoint`` self-contained (the predict bundle) and, when
    tracking, log it as the run's pyfunc model ``runs:/<run_id>/model``."""
    from fian.predict import attach_bundle, make_bundle

    bundle = make_bundle(cfg, vocab, split_attrs)
    attach_bundle(checkpoint, bundle)
    if not bundle["recipe"]["recomputable"]:
        log.info("%s: features cannot be recomputed from video (%s): the model accepts precomputed features only",
                 checkpoint, bundle["recipe"]["reason"])  # fmt: skip
    if tracker.enabled and tracker.run_id is not None:  # inside the stage's MLflow run
        uri = log_model(checkpoint)
        log.info("MLflow model logged: %s (runs:/%s/model)", uri, tracker.run_id)
