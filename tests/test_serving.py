"""The framework-free serving logic: request decoding, answers with weights, errors as 400 payloads."""

from __future__ import annotations

import base64
import copy
import io
import json
import re
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_args
from ngsll import ConfigError, build_model
from ngsll.serving import DEFAULT_MAX_PIXELS, ImageService, RequestError
from ngsll.simplify import cell_names

CLASSES = ["0-4", "5-9"]


def digit(seed: int = 0) -> np.ndarray:
    """A 28x28 'stroke' in [0, 1]: bright ink on black, like MNIST."""
    image = np.zeros((28, 28), dtype=np.float32)
    rng = np.random.default_rng(seed)
    rows = rng.integers(4, 24, size=3)
    image[rows[0] : rows[0] + 12, 10:14] = 1.0
    image[rows[1], 6:22] = 0.8
    return image


def png_bytes(pixels: np.ndarray, size: int = 28, dark_on_light: bool = False, fmt: str = "PNG") -> bytes:
    values = (1 - pixels if dark_on_light else pixels) * 255
    picture = Image.fromarray(values.astype(np.uint8), mode="L").resize((size, size))
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def service() -> ImageService:
    torch.manual_seed(0)
    model = build_model(tiny_args(num_features=49, image_size=28, k=5))
    return ImageService(model, cell_names(7), CLASSES)


def check_answer(answer: dict, k: int = 5) -> None:
    assert set(answer) >= {"label", "class_index", "probabilities", "logit", "k", "weights"}
    assert answer["label"] == CLASSES[answer["class_index"]] and answer["k"] == k
    assert set(answer["probabilities"]) == set(CLASSES)
    magnitudes = [abs(w["contribution"]) for w in answer["weights"]]
    assert magnitudes == sorted(magnitudes, reverse=True)
    assert sum(w["contribution"] for w in answer["weights"]) == pytest.approx(answer["logit"], abs=1e-4)
    for entry in answer["weights"]:
        assert entry["feature"] == f"r{entry['index'] // 7}c{entry['index'] % 7}"
        assert entry["contribution"] == pytest.approx(entry["value"] * entry["weight"], abs=1e-6)


def test_json_list_in_either_scale_gives_the_same_answer(service: ImageService) -> None:
    image = digit()
    unit = service.respond([{"image": image.tolist()}])[0]
    bytes_scale = service.respond([json.dumps({"image": (image * 255).tolist()}).encode()])[0]
    assert unit[0] == 200 and bytes_scale[0] == 200
    check_answer(unit[1])
    assert unit[1]["logit"] == pytest.approx(bytes_scale[1]["logit"], abs=1e-5)
    assert len(unit[1]["weights"]) == min(5, int((service.answer(image[None])[0]["k"])))


def test_png_and_jpeg_of_any_size_and_polarity_are_accepted(service: ImageService) -> None:
    image = digit(1)
    reference = service.respond([{"image": image.tolist()}])[0][1]
    for body in (png_bytes(image), png_bytes(image, size=112, dark_on_light=True), png_bytes(image, fmt="JPEG")):
        status, answer = service.respond([body])[0]
        assert status == 200
        check_answer(answer)
    status, same = service.respond([png_bytes(image)])[0]
    assert same["logit"] == pytest.approx(reference["logit"], abs=1e-4)  # lossless 28x28 PNG: same pixels


def test_fewer_inked_cells_than_k_gives_all_of_them(service: ImageService) -> None:
    image = np.zeros((28, 28), dtype=np.float32)
    image[0:4, 0:8] = 1.0  # two cells of ink
    answer = service.answer(image[None])[0]
    assert [w["feature"] for w in sorted(answer["weights"], key=lambda w: w["index"])] == ["r0c0", "r0c1"]
    blank = service.answer(np.zeros((1, 28, 28), dtype=np.float32))[0]
    assert blank["weights"] == [] and blank["logit"] == 0.0


def test_kserve_envelope_answers_each_instance(service: ImageService) -> None:
    images = [digit(2), digit(3)]
    body = {"instances": [{"image": images[0].tolist()}, {"b64": base64.b64encode(png_bytes(images[1])).decode()}]}
    status, payload = service.respond([json.dumps(body)])[0]
    assert status == 200 and len(payload["predictions"]) == 2
    for answer in payload["predictions"]:
        check_answer(answer)
    status, payload = service.respond([json.dumps(body)], explain=[True])[0]
    assert status == 200 and list(payload) == ["explanations"]  # KServe v1 `:explain` answers explanations
    assert all(len(answer["weight_map"]) == 7 for answer in payload["explanations"])


def test_batched_answers_equal_single_answers_and_bad_requests_do_not_spoil_a_batch(service: ImageService) -> None:
    bodies = [{"image": digit(s).tolist()} for s in range(4)]
    singles = [service.respond([body])[0] for body in bodies]
    mixed = service.respond([bodies[0], b"not an image", bodies[1], {"image": [[1, 2]]}, bodies[2], bodies[3]])
    assert [status for status, _ in mixed] == [200, 400, 200, 400, 200, 200]
    good = [payload for status, payload in mixed if status == 200]
    for (_, single), batched in zip(singles, good):
        assert_same_answer(single, batched)


def assert_same_answer(first: dict, second: dict) -> None:
    """Same label, same features in the same order, numbers equal to float rounding."""
    assert first["label"] == second["label"]
    assert [w["feature"] for w in first["weights"]] == [w["feature"] for w in second["weights"]]
    assert [w["contribution"] for w in first["weights"]] == pytest.approx([w["contribution"] for w in second["weights"]], abs=1e-5)
    logits = "logits" if "logits" in first else "logit"  # multi-class answers carry one logit per class
    assert first[logits] == pytest.approx(second[logits], abs=1e-5)


def test_explanations_add_class_weights_and_the_weight_map(service: ImageService) -> None:
    plain, explained = service.respond([{"image": digit().tolist()}] * 2, explain=[False, True])
    assert "weight_map" not in plain[1]
    answer = explained[1]
    weight_map = np.asarray(answer["weight_map"])
    assert weight_map.shape == (7, 7) and (weight_map != 0).sum() == len(answer["weights"])
    for entry in answer["weights"]:
        assert weight_map[entry["index"] // 7, entry["index"] % 7] == pytest.approx(entry["weight"])
        assert set(answer["class_weights"][entry["feature"]]) == {"logit(5-9)"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty"),
        (b"GIF89a....", "not a readable PNG/JPEG"),
        (png_bytes(digit())[:60], "not a readable PNG/JPEG"),
        (b'{"image": [[0.1, 0.2]]}', "28x28"),
        (b'{"image": "zero"}', "28x28"),
        (b'{"picture": []}', "a JSON request must be"),
        (b'{"image": ' + json.dumps(np.full((28, 28), 0.5).tolist()).replace("0.5", "NaN", 1).encode() + b"}", "NaN"),
        (b'{"image": ' + json.dumps(np.full((28, 28), 300.0).tolist()).encode() + b"}", "0-255"),
        (b'{"instances": []}', "non-empty"),
        (b"{broken json", "not valid JSON"),
    ],
)
def test_bad_requests_are_named_400s(service: ImageService, body: bytes, message: str) -> None:
    status, payload = service.respond([body])[0]
    assert status == 400
    assert message in payload["error"] and "PNG or JPEG" in payload["accepted"]
    with pytest.raises(RequestError):
        service.decode(body)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` 8-bit grey pixels, with almost no pixel data: what a
    decompression bomb looks like to a server before it decodes (a few hundred bytes, gigabytes decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [5000, 12000, 16000, 60000])
def test_images_beyond_the_pixel_limit_are_400s_read_from_the_header(service: ImageService, side: int) -> None:
    body = png_header(side, side)
    assert len(body) < 1000
    (status, payload), (good, _) = service.respond([body, png_bytes(digit())])
    assert status == 400 and f"the limit is {DEFAULT_MAX_PIXELS} pixels" in payload["error"] and good == 200
    assert f"at most {DEFAULT_MAX_PIXELS} pixels" in payload["accepted"]


def test_an_image_at_the_pixel_limit_is_decoded_and_a_body_over_the_size_limit_is_a_413(service: ImageService) -> None:
    small = ImageService(service.model, service.feature_names, service.class_names, max_pixels=64 * 64)
    at_limit = io.BytesIO()
    Image.fromarray(np.zeros((64, 64), dtype=np.uint8)).save(at_limit, format="PNG")
    assert small.respond([at_limit.getvalue()])[0][0] == 200
    assert small.respond([png_header(65, 64)])[0][0] == 400
    status, payload = service.respond([b"\x89PNG" + b"\x00" * (2 << 20)])[0]
    assert status == 413 and "the limit is 1048576" in payload["error"]


def test_the_served_layout_gives_the_plain_models_explanations() -> None:
    """The service runs the CNN in channels_last (faster on CPU): same features and weights as the model
    run the ordinary way."""
    from ngsll.explain import sparse_explanation
    from ngsll.simplify import image_inputs

    torch.manual_seed(0)
    plain = build_model(tiny_args(num_features=49, image_size=28, k=5)).eval()
    images = np.stack([digit(seed) for seed in range(6)])  # (6, 28, 28)
    x, z = (torch.from_numpy(a) for a in image_inputs(images, 7))
    with torch.inference_mode():
        expected = sparse_explanation(plain(x, z), z, 5, "binary")
    served = ImageService(copy.deepcopy(plain), cell_names(7), CLASSES)
    conv = next(module for module in served.model.modules() if isinstance(module, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    for row, answer in enumerate(served.answer(images)):
        assert [w["index"] for w in answer["weights"]] == expected.indices[row].tolist()
        assert [w["weight"] for w in answer["weights"]] == pytest.approx(expected.weights[row].tolist(), abs=1e-5)


# ---- any image spec: colour, non-square, other grids -----------------------------------------------------

RGB_SPEC = {"height": 12, "width": 16, "channels": 3, "grid": [3, 4], "cell_values": "channels",
            "invert_light_background": False}
RGB_CLASSES = ["cat", "dog", "owl"]


@pytest.fixture(scope="module")
def rgb_service() -> ImageService:
    torch.manual_seed(0)
    args = tiny_args(num_features=36, image_size=12, image_width=16, in_channels=3, k=4, task="multiclass",
                     num_classes=3)
    return ImageService(build_model(args), cell_names([3, 4], 3, "channels"), RGB_CLASSES, spec=RGB_SPEC)


def rgb_png(size: tuple[int, int], mode: str = "RGB", fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(1)
    picture = Image.fromarray(rng.integers(0, 256, size=(*size[::-1], 3)).astype(np.uint8)).convert(mode)
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt)
    return buffer.getvalue()


def test_a_colour_model_answers_png_of_any_size_and_mode_as_training_converted_it(rgb_service) -> None:
    for body in (rgb_png((16, 12)), rgb_png((640, 480), fmt="JPEG"), rgb_png((20, 20), mode="L"),
                 rgb_png((33, 17), mode="RGBA")):
        [(status, answer)] = rgb_service.respond([body], explain=[True])
        assert status == 200 and set(answer["probabilities"]) == set(RGB_CLASSES)
        assert 1 <= len(answer["weights"]) <= 4
        assert sum(w["contribution"] for w in answer["weights"]) == pytest.approx(answer["logits"][answer["label"]],
                                                                                  abs=1e-4)
        assert np.asarray(answer["weight_map"]).shape == (3, 3, 4)  # one grid per channel
    # exactly the training conversion: RGB, resized to 16 x 12, / 255, never inverted
    picture = Image.open(io.BytesIO(rgb_png((640, 480), fmt="JPEG"))).convert("RGB").resize((16, 12),
                                                                                             Image.Resampling.BILINEAR)
    expected = np.asarray(picture, dtype=np.float32).transpose(2, 0, 1)[None] / 255.0
    decoded = rgb_service.decode(rgb_png((640, 480), fmt="JPEG")).inputs
    assert decoded.shape == (1, 3, 12, 16) and np.allclose(decoded, expected)


def test_a_colour_model_takes_height_x_width_x_3_lists_and_names_that_shape(rgb_service) -> None:
    image = np.random.default_rng(2).uniform(size=(12, 16, 3))
    [(status, answer)] = rgb_service.respond([json.dumps({"image": image.tolist()}).encode()])
    assert status == 200
    direct = rgb_service.answer(image.transpose(2, 0, 1)[None].astype(np.float32))[0]
    assert answer["weights"] == direct["weights"]
    [(status, error)] = rgb_service.respond([json.dumps({"image": digit().tolist()}).encode()])
    assert status == 400 and "12x16x3 nested list" in error["error"] and "12x16x3" in error["accepted"]
    assert rgb_service.pixels_from_array(np.zeros((2, 12, 16, 3))).shape == (2, 3, 12, 16)
    with pytest.raises(RequestError, match="images must be 12x16x3"):
        rgb_service.pixels_from_array(np.zeros((2, 28, 28)))


def test_a_spec_that_does_not_match_the_model_is_refused() -> None:
    model = build_model(tiny_args(num_features=49, image_size=28, k=5))
    with pytest.raises(ConfigError, match="does not match the model's input"):
        ImageService(model, cell_names(7), CLASSES, spec=RGB_SPEC)


def two_cell_digit() -> np.ndarray:
    image = np.zeros((28, 28), dtype=np.float32)
    image[0:4, 0:8] = 1.0  # two cells of ink: fewer features than K = 5
    return image


def test_tensor_answers_say_what_the_json_answers_say_padded_to_k(service: ImageService) -> None:
    from explanation_contract import same_as_v1

    images = np.stack([digit(0), two_cell_digit(), digit(4)])  # (3, 28, 28)
    arrays = service.tensors(images)
    assert arrays["feature_index"].shape == (3, 5) and arrays["probabilities"].shape == (3, 2)
    same_as_v1(arrays, service.answer(images))
    assert list(arrays["feature_index"][1, 2:]) == [-1, -1, -1] and list(arrays["feature_name"][1, 2:]) == [""] * 3
    assert (arrays["weight"][1, 2:] == 0).all() and (arrays["contribution"][1, 2:] == 0).all()
    assert np.allclose(arrays["contribution"].sum(axis=1), arrays["logit"], atol=1e-5)
    split = service.respond_tensors([images[:1], images[1:]])  # two requests, one forward pass
    assert [len(part["label"]) for part in split] == [1, 2]
    assert np.array_equal(np.concatenate([part["feature_index"] for part in split]), arrays["feature_index"])


def test_tensor_inputs_as_floats_bytes_or_png_files_and_named_400s(service: ImageService) -> None:
    image = digit(3)
    expected = service.tensors(image[None])
    for datatype, values in (("FP32", image[None]), ("UINT8", np.rint(image[None] * 255).astype(np.uint8)),
                             ("BYTES", np.asarray([png_bytes(image)], dtype=object)),
                             ("BYTES", np.asarray([base64.b64encode(png_bytes(image)).decode()], dtype=object))):
        inputs = service.decode_tensor(datatype, list(values.shape), values)
        got = service.tensors(inputs)
        assert list(got["feature_index"][0]) == list(expected["feature_index"][0]), datatype
        assert np.allclose(got["logit"], expected["logit"], atol=2e-3), datatype  # UINT8/PNG round to 1/255
    for datatype, values, message in (
        ("FP32", np.zeros((1, 3, 3), np.float32), "must be 28x28"),
        ("FP32", np.full((1, 28, 28), np.nan, np.float32), "finite"),
        ("FP32", np.full((1, 28, 28), 7, np.float32), "[0, 1]"),
        ("INT32", np.zeros((1, 28, 28), np.int32), "FP32, FP64, UINT8 or BYTES"),
        ("BYTES", np.asarray(["not base64 !"], dtype=object), "neither a PNG/JPEG"),
        ("BYTES", np.asarray([b"\x89PNG\r\n\x1a\nbroken"], dtype=object), "not a readable PNG/JPEG"),
        ("FP32", np.zeros((0, 28, 28), np.float32), "batch dimension"),
        ("FP32", np.zeros((300, 28, 28), np.float32), "at most 256"),
    ):
        with pytest.raises(RequestError, match=re.escape(message)) as raised:
            service.decode_tensor(datatype, list(values.shape), values)
        assert "image FP32 [-1, 28, 28]" in raised.value.accepted


def test_regression_tensors_answer_the_value_without_probabilities() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_args(num_features=49, image_size=28, k=5, task="regression", num_classes=1))
    regression = ImageService(model, cell_names(7), ["value"])
    arrays = regression.tensors(np.stack([digit(0), digit(1)]))
    assert arrays["probabilities"].shape == (2, 0) and list(arrays["class_index"]) == [0, 0]
    assert [float(label) for label in arrays["label"]] == pytest.approx(list(arrays["logit"]), abs=1e-5)
    assert np.allclose(arrays["contribution"].sum(axis=1), arrays["logit"], atol=1e-5)
