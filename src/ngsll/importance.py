"""Global views to compare with NormLIME: batched local weights, the DNN's input gradient, and a
Keep-And-Retrain style faithfulness check of any feature ranking.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from ngsll.errors import InputError
from ngsll.explain import answered_class_weights
from ngsll.model import DNNClassifier, NGSLL
from ngsll.normlime import NormLIME
from ngsll.train import TensorData, predict_labels


@torch.inference_mode()
def answered_weights(model: NGSLL, x: torch.Tensor, z: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(B, d) sparse weights of the answered output (the logit for binary models) and (B,) predicted
    labels for one batch, as NumPy arrays: the local linear models NormLIME aggregates."""
    model.eval()
    output = model(x, z)
    _, weights = answered_class_weights(output, model.args.task)  # (B, d)
    predicted = predict_labels(output.logits, model.args.task)  # (B,)
    return weights.cpu().numpy(), predicted.cpu().numpy()


def accumulate_normlime(model: NGSLL, data: TensorData, num_classes: int, batch_size: int = 1024) -> NormLIME:
    """Run ``model`` over ``data`` in batches and feed each sample's sparse weights of the answered
    output with its predicted label into a :class:`NormLIME`."""
    normlime = NormLIME(model.args.num_features, num_classes)
    for x, z, _ in data.batches(batch_size):
        normlime.update(*answered_weights(model, x, z))
    return normlime


@dataclass
class GradientView:
    """The DNN's average input gradient pooled to the simplified cells, and its linear surrogate.

    mean_gradient: (d,) average d(logit)/dz over the split (chain rule: the sum of the pixel gradients
    in each cell, since every pixel of a cell moves with its mean). surrogate_agreement: how often
    sign(z^T mean_gradient) agrees with the DNN's own decision.
    """

    mean_gradient: np.ndarray
    surrogate_agreement: float


def input_gradient_view(model: DNNClassifier, data: TensorData, cells: int, batch_size: int = 512) -> GradientView:
    """Average gradient of a binary DNN's logit with respect to its input, pooled to ``cells`` x ``cells``."""
    if model.args.task != "binary":
        raise InputError("the gradient view is implemented for binary models (one logit)")
    model.eval()
    total = torch.zeros(cells * cells, device=data.y.device)
    for x, z, _ in data.batches(batch_size):
        x = x.clone().requires_grad_(True)
        logits = model(x)[:, 0]  # (B,)
        (gradient,) = torch.autograd.grad(logits.sum(), x)  # (B, 1, H, H)
        side = gradient.shape[-1] // cells
        pooled = gradient[:, 0].reshape(len(x), cells, side, cells, side).sum(dim=(2, 4))  # (B, c, c)
        total += pooled.reshape(len(x), -1).sum(dim=0).detach()
    mean_gradient = (total / len(data)).cpu().numpy()
    agree = 0
    with torch.inference_mode():  # second pass: the surrogate needs the finished mean gradient
        for x, z, _ in data.batches(batch_size):
            dnn_decision = model(x)[:, 0] > 0
            surrogate = z.cpu().numpy() @ mean_gradient > 0
            agree += int((surrogate == dnn_decision.cpu().numpy()).sum())
    return GradientView(mean_gradient=mean_gradient, surrogate_agreement=agree / len(data))


def keep_and_retrain(
    rankings: dict[str, np.ndarray],
    train_z: np.ndarray,
    train_y: np.ndarray,
    test_z: np.ndarray,
    test_y: np.ndarray,
    fractions: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
) -> dict[str, dict[float, float]]:
    """Error gain after removing the least important fraction of features by each ranking.

    For each ranking (feature -> importance, higher is more important) and fraction p, the
    ``round(p * d)`` least important features are dropped, a logistic regression is retrained on the
    rest of ``train_z`` and its test error is compared with the error using every feature.

    Returns:
        ``{ranking: {p: test error(p) - test error(all features)}}``.
    """
    num_features = train_z.shape[1]
    baseline_error = _retrained_error(train_z, train_y, test_z, test_y, np.arange(num_features))
    gains: dict[str, dict[float, float]] = {}
    for name, importance in rankings.items():
        if importance.shape != (num_features,):
            raise InputError(f"ranking {name!r} must have shape ({num_features},), got {importance.shape}")
        order = np.argsort(importance, kind="stable")  # least important first
        gains[name] = {}
        for fraction in fractions:
            kept = np.sort(order[int(round(fraction * num_features)) :])
            gains[name][fraction] = _retrained_error(train_z, train_y, test_z, test_y, kept) - baseline_error
    return gains


def _retrained_error(train_z, train_y, test_z, test_y, kept: np.ndarray) -> float:
    classifier = LogisticRegression(max_iter=500).fit(train_z[:, kept], train_y)
    return float((classifier.predict(test_z[:, kept]) != test_y).mean())


def lime_local_weights(
    model: DNNClassifier, images: np.ndarray, cells: int, num_samples: int = 1000, seed: int = 0, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Local LIME explanations of a binary DNN over the ``cells`` x ``cells`` grid (the ``lime`` package).

    Each image is segmented into the same grid as the simplified input; LIME hides cells (ink set to 0),
    scores the perturbed images with the DNN and fits its weighted ridge model. Returns the (N, d) weights
    for class 1 and the DNN's (N,) predicted labels, ready for :class:`NormLIME`. Costs ``num_samples``
    DNN evaluations per image, which is why the explain stage caps the count and keeps it off by default.
    """
    from lime import lime_image  # optional dependency: the `explainers` extra

    if model.args.task != "binary":
        raise InputError("LIME explanations are implemented for binary models")
    side = images.shape[-1]
    block = side // cells
    grid = (np.arange(side)[:, None] // block) * cells + (np.arange(side)[None, :] // block)  # (H, H) cell ids
    device = next(model.parameters()).device
    model.eval()

    @torch.inference_mode()
    def probabilities(batch: np.ndarray) -> np.ndarray:  # (n, H, H, 3) RGB from LIME -> (n, 2)
        x = torch.as_tensor(batch[..., 0], dtype=torch.float32, device=device)[:, None]  # (n, 1, H, H)
        positive = torch.sigmoid(model(x)[:, 0]).cpu().numpy()
        return np.stack([1 - positive, positive], axis=1)

    explainer = lime_image.LimeImageExplainer(random_state=seed)
    weights = np.zeros((len(images), cells * cells))
    for row, image in enumerate(images):
        explanation = explainer.explain_instance(
            image.astype(np.float64), probabilities, labels=(1,), hide_color=0, top_labels=None,
            num_features=cells * cells, num_samples=num_samples, batch_size=batch_size,
            segmentation_fn=lambda _: grid, random_seed=seed + row,
        )
        for cell, weight in explanation.local_exp[1]:
            weights[row, cell] = weight
    predicted = probabilities(np.repeat(images[..., None], 3, axis=-1)).argmax(axis=1)
    return weights, predicted


def top_features(
    importance: np.ndarray, signed: np.ndarray, names: Sequence[str], count: int = 10
) -> list[dict[str, float | str]]:
    """The ``count`` most important features as ``{feature, importance, signed_weight}``, most important first.

    Args:
        importance: (d,) scores, higher is more important (e.g. one row of NormLIME's ``class_importance_``).
        signed: (d,) mean signed weight of each feature (the matching row of ``class_signed_``).
        names: d feature names (cells or words).
        count: how many to return (default 10); features with importance 0 (never chosen) are left out.
    """
    if not importance.shape == signed.shape == (len(names),):
        raise InputError(f"importance, signed and names must all have length {len(names)}, got "
                         f"{importance.shape} and {signed.shape}")
    order = np.argsort(-importance, kind="stable")[:count]  # most important first, ties by index
    return [{"feature": names[i], "importance": float(importance[i]), "signed_weight": float(signed[i])}
            for i in order if importance[i] > 0]
