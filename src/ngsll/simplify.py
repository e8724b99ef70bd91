"""Simplified representations of images: cell means over a grid, with human-readable cell names.

z is the mean of each cell of a ``rows x cols`` grid laid over the image, row-major; for a colour image
either one mean per cell and channel (``cell_values="channels"``, features ``r2c3:red`` ... channel by
channel) or one mean of the luminance per cell (``"luminance"``, features ``r2c3``). Grayscale images
have one value per cell either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ngsll.errors import ConfigError, InputError

CELL_VALUES = ("luminance", "channels")
CHANNEL_NAMES = ("red", "green", "blue")
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as PIL's convert("L")


def grid_shape(grid: int | Sequence[int]) -> tuple[int, int]:
    """``(rows, cols)`` of a grid given as one count (square) or ``[rows, cols]``."""
    values = [grid, grid] if isinstance(grid, int) else list(grid)
    if len(values) != 2 or not all(isinstance(v, int) and v >= 1 for v in values):
        raise ConfigError(f"grid must be a positive cell count or [rows, cols] of positive counts, got {grid!r}")
    return int(values[0]), int(values[1])


def check_grid(height: int, width: int, grid: int | Sequence[int]) -> tuple[int, int]:
    """``(rows, cols)``, or :class:`ConfigError` if the grid does not tile an ``height x width`` image."""
    rows, cols = grid_shape(grid)
    if height % rows or width % cols:
        raise ConfigError(
            f"a grid of {rows}x{cols} cells does not fit images of {height}x{width} pixels: the height must be a "
            f"multiple of the rows and the width of the columns (e.g. size [{rows * max(1, height // rows)}, "
            f"{cols * max(1, width // cols)}])"
        )
    return rows, cols


def feature_channels(channels: int, cell_values: str) -> int:
    """How many values z holds per cell: the image's channels, or 1 for luminance."""
    if cell_values not in CELL_VALUES:
        raise ConfigError(f"cell_values must be one of {list(CELL_VALUES)}, got {cell_values!r}")
    return channels if cell_values == "channels" else 1


def downsample(images: np.ndarray, grid: int | Sequence[int] = 7, cell_values: str = "luminance") -> np.ndarray:
    """Cell means: (N, H, W) or (N, C, H, W) images in [0, 1] -> (N, d) features z, d = cells x values.

    For MNIST (28 x 28, grid 7) each feature is the mean of a 4x4 block, row-major. Colour images give one
    block of ``rows x cols`` features per channel (``channels``) or the cell means of the luminance.
    """
    if images.ndim == 3:
        images = images[:, None]  # (N, 1, H, W)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise InputError(f"images must have shape (N, H, W) or (N, C, H, W) with C in (1, 3), got {images.shape}")
    count, channels, height, width = images.shape
    rows, cols = check_grid(height, width, grid)
    if feature_channels(channels, cell_values) == 1 and channels == 3:
        images = np.tensordot(images, LUMA, axes=([1], [0]))[:, None]  # (N, 1, H, W)
    blocks = images.reshape(count, images.shape[1], rows, height // rows, cols, width // cols)  # (N, C, r, b, c, b)
    return blocks.mean(axis=(3, 5)).reshape(count, -1).astype(np.float32)  # (N, C*r*c)


def cell_names(grid: int | Sequence[int] = 7, channels: int = 1, cell_values: str = "luminance") -> list[str]:
    """Feature names in the order of :func:`downsample` (0-based): ``r{row}c{col}``, with ``:red`` etc.
    when z holds one value per channel."""
    rows, cols = grid_shape(grid)
    cells = [f"r{row}c{col}" for row in range(rows) for col in range(cols)]
    if feature_channels(channels, cell_values) == 1:
        return cells
    return [f"{cell}:{channel}" for channel in CHANNEL_NAMES[:channels] for cell in cells]


def image_inputs(
    pixels: np.ndarray, grid: int | Sequence[int] = 7, cell_values: str = "luminance"
) -> tuple[np.ndarray, np.ndarray]:
    """Both representations of images already scaled to [0, 1]: (N, H, W) or (N, C, H, W) pixels ->
    x (N, C, H, W) and z (N, d)."""
    if pixels.ndim not in (3, 4):
        raise InputError(f"images must have shape (N, H, W) or (N, C, H, W), got {pixels.shape}")
    if not np.isfinite(pixels).all():
        raise InputError("images contain NaN or infinite values; pixels must be finite numbers in [0, 1]")
    if pixels.size and (pixels.min() < 0 or pixels.max() > 1):
        raise InputError(f"pixels must lie in [0, 1], got {pixels.min()}..{pixels.max()}")
    x = pixels.astype(np.float32)
    x = x[:, None] if x.ndim == 3 else x  # (N, C, H, W)
    return x, downsample(x, grid, cell_values)
