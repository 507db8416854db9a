"""MLflow pyfunc entry point, logged as code ("models from code"): no pickle in the artifact.

MLflow runs this file when it loads the model; the weights are safetensors under the artifact `model`.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from driftloop.training.artifacts import LoadedModel, load_model


class DriftloopPyfunc(PythonModel):
    """Scores a DataFrame of feature columns with a driftloop model."""

    model: LoadedModel

    def load_context(self, context) -> None:  # noqa: ANN001 - MLflow's own type
        self.model = load_model(Path(context.artifacts["model"]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:  # noqa: ANN001
        return self.model.predict(model_input)


mlflow.models.set_model(DriftloopPyfunc())
