"""Pictures a person would rather look at than read: weight overlays and training curves."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def cell_maps(weights: np.ndarray, grid: Sequence[int]) -> np.ndarray:
    """(n, d) weights over cells -> (n, rows, cols) maps; per-channel features (d = C x rows x cols) are
    summed over the channels of each cell."""
    rows, cols = grid
    return np.asarray(weights).reshape(len(weights), -1, rows, cols).sum(axis=1)  # (n, rows, cols)


def _show(axis, image: np.ndarray) -> None:
    """An (H, W) or (C, H, W) image in [0, 1]: grayscale as dark ink on white (MNIST's look), RGB as is."""
    if image.ndim == 3 and image.shape[0] == 3:
        axis.imshow(np.clip(image.transpose(1, 2, 0), 0, 1))
    else:
        axis.imshow(image.reshape(image.shape[-2:]), cmap="gray_r", vmin=0, vmax=1)


def weight_overlay_figure(
    images: np.ndarray,
    weight_maps: dict[str, np.ndarray],
    column_titles: Sequence[str],
) -> Figure:
    """Figure 3 of the paper: each image with its signed cell weights overlaid (red +, blue -).

    Args:
        images: (n, H, W) grayscale or (n, C, H, W) images in [0, 1].
        weight_maps: row name -> (n, rows, cols) signed weight maps (see :func:`cell_maps`).
        column_titles: n titles, e.g. the digit and the prediction.
    """
    rows = ["image", *weight_maps]
    n = len(images)
    figure, axes = plt.subplots(len(rows), n, figsize=(1.6 * n, 1.7 * len(rows)), squeeze=False)
    height, width = images.shape[-2:]
    for col in range(n):
        _show(axes[0, col], images[col])
        axes[0, col].set_title(column_titles[col], fontsize=8)
        for row, name in enumerate(weight_maps, start=1):
            weights = weight_maps[name][col]  # (rows, cols)
            limit = float(np.abs(weights).max()) or 1.0
            _show(axes[row, col], images[col])
            axes[row, col].imshow(
                weights, cmap="bwr", vmin=-limit, vmax=limit, alpha=0.6,
                extent=(-0.5, width - 0.5, height - 0.5, -0.5), interpolation="nearest",
            )
    for row, name in enumerate(rows):
        axes[row, 0].set_ylabel(name, fontsize=8)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout()
    return figure


def training_curves_figure(histories: dict[str, list[dict[str, float]]]) -> Figure:
    """Loss (train and validation) and validation accuracy (regression: validation MSE of the standardised
    target) per epoch for each named phase."""
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 3.5))
    metric = "accuracy"
    for name, history in histories.items():
        epochs = [row["epoch"] for row in history]
        line = loss_axis.plot(epochs, [row["val_loss"] for row in history], label=f"{name} val")[0]
        loss_axis.plot(epochs, [row["train_loss"] for row in history], "--", color=line.get_color(), label=f"{name} train")
        metric = "accuracy" if "val_accuracy" in history[0] else "mse"
        if f"val_{metric}" in history[0]:
            accuracy_axis.plot(epochs, [row[f"val_{metric}"] for row in history], label=name, color=line.get_color())
    loss_axis.set(xlabel="epoch", ylabel="loss", title="loss")
    label = "accuracy" if metric == "accuracy" else "MSE (standardised target)"
    accuracy_axis.set(xlabel="epoch", ylabel=label, title=f"validation {label}")
    loss_axis.legend(fontsize=7)
    accuracy_axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


def accuracy_vs_k_figure(accuracy: dict[str, dict[int, float]], ks: Sequence[int],
                         metric: str = "test accuracy") -> Figure:
    """Test accuracy (or another ``metric``: R² for regression) against K for every model; models constant in K
    are drawn as flat lines."""
    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    for name, row in accuracy.items():
        values = [row.get(k, next(iter(row.values())) if len(row) == 1 else np.nan) for k in ks]
        axis.plot(ks, values, marker="o", label=name)
    axis.set(xlabel="K (features kept)", ylabel=metric, title=f"{metric.removeprefix('test ')} versus K",
             xticks=list(ks))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def faithfulness_figure(gains: dict[str, dict[str, dict[float, float]]], measure: str = "test error gain") -> Figure:
    """Keep-And-Retrain curves: test-error gain (``measure``) against the fraction of features removed, per ranking.

    ``gains`` maps a panel title (e.g. ``K=5``) -> ranking -> fraction -> error gain.
    """
    figure, axes = plt.subplots(1, len(gains), figsize=(4.2 * len(gains), 3.4), squeeze=False, sharey=True)
    for axis, (title, rankings) in zip(axes[0], gains.items()):
        for name, curve in rankings.items():
            fractions = sorted(curve)
            axis.plot([100 * f for f in fractions], [curve[f] for f in fractions], marker="o", markersize=3, label=name)
        axis.set(title=title, xlabel="% of features removed (least important first)")
        axis.grid(alpha=0.3)
    axes[0, 0].set_ylabel(measure)
    axes[0, -1].legend(fontsize=7)
    figure.tight_layout()
    return figure


def top_features_figure(tables: dict[str, list[dict[str, float | str]]], title: str = "") -> Figure:
    """One horizontal bar chart per class: its top features (words) and their signed mean weight (red +, blue -).

    ``tables`` maps a panel title (a class name) -> rows of :func:`ngsll.importance.top_features`.
    """
    rows = max((len(table) for table in tables.values()), default=1) or 1
    figure, axes = plt.subplots(1, len(tables), figsize=(3.2 * len(tables), 0.32 * rows + 1.4), squeeze=False)
    for axis, (panel, table) in zip(axes[0], tables.items()):
        values = [float(row["signed_weight"]) for row in table][::-1]  # most important on top
        axis.barh(range(len(values)), values, color=["tab:red" if v >= 0 else "tab:blue" for v in values])
        axis.set_yticks(range(len(values)), [str(row["feature"]) for row in table][::-1], fontsize=8)
        axis.axvline(0, color="black", linewidth=0.6)
        axis.set_title(panel, fontsize=9)
        axis.set_xlabel("mean signed weight", fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def explained_rows_figure(rows: list[tuple[str, dict[str, list[tuple[str, float]]]]]) -> Figure:
    """Table rows (figure rows) by model (figure columns): each panel the row's chosen features and their
    contributions z_j w_j to the answered class's logit (red +, blue -), largest on top.

    ``rows``: (title, {panel title: [(feature label, contribution), ...]}) per table row.
    """
    panels = max((len(by_model) for _, by_model in rows), default=1) or 1
    bars = max((len(items) for _, by_model in rows for items in by_model.values()), default=1) or 1
    figure, axes = plt.subplots(len(rows), panels, figsize=(3.4 * panels, (0.28 * bars + 0.9) * len(rows)),
                                squeeze=False)
    for axes_row, (title, by_model) in zip(axes, rows):
        for axis, (panel, items) in zip(axes_row, by_model.items()):
            ordered = sorted(items, key=lambda item: abs(item[1]))  # largest |contribution| on top
            values = [value for _, value in ordered]
            axis.barh(range(len(values)), values, color=["tab:red" if v >= 0 else "tab:blue" for v in values])
            axis.set_yticks(range(len(values)), [label for label, _ in ordered], fontsize=7)
            axis.axvline(0, color="black", linewidth=0.6)
            axis.set_title(f"{title}\n{panel}", fontsize=8)
            axis.tick_params(axis="x", labelsize=7)
    figure.tight_layout()
    return figure
