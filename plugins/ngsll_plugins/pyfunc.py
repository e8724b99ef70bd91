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
from ngsll.serving import ImageService


class NGSLLPyfunc(mlflow.pyfunc.PythonModel):
    """Loads the plain-dict checkpoint artifact and answers with explanations."""

    def load_context(self, context: Any) -> None:
        checkpoint = torch.load(context.artifacts["checkpoint"], map_location="cpu", weights_only=True)
        with open(context.artifacts["features"]) as handle:
            features = json.load(handle)
        # The same service the TorchServe handler uses, so both answer identically.
        self.service = ImageService(model_from_checkpoint(checkpoint), features["feature_names"], features["class_names"])

    def predict(self, context, model_input, params=None):  # untyped: MLflow reads type hints as a schema
        side = self.service.side
        pixels = np.asarray(model_input, dtype=np.float32).reshape(-1, side, side)  # (N, H, H)
        answers = self.service.answer(pixels)
        return pd.DataFrame({
            "label": [a["label"] for a in answers],
            "class_index": [a["class_index"] for a in answers],
            "probability": [a["probabilities"][a["label"]] for a in answers],
            "logit": [a.get("logit", float("nan")) for a in answers],
            "k": [a["k"] for a in answers],
            "weights": [json.dumps(a["weights"]) for a in answers],
        })
