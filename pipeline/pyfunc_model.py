"""The code of the MLflow pyfunc model (MLflow "models from code"): executed by MLflow when it loads
the model, never imported by the pipeline.  It imports MLflow and ``fian`` only: the model is logged
with the ``fian`` package as its code (``code/fian``), so it runs without this checkout.  See
:mod:`fian_pipeline.mlflow_model`; the requests and their checks: :mod:`fian.serve`.

Errors (MLflow's scoring server answers a model's ``MlflowException`` with its JSON and the HTTP
status of its ``error_code``, any other exception with a 400 carrying the traceback): a bad request
(:class:`fian.serve.RequestError`) is ``INVALID_PARAMETER_VALUE`` -> 400 with the row and the
problem; anything else is logged here with its traceback and answered ``INTERNAL_ERROR`` -> 500
"internal error", with nothing of the server in it.
"""

import logging
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import set_model

log = logging.getLogger("fian.serve")


class ServedModelError(MlflowException):
    """An error for the client.  The scoring server rewrites ``message`` of a model's exception to
    prepend a print of the whole input (``Failed to predict data '<frame>'``): the message set here is
    kept, so that the answer stays short and says only what went wrong."""

    @property
    def message(self) -> str:
        return self._fian_message

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_fian_message"):
            self._fian_message = value


class FianModel(mlflow.pyfunc.PythonModel):
    """Wraps :class:`fian.serve.ServedModel`; see the module docstring."""

    def load_context(self, context: Any) -> None:
        from fian.serve import ServedModel

        config = getattr(context, "model_config", None) or {}
        self.served = ServedModel.load(context.artifacts["checkpoint"], config)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE

        from fian.serve import RequestError

        try:
            return self.served.answer(model_input, params)
        except RequestError as e:
            raise ServedModelError(str(e), error_code=INVALID_PARAMETER_VALUE, row=e.row) from None
        except Exception:
            log.exception("the served model failed on a request")
            raise ServedModelError("internal error of the served model (logged on the server)",
                                   error_code=INTERNAL_ERROR) from None  # fmt: skip


set_model(FianModel())
