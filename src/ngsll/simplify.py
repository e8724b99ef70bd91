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
