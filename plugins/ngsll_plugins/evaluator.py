"""MLflow evaluator plugin ``ngsll`` (entry-point group ``mlflow.model_evaluator``).

``mlflow.models.evaluate(model_uri, data, targets=..., model_type="classifier", evaluators=["ngsll"])``
on a logged NGSLL pyfunc model computes accuracy, NormLIME global and class-specific importance (with
SP-LIME and mean |w| beside it) from the model's own sparse weights, and a Keep-And-Retrain
faithfulness check (the first half of ``data`` retrains, the second half tests), and logs the numbers,
the importance JSON and the maps to the evaluation run.

``data``: (N, 784) or (N, 28, 28) pixels in [0, 1]; ``targets``: the binary labels.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models.evaluation import EvaluationResult, ModelEvaluator
from mlflow.tracking import MlflowClient

from ngsll.importance import accumulate_normlime, keep_and_retrain
from ngsll.plots import faithfulness_figure, weight_overlay_figure
from ngsll.serving import ImageService
from ngsll.simplify import image_inputs
from ngsll.train import TensorData, evaluate


class NGSLLEvaluator(ModelEvaluator):
    """NormLIME maps and faithfulness for NGSLL pyfunc models (see the module docstring)."""

    def can_evaluate(self, *, model_type, evaluator_config, **kwargs) -> bool:
        return model_type == "classifier"

    def evaluate(self, *, model_type, dataset, run_id, evaluator_config, model=None, extra_metrics=None,
                 custom_artifacts=None, predictions=None, **kwargs) -> EvaluationResult:
        import matplotlib.pyplot as plt

        service = model.unwrap_python_model().service  # ngsll_plugins.pyfunc.NGSLLPyfunc's ImageService
        if not isinstance(service, ImageService):
            raise MlflowException("the ngsll evaluator reads 28x28 images; text models have no pixel maps to "
                                  "evaluate (use the pipeline's evaluate_text stage)")
        ngsll_model, names, classes = service.model, service.feature_names, service.class_names
        side, cells = service.side, service.cells
        pixels = np.asarray(dataset.features_data, dtype=np.float32).reshape(-1, side, side)
        labels = np.asarray(dataset.labels_data).astype(np.int64)
        x, z = image_inputs(pixels, cells)
        data = TensorData.from_arrays(x, z, labels)
        normlime = accumulate_normlime(ngsll_model, data, len(classes))
        rankings = {"NormLIME": normlime.global_importance_, "SP-LIME": normlime.sp_lime_,
                    "mean abs weight": normlime.mean_abs_,
                    "random": np.random.default_rng(int(evaluator_config.get("seed", 0))).permutation(len(names)) * 1.0}
        half = len(labels) // 2
        gains = keep_and_retrain(rankings, z[:half], labels[:half], z[half:], labels[half:], fractions=(0.5,))
        metrics = {"accuracy": evaluate(ngsll_model, data)["accuracy"],
                   **{f"error_gain_at_50/{name}": curve[0.5] for name, curve in gains.items()}}
        importance = {"feature_names": names, "class_names": classes, "normlime": normlime.global_importance_.tolist(),
                      "normlime_by_class": dict(zip(classes, normlime.class_importance_.tolist())),
                      "signed_by_class": dict(zip(classes, normlime.class_signed_.tolist())),
                      "sp_lime": normlime.sp_lime_.tolist(), "mean_abs": normlime.mean_abs_.tolist()}
        client = MlflowClient()
        for name, value in metrics.items():
            client.log_metric(run_id, name, value)
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder)
            (out / "importance.json").write_text(json.dumps(importance, indent=2))
            averages = np.stack([pixels[labels == c].mean(axis=0) if (labels == c).any() else np.zeros((side, side))
                                 for c in range(len(classes))])
            maps = {"NormLIME signed": normlime.class_signed_.reshape(-1, cells, cells)}
            for file, figure in (("class_maps.png", weight_overlay_figure(averages, maps, classes)),
                                 ("faithfulness.png", faithfulness_figure({"evaluation data": gains}))):
                figure.savefig(out / file, dpi=100)
                plt.close(figure)
            client.log_artifacts(run_id, str(out), artifact_path="ngsll_evaluation")
        return EvaluationResult(metrics=metrics, artifacts={}, run_id=run_id)
