"""The code of the MLflow pyfunc model (MLflow "models from code"): executed by MLflow when it loads
the model, never imported by the pipeline.  See :mod:`fian_pipeline.mlflow_model`."""

from typing import Any

import mlflow
import pandas as pd
from mlflow.models import set_model

from fian_pipeline.mlflow_model import predict_frame


class FianModel(mlflow.pyfunc.PythonModel):
    """Wraps :class:`fian.predict.Predictor`; see the module docstring."""

    def load_context(self, context: Any) -> None:
        from fian.predict import Predictor

        config = getattr(context, "model_config", None) or {}
        self.predictor = Predictor.from_checkpoint(
            context.artifacts["checkpoint"], device=config.get("device", "cpu"),
            backbone_weights=config.get("backbone_weights"),
        )  # fmt: skip

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return predict_frame(self.predictor, model_input, top=int((params or {}).get("top", 5)))


set_model(FianModel())
