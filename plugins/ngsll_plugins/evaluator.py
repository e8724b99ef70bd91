"""MLflow evaluator plugin ``ngsll`` (entry-point group ``mlflow.model_evaluator``).

``mlflow.models.evaluate(model_uri, data, targets=..., model_type="classifier", evaluators=["ngsll"])``
on a logged NGSLL pyfunc model computes accuracy, NormLIME global and class-specific importance (with
SP-LIME and mean |w| beside it) from the model's own sparse weights, and a Keep-And-Retrain
faithfulness check (the first half of ``data`` retrains, the second half tests), and logs the numbers,
the importance JSON and pictures to the evaluation run:

* image models: ``data`` is (N, H*W) or (N, H, W) pixels in [0, 1]; pictures: NormLIME class maps over
  the average image of each class, and the faithfulness curves;
* text models: ``data`` is a DataFrame with a ``text`` column (or N strings); NormLIME is over the
  vocabulary, the top words of each class with their signed mean weight go into ``top_words.md`` and a
  bar chart, and Keep-And-Retrain drops the least important words.

``targets``: class indices or class names.

A guest in every MLflow process: MLflow loads every installed evaluator when evaluation starts and, when
``evaluators`` is not given, runs each whose ``can_evaluate`` says yes. MLflow 3.17 does not pass the
model to ``can_evaluate``, so the classmethod answers for classifiers (and, should a later MLflow pass
``model=``, only for NGSLL models), and :meth:`NGSLLEvaluator.evaluate` declines (returns None, which MLflow
skips) for any model that is not an NGSLL pyfunc: other models are evaluated exactly as without ngsll.
This module imports only MLflow at load time; torch and ngsll load when an NGSLL model is evaluated.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models.evaluation import EvaluationResult, ModelEvaluator

from ngsll_plugins import NGSLL_METADATA_KEY

log = logging.getLogger(__name__)
TOP_WORDS = 15  # words per class in the text report


def is_ngsll_model(model: Any) -> bool:
    """Whether ``model`` (a loaded ``PyFuncModel``) is an NGSLL pyfunc. Never raises.

    Recognised from the logged model itself: the ``ngsll`` key of its MLmodel metadata (written by
    ``log_pyfunc_model``), or, for models logged before that key existed, a python-model pyfunc with
    ``checkpoint`` and ``features`` artifacts whose python model is an ``NGSLLPyfunc``.
    """
    try:
        logged = getattr(model, "metadata", None)
        if logged is None:
            return False
        if NGSLL_METADATA_KEY in (logged.metadata or {}):
            return True
        flavor = logged.flavors.get("python_function", {})
        if flavor.get("loader_module") != "mlflow.pyfunc.model":
            return False
        if not {"checkpoint", "features"} <= set(flavor.get("artifacts") or {}):
            return False
        from ngsll_plugins.pyfunc import NGSLLPyfunc

        return isinstance(model.unwrap_python_model(), NGSLLPyfunc)
    except Exception:  # noqa: BLE001 - a guest never breaks the host's evaluation
        return False


def class_indices(labels: Any, class_names: list[str]) -> np.ndarray:
    """(N,) class indices from targets given as indices or as class names; MlflowException otherwise."""
    labels = np.asarray(labels).ravel()
    if labels.dtype.kind in "USO":
        index = {name: i for i, name in enumerate(class_names)}
        unknown = sorted({str(label) for label in labels} - set(index))
        if unknown:
            raise MlflowException(f"targets hold {unknown[:5]}, which are not classes of this model; "
                                  f"accepted: class names {class_names} or indices 0..{len(class_names) - 1}")
        return np.array([index[str(label)] for label in labels], dtype=np.int64)
    if labels.dtype.kind not in "iub" or (len(labels) and (labels.min() < 0 or labels.max() >= len(class_names))):
        raise MlflowException(f"targets must be class indices 0..{len(class_names) - 1} or class names "
                              f"{class_names}; got {labels.dtype} values {labels[:5].tolist()}")
    return labels.astype(np.int64)


class NGSLLEvaluator(ModelEvaluator):
    """NormLIME importance and faithfulness for NGSLL pyfunc models (see the module docstring)."""

    @classmethod
    def can_evaluate(cls, *, model_type, evaluator_config, **kwargs) -> bool:
        if model_type != "classifier":
            return False
        return "model" not in kwargs or is_ngsll_model(kwargs["model"])

    def evaluate(self, *, model_type, dataset, run_id, evaluator_config, model=None, extra_metrics=None,
                 custom_artifacts=None, predictions=None, **kwargs) -> EvaluationResult | None:
        if not is_ngsll_model(model):
            log.debug("ngsll evaluator: not an NGSLL model, left to the other evaluators")
            return None
        from ngsll.serving import ImageService

        service = model.unwrap_python_model().service  # ngsll_plugins.pyfunc.NGSLLPyfunc's service
        if service.model.args.task == "regression":
            raise MlflowException("the ngsll evaluator scores NGSLL classifiers; this model is a regression model: "
                                  "its test R², RMSE and MAE come from the pipeline's evaluate stage (evaluate.json)")
        labels = class_indices(dataset.labels_data, service.class_names)
        if isinstance(service, ImageService):
            evaluation = _ImageEvaluation(service, dataset.features_data)
        else:
            evaluation = _TextEvaluation(service, dataset.features_data)
        if len(evaluation.z) != len(labels):
            raise MlflowException(f"data has {len(evaluation.z)} samples but targets has {len(labels)}")
        return evaluation.run(labels, run_id, int(evaluator_config.get("seed", 0)))


class _Evaluation:
    """What both kinds share: NormLIME over the model's own weights, Keep-And-Retrain, logging."""

    def __init__(self, service: Any, x: np.ndarray, z: np.ndarray) -> None:
        self.service, self.x, self.z = service, x, z  # x: model inputs (N, ...); z: (N, d) simplified inputs

    def run(self, labels: np.ndarray, run_id: str, seed: int) -> EvaluationResult:
        import matplotlib.pyplot as plt
        from mlflow.tracking import MlflowClient

        from ngsll.importance import accumulate_normlime, keep_and_retrain
        from ngsll.plots import faithfulness_figure
        from ngsll.train import TensorData, evaluate

        service = self.service
        names, classes = service.feature_names, service.class_names
        data = TensorData.from_arrays(self.x, self.z, labels)
        normlime = accumulate_normlime(service.model, data, len(classes))
        rankings = {"NormLIME": normlime.global_importance_, "SP-LIME": normlime.sp_lime_,
                    "mean abs weight": normlime.mean_abs_,
                    "random": np.random.default_rng(seed).permutation(len(names)) * 1.0}
        half = len(labels) // 2
        gains = keep_and_retrain(rankings, self.z[:half], labels[:half], self.z[half:], labels[half:], fractions=(0.5,))
        metrics = {"accuracy": evaluate(service.model, data)["accuracy"],
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
            figures = {"faithfulness.png": faithfulness_figure({"evaluation data": gains}),
                       **self.pictures(normlime, labels, importance, out)}
            (out / "importance.json").write_text(json.dumps(importance, indent=2))
            for file, figure in figures.items():
                figure.savefig(out / file, dpi=100)
                plt.close(figure)
            client.log_artifacts(run_id, str(out), artifact_path="ngsll_evaluation")
        return EvaluationResult(metrics=metrics, artifacts={}, run_id=run_id)

    def pictures(self, normlime: Any, labels: np.ndarray, importance: dict, out: Path) -> dict[str, Any]:
        """Kind-specific figures by file name (may add to ``importance`` and write files into ``out``)."""
        raise NotImplementedError


class _ImageEvaluation(_Evaluation):
    def __init__(self, service: Any, features: Any) -> None:
        from ngsll.simplify import image_inputs

        try:
            self.pixels = service.pixels_from_array(np.asarray(features, dtype=np.float32))  # (N, C, H, W)
        except ValueError as error:  # RequestError: not images of the model's size
            raise MlflowException(f"image models are evaluated on images: {error}") from error
        super().__init__(service, *image_inputs(self.pixels, service.grid, service.spec["cell_values"]))

    def pictures(self, normlime: Any, labels: np.ndarray, importance: dict, out: Path) -> dict[str, Any]:
        from ngsll.plots import cell_maps, weight_overlay_figure

        service, classes = self.service, self.service.class_names
        averages = np.stack([self.pixels[labels == c].mean(axis=0) if (labels == c).any()
                             else np.zeros(self.pixels.shape[1:]) for c in range(len(classes))])  # (classes, C, H, W)
        maps = {"NormLIME signed": cell_maps(normlime.class_signed_, service.grid)}
        return {"class_maps.png": weight_overlay_figure(averages, maps, classes)}


class _TextEvaluation(_Evaluation):
    def __init__(self, service: Any, features: Any) -> None:
        from ngsll_plugins.pyfunc import as_sentences

        try:
            sentences = as_sentences(features)
        except ValueError as error:  # RequestError: not a list of non-empty sentences
            raise MlflowException(f"text models are evaluated on sentences: {error}") from error
        super().__init__(service, *service.encoder.encode(sentences))

    def pictures(self, normlime: Any, labels: np.ndarray, importance: dict, out: Path) -> dict[str, Any]:
        from ngsll.importance import top_features_by_class, top_features_markdown
        from ngsll.plots import top_features_figure

        names, classes = self.service.feature_names, self.service.class_names
        tables = top_features_by_class(normlime, names, classes, TOP_WORDS)
        importance["top_words_by_class"] = tables
        (out / "top_words.md").write_text(top_features_markdown(tables))
        return {"top_words.png": top_features_figure(tables, "NormLIME top words per predicted class")}
