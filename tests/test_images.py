"""Image datasets of any size, channels and classes: each source, the task mapping, the splits, and every bad
input stopping with a message that names the file or column."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ngsll.data.images import ImageDataError, RawImages, image_splits, read_image_source
from ngsll.data.labels import LabelError, check_class_labels
from ngsll.errors import ConfigError
from ngsll.simplify import cell_names, downsample


def png(pixels: np.ndarray, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format)
    return buffer.getvalue()


def write_folder(root: Path, classes=("cat", "dog", "owl"), per_class: int = 4, size=(12, 16), mode: str = "RGB") -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (*size, 3) if mode == "RGB" else size
            pixels = rng.integers(0, 256, size=shape).astype(np.uint8)
            (root / name / f"{i}.png").write_bytes(png(pixels))
    return root


def test_a_class_folder_decodes_to_rgb_arrays_named_by_folder(tmp_path) -> None:
    raw = read_image_source("folder", write_folder(tmp_path / "data"), {})
    assert raw.images["train"].shape == (12, 12, 16, 3) and raw.images["train"].dtype == np.uint8
    assert sorted(set(raw.labels["train"])) == ["cat", "dog", "owl"] and "test" not in raw.images
    assert raw.files["train"][0] == "cat/0.png"
    splits, mapping, spec = image_splits(raw, {"grid": [3, 4], "cell_values": "channels", "num_validation": 2}, 0, "t")
    assert mapping.class_names == ["cat", "dog", "owl"]
    assert splits["train"].x.shape[1:] == (3, 12, 16) and splits["test"].z.shape[1] == 3 * 3 * 4
    assert spec.feature_names[:2] == ["r0c0:red", "r0c1:red"] and spec.feature_names[-1] == "r2c3:blue"
    assert sum(len(s.y) for s in splits.values()) == 12
    ids = [set(s.ids.tolist()) for s in splits.values()]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])


def test_train_and_test_folders_sizes_and_mixed_channels(tmp_path) -> None:
    root = tmp_path / "data"
    write_folder(root / "train", classes=("a", "b"), size=(20, 30))
    write_folder(root / "test", classes=("a", "b"), per_class=2, size=(10, 10), mode="L")
    with pytest.raises(ImageDataError, match=r"mix 4 grayscale \(e.g. test/a/0.png\) and 8 colour"):
        read_image_source("folder", root, {"mixed_channels": "fail", "size": [8, 8]})
    with pytest.raises(ImageDataError, match=r"different sizes .* set size: \[height, width\]"):
        read_image_source("folder", root, {})
    raw = read_image_source("folder", root, {"size": [16, 24]})
    assert raw.images["train"].shape == (8, 16, 24, 3) and raw.images["test"].shape == (4, 16, 24, 3)
    assert any("converted to RGB" in note for note in raw.notes) and any("resized" in note for note in raw.notes)
    gray = read_image_source("folder", root, {"size": [16, 24], "channels": 1})
    assert gray.images["train"].shape == (8, 16, 24, 1)


def test_luminance_cells_weigh_the_channels_as_pil_does() -> None:
    image = np.zeros((1, 3, 2, 2), dtype=np.float32)
    image[0, 0] = 1.0  # pure red
    assert downsample(image, [1, 1], "luminance")[0, 0] == pytest.approx(0.299)
    assert downsample(image, [1, 1], "channels").tolist() == [[1.0, 0.0, 0.0]]
    assert cell_names([2, 3]) == ["r0c0", "r0c1", "r0c2", "r1c0", "r1c1", "r1c2"]


@pytest.mark.parametrize(("breakage", "message"), [
    ("corrupt", r"cat/1.png is not a readable PNG/JPEG image"),
    ("text file", r"cat/notes.txt is not an image file"),
    ("gif", r"cat/2.png is a GIF image; accepted: PNG or JPEG"),
    ("empty class", r"the class folder .*/eel is empty"),
    ("one class", r"has 1 class sub-folder\(s\) \['cat'\]; classification needs at least two"),
])
def test_bad_folders_stop_with_the_file_named(tmp_path, breakage: str, message: str) -> None:
    root = write_folder(tmp_path / "data", classes=("cat",) if breakage == "one class" else ("cat", "dog"))
    if breakage == "corrupt":
        (root / "cat/1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    elif breakage == "text file":
        (root / "cat/notes.txt").write_text("hello")
    elif breakage == "gif":
        buffer = io.BytesIO()
        Image.new("L", (4, 4)).save(buffer, format="GIF")
        (root / "cat/2.png").write_bytes(buffer.getvalue())
    elif breakage == "empty class":
        (root / "eel").mkdir()
    with pytest.raises(ImageDataError, match=message):
        read_image_source("folder", root, {})


def test_a_parquet_table_of_encoded_images(tmp_path) -> None:
    rng = np.random.default_rng(1)
    blobs = [png(rng.integers(0, 256, size=(8, 8)).astype(np.uint8), "PNG" if i % 2 else "JPEG") for i in range(8)]
    frame = pd.DataFrame({"img": blobs, "y": [0, 1] * 4, "part": ["train"] * 6 + ["test"] * 2})
    frame.to_parquet(tmp_path / "images.parquet")
    hugging_face = frame.assign(img=[{"bytes": b, "path": None} for b in blobs])  # the datasets library's layout
    hugging_face.to_parquet(tmp_path / "hf.parquet")
    assert read_image_source("parquet", tmp_path / "hf.parquet", {"image_column": "img", "label_column": "y"}
                             ).images["train"].shape == (8, 8, 8, 1)
    raw = read_image_source("parquet", tmp_path / "images.parquet",
                            {"image_column": "img", "label_column": "y", "split_column": "part"})
    assert raw.images["train"].shape == (6, 8, 8, 1) and raw.images["test"].shape == (2, 8, 8, 1)
    assert raw.labels["test"].tolist() == [0, 1] and raw.files["test"][0] == "images.parquet row 6"
    with pytest.raises(ImageDataError, match=r"lacks the column\(s\) \['label'\]"):
        read_image_source("parquet", tmp_path / "images.parquet", {"image_column": "img"})
    frame.loc[3, "y"] = None
    frame.to_parquet(tmp_path / "unlabelled.parquet")
    with pytest.raises(ImageDataError, match=r"row 3 has no label in column 'y'"):
        read_image_source("parquet", tmp_path / "unlabelled.parquet", {"image_column": "img", "label_column": "y"})


def test_tasks_map_labels_to_classes_and_refuse_what_they_cannot_take() -> None:
    rng = np.random.default_rng(2)
    stored = {"train_images": rng.integers(0, 256, size=(30, 8, 8)).astype(np.uint8),
              "train_labels": np.arange(30) % 3, "test_images": rng.integers(0, 256, size=(6, 8, 8)).astype(np.uint8),
              "test_labels": np.arange(6) % 3}
    raw = RawImages.from_arrays(stored)
    splits, mapping, _ = image_splits(raw, {"class_names": ["a", "b", "c"], "grid": 2, "num_validation": 3}, 0, "d")
    assert mapping.class_names == ["a", "b", "c"] and splits["test"].y.tolist() == [0, 1, 2, 0, 1, 2]
    binary = {"task": "binary", "classes": {"low": [0], "high": [1, 2]}, "grid": 2}
    splits, mapping, _ = image_splits(raw, binary, 0, "d")
    assert splits["test"].y.tolist() == [0, 1, 1, 0, 1, 1] and splits["test"].source_labels.tolist()[:2] == ["0", "1"]
    with pytest.raises(ConfigError, match="binary needs exactly 2 classes, found 3"):
        raw.check({"task": "binary", "grid": 2}, "datasets.d")
    with pytest.raises(ConfigError, match="a grid of 3x3 cells does not fit images of 8x8 pixels"):
        raw.check({"grid": 3}, "datasets.d")
    with pytest.raises(LabelError, match=r"finite number in every row for task: regression; rows \[0\]"):
        RawImages.from_arrays({**stored, "train_labels": np.array(["x", *range(29)], dtype=object)}).check(
            {"task": "regression", "grid": 2}, "datasets.d")
    one_class = RawImages.from_arrays({**stored, "train_labels": np.zeros(30, dtype=int)})
    with pytest.raises(ImageDataError, match="only one class"):
        one_class.check({"grid": 2}, "datasets.d")
    continuous = RawImages.from_arrays({**stored, "train_labels": np.linspace(0, 1, 30)})
    with pytest.raises(LabelError, match="fractional part .* Use task: regression"):
        continuous.check({"grid": 2}, "datasets.d")
    unmapped = {**binary, "classes": {"low": [0], "high": [1]}}
    with pytest.raises(ImageDataError, match=r"the train split holds labels \['2'\] that no class takes"):
        image_splits(raw, unmapped, 0, "d")


def test_continuous_labels_are_told_apart_from_class_names() -> None:
    check_class_labels(np.array(["spam", "ham"]), "col")
    check_class_labels(np.array(["1", "2", "3"]), "col")
    with pytest.raises(LabelError, match="968 distinct values"):
        check_class_labels(np.arange(968).astype(str), "col")
    with pytest.raises(LabelError, match="fractional"):
        check_class_labels(np.array(["0.25", "0.5", "1"]), "col")
    with pytest.raises(LabelError, match="fractional"):  # what pandas hands over for a CSV column
        check_class_labels(pd.Series(["0.25", "0.5", "1"], dtype=object).to_numpy(), "col")
    check_class_labels(pd.Series(["spam", "ham"], dtype=object).to_numpy(), "col")
