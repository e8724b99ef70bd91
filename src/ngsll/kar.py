"""Keep-And-Retrain the NormLIME paper's way: the classifier itself retrained on inputs whose removed features
are blanked.

For a ranking of the d simplified features and a removed fraction p, the ``round(p * d)`` least important
features are blanked in the *original* input x (an image's cells set to 0 in every pixel they cover; a
sentence's words replaced by padding), a fresh copy of the classifier (the DNN: the same network NGSLL's
generator is) is trained on the blanked training inputs and its test error on the blanked test inputs is
compared with the same training on the whole inputs. A ranking that removes what the classifier needs shows
a large gain; one that removes what it can do without, a small one. Random rankings are averaged over several
seeded permutations. Every retraining is seeded alike, so rankings that remove the same features (often the
never-chosen words of a large vocabulary) share one. :func:`ngsll.importance.keep_and_retrain` is the cheap
proxy (a logistic regression on the kept z features).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ngsll.errors import InputError
from ngsll.model import ModelArgs, build_model
from ngsll.simplify import check_grid, feature_channels
from ngsll.train import PhaseConfig, TensorData, evaluate, seed_everything, train_phase

Blank = Callable[[torch.Tensor, np.ndarray], torch.Tensor]  # (x, removed (d,) bool) -> x with those blanked


def image_blanker(grid: Sequence[int], cell_values: str = "luminance") -> Blank:
    """Blank an image model's cells: x (N, C, H, W) -> x with every pixel of a removed feature's cell set to 0
    (of its channel when z holds one value per channel, of every channel for luminance cells)."""

    def blank(x: torch.Tensor, removed: np.ndarray) -> torch.Tensor:
        channels, height, width = x.shape[1:]
        rows, cols = check_grid(height, width, list(grid))
        values = feature_channels(channels, cell_values)
        if removed.shape != (values * rows * cols,):
            raise InputError(f"removed must have shape ({values * rows * cols},), got {removed.shape}")
        keep = torch.as_tensor(~removed, device=x.device).view(values, rows, cols)  # (C_z, r, c)
        keep = keep.repeat_interleave(height // rows, dim=1).repeat_interleave(width // cols, dim=2)  # (C_z, H, W)
        return x * keep.to(x.dtype)  # (N, C, H, W); C_z = 1 broadcasts over the channels

    return blank


def text_blanker(token_features: np.ndarray) -> Blank:
    """Blank a text model's words: x (N, T) token ids -> x with every token of a removed word replaced by the
    padding id 0. ``token_features``: (V,) the z index of each token id, -1 for tokens that are no feature."""
    lookup = np.asarray(token_features, dtype=np.int64)  # (V,)

    def blank(x: torch.Tensor, removed: np.ndarray) -> torch.Tensor:
        removed_token = np.where(lookup >= 0, removed[np.maximum(lookup, 0)], False)  # (V,) token of a removed word
        return x.masked_fill(torch.as_tensor(removed_token, device=x.device)[x], 0)  # (N, T)

    return blank


def retrained_error(model_args: ModelArgs | dict, train: TensorData, validation: TensorData, test: TensorData,
                    config: PhaseConfig, seed: int) -> float:
    """Test error of a fresh classifier of ``model_args`` trained on ``train`` (early stopping on
    ``validation``): the error rate for classification, the RMSE for regression (of the standardised target)."""
    seed_everything(seed)  # every retraining starts from the same initial weights
    model = build_model(model_args).to(train.y.device)
    train_phase(model, train, validation, config, seed=seed, progress=False)
    metrics = evaluate(model, test)
    return float(np.sqrt(metrics["mse"])) if "mse" in metrics else 1.0 - float(metrics["accuracy"])


def keep_and_retrain_classifier(
    rankings: dict[str, np.ndarray], blank: Blank, model_args: ModelArgs | dict, train: TensorData,
    validation: TensorData, test: TensorData, fractions: Sequence[float], config: PhaseConfig, seed: int = 0,
    random_draws: int = 5, progress: bool = False,
) -> dict[str, dict[float, float]]:
    """Test-error gain of the retrained classifier per ranking and removed fraction (see the module docstring).

    Args:
        rankings: name -> (d,) importance, higher is more important.
        blank: how a removal reaches x (:func:`image_blanker`, :func:`text_blanker`).
        model_args: the classifier retrained each time (the DNN's ``model_args``, ``kind="dnn"``).
        train / validation / test: splits with x and y (z is not read).
        fractions: removed fractions p in (0, 1).
        config: the training budget of every retraining (epochs, batch size, learning rate).
        seed: seeds every retraining alike and the random rankings.
        random_draws: seeded random permutations averaged into the row ``random (mean of N)``; 0 for none.
        progress: a progress bar over the curve's points (a retraining each, unless an earlier point removed
            the same features).

    Returns:
        ``{ranking: {p: error(p) - error(nothing removed)}}``, the random mean last.
    """
    args = model_args if isinstance(model_args, ModelArgs) else ModelArgs.from_dict(dict(model_args))
    num_features = args.num_features
    for name, importance in rankings.items():
        if np.shape(importance) != (num_features,):
            raise InputError(f"ranking {name!r} must have shape ({num_features},), got {np.shape(importance)}")
    if not all(0 < fraction < 1 for fraction in fractions):
        raise InputError(f"removed fractions must lie in (0, 1), got {list(fractions)}")

    errors: dict[bytes, float] = {}  # removed set -> error: rankings that remove the same features share one training

    def error_without(removed: np.ndarray) -> float:
        key = np.packbits(removed).tobytes()
        if key not in errors:
            blanked = [TensorData(blank(split.x, removed), split.z, split.y) for split in (train, validation, test)]
            errors[key] = retrained_error(args, *blanked, config, seed)
        return errors[key]

    rng = np.random.default_rng(seed)
    draws = {f"random {i}": rng.permutation(num_features).astype(float) for i in range(random_draws)}
    every_ranking = {**rankings, **draws}
    bar = tqdm(total=1 + len(every_ranking) * len(fractions), desc="Keep-And-Retrain", unit="point",
               disable=not progress)
    baseline = error_without(np.zeros(num_features, dtype=bool))
    bar.update()
    gains: dict[str, dict[float, float]] = {}
    for name, importance in every_ranking.items():
        order = np.argsort(np.asarray(importance), kind="stable")  # least important first
        gains[name] = {}
        bar.set_postfix(ranking=name, refresh=False)
        for fraction in fractions:
            removed = np.zeros(num_features, dtype=bool)
            removed[order[: int(round(fraction * num_features))]] = True
            gains[name][fraction] = error_without(removed) - baseline
            bar.update()
    bar.close()
    if draws:
        random_gains = [gains.pop(name) for name in draws]
        gains[f"random (mean of {random_draws})"] = {
            fraction: float(np.mean([gain[fraction] for gain in random_gains])) for fraction in fractions}
    return gains
