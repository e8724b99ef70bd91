"""Simplified representations of images: block averages with human-readable cell names."""

from __future__ import annotations

import numpy as np

from ngsll.errors import InputError


def downsample(images: np.ndarray, cells: int = 7) -> np.ndarray:
    """Average non-overlapping blocks: (N, H, H) images in [0, 1] -> (N, cells*cells) features z.

    For MNIST (H = 28, cells = 7) each feature is the mean of a 4x4 block, row-major.
    """
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise InputError(f"images must have shape (N, H, H), got {images.shape}")
    side = images.shape[1]
    if side % cells:
        raise InputError(f"image side {side} is not divisible by the cell count {cells}")
    block = side // cells
    blocks = images.reshape(len(images), cells, block, cells, block)  # (N, r, b, c, b)
    return blocks.mean(axis=(2, 4)).reshape(len(images), cells * cells).astype(np.float32)  # (N, d)


def cell_names(cells: int = 7) -> list[str]:
    """Feature names ``r{row}c{col}`` in the row-major order of :func:`downsample` (0-based)."""
    return [f"r{row}c{col}" for row in range(cells) for col in range(cells)]


def image_inputs(pixels: np.ndarray, cells: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Both representations of (N, H, H) images already scaled to [0, 1]: x (N, 1, H, H) and z (N, d)."""
    if pixels.ndim != 3:
        raise InputError(f"images must have shape (N, H, H), got {pixels.shape}")
    if not np.isfinite(pixels).all():
        raise InputError("images contain NaN or infinite values; pixels must be finite numbers in [0, 1]")
    if pixels.size and (pixels.min() < 0 or pixels.max() > 1):
        raise InputError(f"pixels must lie in [0, 1], got {pixels.min()}..{pixels.max()}")
    pixels = pixels.astype(np.float32)
    return pixels[:, None], downsample(pixels, cells)
