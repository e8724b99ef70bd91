"""The MLflow pyfunc flavour of a fine NGSLL model: predictions **and** their top-K weights.

Image models: ``predict`` takes N images in [0, 1] at the model's size: (N, H, W) grayscale (or (N, H*W)),
(N, H, W, 3) RGB. Text models (logged with an
``encoder`` artifact): ``predict`` takes N sentences, a DataFrame with a ``text`` column (the logged
signature; the unwrapped model also takes a list of strings). Table models: a DataFrame of the input
columns, one row per record (or a list of record dicts). Either way it returns one row per sample with
``label, class_index, probability, logit, k, weights`` where ``logit`` is the answered class's logit and
``weights`` is the JSON list of ``{feature, index, weight, value, contribution}`` sorted by |contribution|
(``feature`` a ``r3c4`` cell or a word); the contributions add up to ``logit``. Regression: ``label`` is the
prediction in the target's units (target mean + std * ``logit``), ``probability`` NaN.
"""

from __future__ import annotations

import json
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from ngsll.errors import NGSLLError
from ngsll.serving import RequestError, TableService, TextService, load_service
from ngsll.table import frame_records


class NGSLLPyfunc(mlflow.pyfunc.PythonModel):
    """Loads the plain-dict checkpoint artifact (and, for text, the encoder) and answers with explanations."""

    def load_context(self, context: Any) -> None:
        artifacts = context.artifacts
        # The same service the TorchServe handler uses, so both answer identically.
        self.service = load_service(artifacts["checkpoint"], artifacts["features"], artifacts.get("encoder"))

    def predict(self, context, model_input, params=None):  # untyped: MLflow reads type hints as a schema
        if isinstance(self.service, TableService):
            answers = self.service.answer(as_records(self.service, model_input))
        elif isinstance(self.service, TextService):
            answers = self.service.answer(as_sentences(model_input))
        else:
            answers = self.service.answer(self.service.pixels_from_array(model_input))  # (N, C, H, W) in
        return pd.DataFrame({
            "label": [a["label"] for a in answers],
            "class_index": [a["class_index"] for a in answers],
            "probability": [a["probabilities"].get(a["label"], float("nan")) for a in answers],  # regression: NaN
            "logit": [a["logits"][a["label"]] if "logits" in a else a.get("logit", float("nan")) for a in answers],
            "k": [a["k"] for a in answers],
            "weights": [json.dumps(a["weights"]) for a in answers],
        })


def as_sentences(model_input: Any) -> list[str]:
    """N sentences from a list/array of strings or a DataFrame (its ``text`` column, else its first)."""
    if isinstance(model_input, pd.DataFrame):
        column = "text" if "text" in model_input.columns else model_input.columns[0]
        model_input = model_input[column]
    sentences = [model_input] if isinstance(model_input, str) else list(np.asarray(model_input, dtype=object).ravel())
    if not all(isinstance(text, str) and text.strip() for text in sentences):
        raise RequestError("text models take non-empty sentences: a list of strings or a DataFrame with a text column")
    return sentences


def as_records(service: TableService, model_input: Any) -> list[dict[str, Any]]:
    """Checked records from a DataFrame (one row each; missing cells as NaN) or a list of dicts; a bad record
    raises :class:`RequestError` naming its row and column."""
    if isinstance(model_input, pd.DataFrame):
        model_input = frame_records(model_input)
    if isinstance(model_input, dict):
        model_input = [model_input]
    records = []
    for row, record in enumerate(model_input):
        try:
            records.append(service.encoder.check_record(record))
        except NGSLLError as error:
            raise RequestError(f"row {row}: {error}") from error
    return records
