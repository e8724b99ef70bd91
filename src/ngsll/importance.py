"""Global views to compare with NormLIME: batched local weights, the DNN's input gradient, and a
Keep-And-Retrain style faithfulness check of any feature ranking.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, Ridge

from ngsll.errors import InputError
from ngsll.explain import answered_class, answered_class_weights
from ngsll.model import DNNClassifier, NGSLL
from ngsll.normlime import NormLIME
from ngsll.train import TensorData, predict_labels


@torch.inference_mode()
def answered_weights(model: NGSLL, x: torch.Tensor, z: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(B, d) sparse weights of the answered output (the logit for binary models) and (B,) predicted
    labels for one batch, as NumPy arrays: the local linear models NormLIME aggregates. A regression model
    has one output, so every sample's label is 0 (NormLIME's one "class": the target)."""
    model.eval()
    output = model(x, z)
    _, weights = answered_class_weights(output, model.args.task)  # (B, d)
    if model.args.task == "regression":
        return weights.cpu().numpy(), np.zeros(len(weights), dtype=np.int64)
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
    """The DNN's average input gradient, pooled to the simplified features, and its linear surrogate.

    class_gradient: (C_out, d) the mean d(logit)/dz of each output over the samples that answered it (binary:
    one row, the logit, over all samples). For images, the chain rule makes d(logit)/dz of a cell the sum of
    the pixel gradients in it (every pixel of a cell moves with its mean); for text, the gradient x input of
    each token's embedding, summed over the tokens that are the feature's word; for tables, see
    :func:`table_gradient_view`. mean_gradient: (d,) the
    logit's row for binary models, the mean |row| over classes otherwise (a ranking). surrogate_agreement:
    how often the linear surrogate (sign of z^T g, or argmax_c z^T g_c) agrees with the DNN's decision (for
    regression: on which side of the training mean, the standardised 0, the prediction falls).
    """

    class_gradient: np.ndarray
    mean_gradient: np.ndarray
    surrogate_agreement: float


def _answered_logits(logits: torch.Tensor, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) the answered output's logit and (B,) its output index (see :func:`ngsll.explain.answered_class`)."""
    column = answered_class(logits, task)  # (B,)
    return logits.gather(1, column[:, None])[:, 0], column


def _gradient_view(model: DNNClassifier, data: TensorData, batch_size: int, per_sample) -> GradientView:
    """Aggregate ``per_sample(x) -> ((B, d) feature gradients, (B,) answered output)`` into a :class:`GradientView`."""
    model.eval()
    outputs = model.args.num_outputs
    total = torch.zeros(outputs, model.args.num_features, dtype=torch.float64, device=data.y.device)
    counts = torch.zeros(outputs, dtype=torch.float64, device=data.y.device)
    for x, _, _ in data.batches(batch_size):
        gradient, column = per_sample(x)  # (B, d), (B,)
        total.index_add_(0, column, gradient.double())
        counts.index_add_(0, column, torch.ones_like(column, dtype=torch.float64))
    class_gradient = (total / counts.clamp(min=1)[:, None]).cpu().numpy()  # (C_out, d)
    mean_gradient = class_gradient[0] if outputs == 1 else np.abs(class_gradient).mean(axis=0)
    agree = 0
    with torch.inference_mode():  # second pass: the surrogate needs the finished mean gradients
        for x, z, _ in data.batches(batch_size):
            logits = model(x)  # (B, C_out)
            scores = z.cpu().numpy() @ class_gradient.T  # (B, C_out)
            if outputs == 1:
                agree += int(((scores[:, 0] > 0) == (logits[:, 0] > 0).cpu().numpy()).sum())
            else:
                agree += int((scores.argmax(axis=1) == logits.argmax(dim=1).cpu().numpy()).sum())
    return GradientView(class_gradient, mean_gradient, agree / len(data))


def input_gradient_view(model: DNNClassifier, data: TensorData, grid: Sequence[int], batch_size: int = 512) -> GradientView:
    """Average gradient of an image DNN's answered logit with respect to its pixels, pooled to the
    ``rows x cols`` cells of ``grid`` (per channel when the model's features are, summed over channels for
    luminance cells)."""
    rows, cols = grid
    per_channel = model.args.num_features != rows * cols

    def per_sample(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.clone().requires_grad_(True)
        answered, column = _answered_logits(model(x), model.args.task)  # (B,), (B,)
        (gradient,) = torch.autograd.grad(answered.sum(), x)  # (B, C, H, W)
        batch, channels, height, width = gradient.shape
        cells = gradient.reshape(batch, channels, rows, height // rows, cols, width // cols).sum(dim=(3, 5))  # (B, C, r, c)
        pooled = cells.reshape(batch, -1) if per_channel else cells.sum(dim=1).reshape(batch, -1)  # (B, d)
        return pooled.detach(), column

    return _gradient_view(model, data, batch_size, per_sample)


def text_gradient_view(model: DNNClassifier, data: TensorData, token_features: np.ndarray, batch_size: int = 512) -> GradientView:
    """Average gradient x input of a sentence DNN's answered logit, per word of z.

    ``token_features``: (V,) the z index of each token id (-1 for padding, unknown words, stopwords and
    other tokens that are not features). A token's saliency is its embedding times the logit's gradient
    with respect to it; a feature's value is the sum over the sentence's tokens that are its word.
    """
    lookup = torch.as_tensor(token_features, dtype=torch.long, device=data.y.device)  # (V,)
    num_features = model.args.num_features
    embedding = model.generator.embedding
    captured: dict[str, torch.Tensor] = {}

    def keep(module, inputs, output):  # the embedded sentence, kept in the graph to take its gradient
        captured["embedded"] = output

    def per_sample(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        handle = embedding.register_forward_hook(keep)
        try:
            answered, column = _answered_logits(model(tokens), model.args.task)
        finally:
            handle.remove()
        embedded = captured.pop("embedded")  # (B, T', E), T' >= T when short sentences were padded
        (gradient,) = torch.autograd.grad(answered.sum(), embedded)
        saliency = (gradient * embedded).sum(dim=-1)[:, : tokens.shape[1]].detach()  # (B, T)
        features = lookup[tokens]  # (B, T) z index or -1
        kept = features >= 0
        pooled = torch.zeros(len(tokens), num_features + 1, device=tokens.device)  # last column: not a feature
        pooled.scatter_add_(1, torch.where(kept, features, num_features), torch.where(kept, saliency, 0.0))
        return pooled[:, :num_features], column

    with torch.enable_grad():
        return _gradient_view(model, data, batch_size, per_sample)


def table_gradient_view(model: DNNClassifier, data: TensorData, category_features: np.ndarray,
                        batch_size: int = 512) -> GradientView:
    """Average gradient x input of a table DNN's answered logit, per feature of z.

    The leading numbers of x are z's leading features themselves (standardised values, missing flags): their
    gradient is d(logit)/dz. A categorical column's saliency is its embedding times the logit's gradient with
    respect to it, given to the one-hot feature of the row's category. ``category_features``: (codes,) the z
    index of each offset code (-1 for code 0, missing or unknown; see ``TableEncoder.category_features``).
    """
    lookup = torch.as_tensor(category_features, dtype=torch.long, device=data.y.device)  # (codes,)
    numeric, num_features = model.args.numeric_inputs, model.args.num_features
    generator = model.generator
    captured: dict[str, torch.Tensor] = {}

    def keep(module, inputs, output):  # the embedded categories, kept in the graph to take their gradient
        captured["embedded"] = output

    def per_sample(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.clone().requires_grad_(True)
        handle = generator.embedding.register_forward_hook(keep)
        try:
            answered, column = _answered_logits(model(x), model.args.task)  # (B,), (B,)
        finally:
            handle.remove()
        embedded = captured.pop("embedded")  # (B, categorical, E)
        gradient_x, gradient_e = torch.autograd.grad(answered.sum(), [x, embedded], allow_unused=True)
        pooled = torch.zeros(len(x), num_features + 1, device=x.device)  # last column: not a feature
        if numeric:
            pooled[:, :numeric] = gradient_x[:, :numeric]
        if embedded.shape[1]:
            saliency = (gradient_e * embedded).sum(dim=-1)  # (B, categorical)
            features = lookup[x[:, numeric:].long() + generator.offsets]  # (B, categorical) z index or -1
            target = torch.where(features >= 0, features, num_features)
            pooled.scatter_add_(1, target, saliency)
        return pooled[:, :num_features].detach(), column

    with torch.enable_grad():
        return _gradient_view(model, data, batch_size, per_sample)


def keep_and_retrain(
    rankings: dict[str, np.ndarray],
    train_z: np.ndarray,
    train_y: np.ndarray,
    test_z: np.ndarray,
    test_y: np.ndarray,
    fractions: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    task: str = "binary",
) -> dict[str, dict[float, float]]:
    """Error gain after removing the least important fraction of features by each ranking.

    For each ranking (feature -> importance, higher is more important) and fraction p, the
    ``round(p * d)`` least important features are dropped, a logistic regression (``task`` regression: a
    ridge regression, error = RMSE in the units of ``test_y``) is retrained on the rest of ``train_z`` and
    its test error is compared with the error using every feature.

    Returns:
        ``{ranking: {p: test error(p) - test error(all features)}}``.
    """
    num_features = train_z.shape[1]
    if np.count_nonzero(train_z) < 0.1 * train_z.size:  # bags of words: sparse matrices fit many times faster
        from scipy import sparse

        train_z, test_z = sparse.csc_matrix(train_z), sparse.csc_matrix(test_z)
    baseline_error = _retrained_error(train_z, train_y, test_z, test_y, np.arange(num_features), task)
    gains: dict[str, dict[float, float]] = {}
    for name, importance in rankings.items():
        if importance.shape != (num_features,):
            raise InputError(f"ranking {name!r} must have shape ({num_features},), got {importance.shape}")
        order = np.argsort(importance, kind="stable")  # least important first
        gains[name] = {}
        for fraction in fractions:
            kept = np.sort(order[int(round(fraction * num_features)) :])
            gains[name][fraction] = _retrained_error(train_z, train_y, test_z, test_y, kept, task) - baseline_error
    return gains


def _retrained_error(train_z, train_y, test_z, test_y, kept: np.ndarray, task: str = "binary") -> float:
    """Test error rate of a logistic regression on the ``kept`` features (regression: RMSE of a ridge)."""
    if task == "regression":
        predicted = Ridge(alpha=1.0).fit(train_z[:, kept], train_y).predict(test_z[:, kept])
        return float(np.sqrt(((predicted - test_y) ** 2).mean()))
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


def top_features_by_class(normlime: NormLIME, names: Sequence[str], class_names: Sequence[str],
                          count: int = 10) -> dict[str, list[dict[str, float | str]]]:
    """Per predicted class, its ``count`` most important features (:func:`top_features` of the class's NormLIME
    importance and signed mean weight)."""
    return {name: top_features(normlime.class_importance_[c], normlime.class_signed_[c], names, count)
            for c, name in enumerate(class_names)}


def top_features_markdown(tables: dict[str, list[dict[str, float | str]]], suffix: str = "") -> str:
    """Markdown of :func:`top_features_by_class`: one table per class (feature, NormLIME, signed weight)."""
    from ngsll.evaluation import format_table

    sections = [format_table({row["feature"]: {"NormLIME": row["importance"], "signed weight": row["signed_weight"]}
                              for row in table}, ["NormLIME", "signed weight"], title=f"predicted {name}{suffix}",
                             column="{}", precision=4)
                for name, table in tables.items()]
    return "\n\n".join(sections) + "\n"
