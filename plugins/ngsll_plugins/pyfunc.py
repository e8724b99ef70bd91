"""The MLflow pyfunc flavour of a fine NGSLL model: predictions **and** their top-K weights.

``predict`` takes (N, 28, 28) pixels in [0, 1] (or (N, 784)) and returns one row per image with
``label, class_index, probability, logit, k, weights`` where ``weights`` is the JSON list of
``{feature, index, weight, value, contribution}`` sorted by |contribution|.
"""

from __future__ import annotations

import json
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from ngsll.checkpoint import model_from_checkpoint
from ngsll.explain import predict_explain
from ngsll.simplify import image_inputs


class NGSLLPyfunc(mlflow.pyfunc.PythonModel):
    """Loads the plain-dict checkpoint artifact and answers with explanations."""

    def load_context(self, context: Any) -> None:
        checkpoint = torch.load(context.artifacts["checkpoint"], map_location="cpu", weights_only=True)
        self.model = model_from_checkpoint(checkpoint)
        with open(context.artifacts["features"]) as handle:
            features = json.load(handle)
        self.feature_names, self.class_names = features["feature_names"], features["class_names"]
        self.cells = int(round(len(self.feature_names) ** 0.5))

    def predict(self, context, model_input, params=None):  # untyped: MLflow reads type hints as a schema
        pixels = np.asarray(model_input, dtype=np.float32)
        side = self.model.args.image_size
        pixels = pixels.reshape(len(pixels), side, side)  # (N, H, H)
        x, z = image_inputs(pixels, self.cells)
        answers = predict_explain(
            self.model, torch.from_numpy(x), torch.from_numpy(z), self.feature_names, self.class_names
        )
        return pd.DataFrame({
            "label": [a["label"] for a in answers],
            "class_index": [a["class_index"] for a in answers],
            "probability": [a["probabilities"][a["label"]] for a in answers],
            "logit": [a.get("logit", float("nan")) for a in answers],
            "k": [a["k"] for a in answers],
            "weights": [json.dumps(a["weights"]) for a in answers],
        })
