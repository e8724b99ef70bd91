"""A real KServe model server (``kserve`` 0.21) on 127.0.0.1 serving NGSLL archives, beside a real TorchServe.

Same request, same answer on both servers (images and text, single and batched, v1); the v2 Open Inference
Protocol's tensors say what the v1 answers say; every bad request of the TorchServe suite gets the same
status and error body from both, and the KServe server keeps answering; every answer passes the
explanation schema; `start` / `stop` serve a package stage's folder.
"""

from __future__ import annotations

import base64
import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("kserve")
pytest.importorskip("ts")

from explanation_contract import check_served, same_as_v1, v2_outputs  # noqa: E402
from ngsll.text import TextEncoder  # noqa: E402
from ngsll_plugins.kserve_server import start_background, stop_background  # noqa: E402
from ngsll_plugins.torchserve import build_archive, free_ports  # noqa: E402
from test_serving import digit, png_bytes, two_cell_digit  # noqa: E402
from test_text_serving import CORPUS, SENTENCE, write_text_model  # noqa: E402
from test_torchserve import post, server, write_model  # noqa: E402,F401  (server: the TorchServe fixture)

pytestmark = pytest.mark.slow
TEXTS = [SENTENCE, "Where was the comedy made?", "Who liked the zyzzyva theatre?", "Is it the one that they were?"]


class KServe:
    """A KServe model server started in the background from a model folder; ``url`` reaches it."""

    def __init__(self, root: Path, name: str, store: Path, max_batch_size: int = 8) -> None:
        (port,) = free_ports(1)
        self.root, self.name, self.url = root, name, f"http://127.0.0.1:{port}"
        start_background(root, name, store, "127.0.0.1", port, max_batch_size)

    def v1(self, body: bytes, content_type: str = "application/json", verb: str = "predict") -> tuple[int, dict]:
        return post(f"{self.url}/v1/models/{self.name}:{verb}", body, content_type)

    def v2(self, inputs: list[dict]) -> tuple[int, dict]:
        return post(f"{self.url}/v2/models/{self.name}/infer", json.dumps({"inputs": inputs}).encode())

    def get(self, path: str) -> tuple[int, dict]:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return response.status, json.loads(response.read())

    def stop(self) -> None:
        stop_background(self.root)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """The TorchServe suite's model (same seed, same weights), archived as the package stage archives it."""
    root = tmp_path_factory.mktemp("kserve-images")
    checkpoint, features = write_model(root / "model")
    build_archive(checkpoint, features, root / "model-store", "ngsll")
    running = KServe(root / "run", "ngsll", root / "model-store")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def texts(tmp_path_factory, server):
    """A text archive served by KServe and registered on the TorchServe fixture as ``ngsll-text``."""
    root = tmp_path_factory.mktemp("kserve-text")
    checkpoint, features, encoder = write_text_model(root / "model", TextEncoder.fit(CORPUS, max_length=12))
    build_archive(checkpoint, features, root / "model-store", "ngsll-text", encoder=encoder)
    build_archive(checkpoint, features, server.store, "ngsll-text", encoder=encoder)
    server.client.register("ngsll-text.mar", "ngsll-text")
    running = KServe(root / "run", "ngsll-text", root / "model-store")
    yield running
    running.stop()
    server.client.unregister("ngsll-text")


def torchserve(server, model: str, body: bytes, content_type: str = "application/json",
               explain: bool = False) -> tuple[int, dict]:
    return post(f"{server.client.inference_url}/{'explanations' if explain else 'predictions'}/{model}", body, content_type)


def image_bodies() -> list[tuple[bytes, str]]:
    envelope = {"instances": [digit(1).tolist(), {"image": two_cell_digit().tolist()},
                              {"b64": base64.b64encode(png_bytes(digit(2), size=56)).decode()}]}
    return [(png_bytes(digit()), "image/png"), (png_bytes(digit(5), dark_on_light=True, fmt="JPEG"), "image/jpeg"),
            (json.dumps({"image": digit(3).tolist()}).encode(), "application/json"),
            (json.dumps(envelope).encode(), "application/json")]


def test_same_image_request_same_answer_on_both_servers(images: KServe, server) -> None:
    for body, content_type in image_bodies():
        for explain in (False, True):
            status, kserve_answer = images.v1(body, content_type, "explain" if explain else "predict")
            ts_status, ts_answer = torchserve(server, "ngsll", body, content_type, explain)
            assert status == ts_status == 200
            check_served(kserve_answer)
            check_served(ts_answer)
            assert _close(kserve_answer, ts_answer)


def _close(first, second) -> bool:
    """Equal JSON up to float rounding (the servers serialise floats with different libraries)."""
    if isinstance(first, dict):
        assert set(first) == set(second)
        return all(_close(first[key], second[key]) for key in first)
    if isinstance(first, list):
        assert len(first) == len(second)
        return all(_close(a, b) for a, b in zip(first, second))
    if isinstance(first, float):
        assert first == pytest.approx(second, abs=1e-6)
        return True
    assert first == second
    return True


def test_concurrent_requests_are_batched_and_answered_as_alone(images: KServe) -> None:
    bodies = [json.dumps({"image": digit(seed).tolist()}).encode() for seed in range(12)]
    bodies.insert(5, b'{"image": [[1, 2, 3]]}')
    alone = [images.v1(body) for body in bodies]
    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        together = list(pool.map(images.v1, bodies))
    assert [status for status, _ in together] == [200] * 5 + [400] + [200] * 7
    for (status, single), (_, batched) in zip(alone, together):
        assert _close(single, batched)


def test_v2_tensors_say_what_v1_says_for_floats_and_png_files(images: KServe) -> None:
    pictures = [digit(0), two_cell_digit(), digit(6)]
    expected = [images.v1(json.dumps({"image": p.tolist()}).encode())[1] for p in pictures]
    floats = {"name": "image", "datatype": "FP32", "shape": [3, 28, 28], "data": np.stack(pictures).ravel().tolist()}
    files = {"name": "image", "datatype": "BYTES", "shape": [3],
             "data": [base64.b64encode(png_bytes(p)).decode() for p in pictures]}
    for tensor in (floats, files):
        status, response = images.v2([tensor])
        assert status == 200, response
        arrays = v2_outputs(response, k=5)
        same_as_v1(arrays, expected)
        assert list(arrays["feature_index"][1, 2:]) == [-1, -1, -1]  # two inked cells, K = 5
    status, metadata = images.get("/v2/models/ngsll")
    assert [o["name"] for o in metadata["outputs"]] == ["label", "probabilities", "logit", "feature_index",
                                                         "feature_name", "weight", "value", "contribution"]
    assert {"name": "image", "datatype": "FP32", "shape": [-1, 28, 28]} in metadata["inputs"]
    assert images.get("/v2/health/live") == (200, {"live": True})
    assert images.get("/v2/health/ready") == (200, {"ready": True})
    assert images.get("/v1/models/ngsll") == (200, {"name": "ngsll", "ready": True})


BAD_IMAGE_REQUESTS = [  # the TorchServe suite's bad requests (test_torchserve), but the form-encoded one
    (b"this is not an image", "application/octet-stream", 400),
    (png_bytes(digit())[:50], "image/png", 400),
    (b'{"image": [[0.5, 0.5]]}', "application/json", 400),
    (b'{"image": [[NaN]]}', "application/json", 400),
    (b'{"text": ""}', "application/json", 400),
    (b"\xff\xd8" + b"\x00" * (1 << 20), "image/jpeg", 413),
    (b"", "image/png", 400),
    (b'{"instances": []}', "application/json", 400),
    (b"{broken json", "application/json", 400),
]


@pytest.mark.parametrize(("body", "content_type", "expected"), BAD_IMAGE_REQUESTS)
def test_bad_requests_get_the_torchserve_status_and_body_and_the_server_goes_on(
        images: KServe, server, body: bytes, content_type: str, expected: int) -> None:
    status, payload = images.v1(body, content_type)
    ts_status, ts_payload = torchserve(server, "ngsll", body, content_type)
    assert status == ts_status == expected
    assert payload == ts_payload and "PNG or JPEG" in payload["accepted"]
    check_served(payload)
    status, answer = images.v1(json.dumps({"image": digit().tolist()}).encode())
    assert status == 200
    check_served(answer)


@pytest.mark.parametrize("megabytes", [2, 50])
def test_oversized_bodies_get_a_413_answer_and_a_decompression_bomb_a_400(images: KServe, megabytes: int) -> None:
    """Up to 16 MiB the service's own 413 (as on TorchServe); beyond, the server drains the body unread and
    answers 413 too, where TorchServe's frontend resets the connection. A bomb is refused from its header."""
    from test_serving import png_header

    status, payload = images.v1(b"\x89PNG" + b"\x00" * (megabytes << 20), "image/png")
    assert status == 413 and "bytes;" in payload["error"]
    check_served(payload)
    status, payload = images.v1(png_header(16000, 16000), "image/png")
    assert status == 400 and "the limit is 16777216 pixels" in payload["error"]
    assert images.v1(json.dumps({"image": digit().tolist()}).encode())[0] == 200


def test_a_form_encoded_body_reaches_the_model_on_kserve_and_is_refused_for_what_it_is(images: KServe) -> None:
    """TorchServe drops a form-encoded body (its 400 says so); KServe hands it over, so the error names the bytes."""
    status, payload = images.v1(b"a digit, sent as curl -d sends it", "application/x-www-form-urlencoded")
    assert status == 400 and "not a readable PNG/JPEG" in payload["error"] and "PNG or JPEG" in payload["accepted"]


@pytest.mark.parametrize(("inputs", "message"), [
    ([{"name": "image", "datatype": "FP32", "shape": [1, 3, 3], "data": [0.1] * 9}], "must be 28x28"),
    ([{"name": "image", "datatype": "FP32", "shape": [1, 28, 28], "data": [0.1] * 9}], "does not hold its data"),
    ([{"name": "image", "datatype": "INT32", "shape": [1, 28, 28], "data": [0] * 784}], "FP32, FP64, UINT8 or BYTES"),
    ([{"name": "image", "datatype": "FP32", "shape": [1, 28, 28], "data": [2.0] * 784}], "[0, 1]"),
    ([{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["not an image"]}], "neither a PNG/JPEG"),
    ([{"name": "a", "datatype": "FP32", "shape": [1], "data": [0.0]}] * 2, "exactly one input tensor"),
])
def test_bad_v2_tensors_are_named_400s(images: KServe, inputs: list[dict], message: str) -> None:
    status, payload = images.v2(inputs)
    assert status == 400 and message in payload["error"], payload
    assert payload["accepted"] == "one input tensor: image FP32 [-1, 28, 28]; or image BYTES [-1]"
    assert images.v2([{"name": "image", "datatype": "FP32", "shape": [1, 28, 28],
                       "data": digit().ravel().tolist()}])[0] == 200


def test_same_sentence_same_answer_on_both_servers_v1_and_v2(texts: KServe, server) -> None:
    bodies = [(TEXTS[0].encode(), "text/plain; charset=utf-8"), (json.dumps({"text": TEXTS[1]}).encode(), "application/json"),
              (TEXTS[2].encode(), "application/octet-stream"), (json.dumps({"text": TEXTS[3]}).encode(), "application/json")]
    answers = []
    for body, content_type in bodies:
        for explain in (False, True):
            status, answer = texts.v1(body, content_type, "explain" if explain else "predict")
            ts_status, ts_answer = torchserve(server, "ngsll-text", body, content_type, explain)
            assert status == ts_status == 200
            check_served(answer)
            assert _close(answer, ts_answer)
        answers.append(texts.v1(body, content_type)[1])
    status, response = texts.v2([{"name": "text", "datatype": "BYTES", "shape": [4], "data": TEXTS}])
    assert status == 200
    same_as_v1(v2_outputs(response, k=2), answers)
    envelope = json.dumps({"instances": [{"text": TEXTS[0]}, TEXTS[1]]}).encode()
    status, payload = texts.v1(envelope)
    assert status == 200 and [_close(a, b) for a, b in zip(payload["predictions"], answers[:2])]
    for body in (b"caf\xe9", b'{"text": "   "}'):
        status, payload = texts.v1(body, "application/octet-stream")
        ts_status, ts_payload = torchserve(server, "ngsll-text", body, "application/octet-stream")
        assert status == ts_status == 400 and payload == ts_payload and "UTF-8 sentence" in payload["accepted"]


def test_start_and_stop_serve_a_package_folder(tmp_path: Path) -> None:
    """The CLI behind `make serve SERVER=kserve`: config/kserve.json as the package stage writes it."""
    import subprocess
    import sys

    serve_dir = tmp_path / "serve"
    checkpoint, features = write_model(tmp_path / "model")
    build_archive(checkpoint, features, serve_dir / "model-store", "ngsll-mnist")
    (port,) = free_ports(1)
    (serve_dir / "config").mkdir()
    (serve_dir / "config" / "kserve.json").write_text(json.dumps(
        {"model_name": "ngsll-mnist", "host": "127.0.0.1", "http_port": port, "max_batch_size": 4}))
    command = [sys.executable, "-m", "ngsll_plugins.kserve_server"]
    started = subprocess.run([*command, "start", str(serve_dir)], capture_output=True, text=True, timeout=180)
    try:
        assert started.returncode == 0, started.stderr
        assert f"http://127.0.0.1:{port}/v2/models/ngsll-mnist/infer" in started.stdout
        status, answer = post(f"http://127.0.0.1:{port}/v1/models/ngsll-mnist:predict", png_bytes(digit()), "image/png")
        assert status == 200
        check_served(answer)
        again = subprocess.run([*command, "start", str(serve_dir)], capture_output=True, text=True, timeout=60)
        assert again.returncode != 0 and "already running" in again.stderr
    finally:
        stopped = subprocess.run([*command, "stop", str(serve_dir)], capture_output=True, text=True, timeout=60)
    assert "stopped" in stopped.stdout
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/live", timeout=2)


def test_a_registered_champion_is_served_from_the_mlflow_registry(images: KServe, tmp_path: Path, monkeypatch) -> None:
    """`--model-uri models:/ngsll-mnist@champion`: the registered model's files, the archive's answers."""
    import mlflow

    from ngsll_plugins.tracking import log_pyfunc_model, set_champion

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    mlflow.set_tracking_uri(store)
    mlflow.set_experiment("kserve-champion")
    checkpoint, features = write_model(tmp_path / "model")
    with mlflow.start_run():
        info = log_pyfunc_model(checkpoint, features, "ngsll-mnist", digit()[None])
    set_champion("ngsll-mnist", info.registered_model_version)
    (port,) = free_ports(1)
    start_background(tmp_path / "run", "ngsll-mnist", None, "127.0.0.1", port, 4,
                     model_uri="models:/ngsll-mnist@champion")
    try:
        body = json.dumps({"instances": [digit(4).tolist(), digit(9).tolist()]}).encode()
        status, registered = post(f"http://127.0.0.1:{port}/v1/models/ngsll-mnist:predict", body)
        assert status == 200
        check_served(registered)
        assert _close(registered, images.v1(body)[1])
    finally:
        stop_background(tmp_path / "run")


def test_the_load_benchmark_drives_both_servers_on_one_archive(tmp_path: Path) -> None:
    """benchmarks/load_serving.py --compare on a tiny archive: every row, no errors (timings not asserted)."""
    from test_benchmarks import load_benchmark

    checkpoint, features = write_model(tmp_path / "model")
    mar = build_archive(checkpoint, features, tmp_path / "store", "ngsll-bench", torch_threads=1)
    serve = {"workers": 1, "threads_per_worker": 1, "batch_size": 4, "max_batch_delay": 1, "kserve_max_batch_size": 4}
    rows = load_benchmark("load_serving").compare(mar, png_bytes(digit()), [2], 0.5, serve)
    assert [(server, protocol, endpoint) for server, protocol, endpoint, _, _ in rows] == [
        ("TorchServe", "native", "predictions"), ("TorchServe", "native", "explanations"),
        ("KServe", "v1", ":predict"), ("KServe", "v1", ":explain"), ("KServe", "v2", "/infer")]
    assert all(stats["requests"] > 0 and stats["errors"] == 0 for *_, stats in rows), rows


def test_the_capture_benchmark_measures_both_servers_with_capture_off_and_on(tmp_path: Path) -> None:
    from test_benchmarks import load_benchmark

    checkpoint, features = write_model(tmp_path / "model")
    mar = build_archive(checkpoint, features, tmp_path / "store", "ngsll-bench", torch_threads=1,
                        capture={"enabled": True})
    serve = {"workers": 1, "batch_size": 4, "max_batch_delay": 1, "kserve_max_batch_size": 4,
             "capture": {"enabled": True, "max_file_mb": 1, "max_total_mb": 4}}
    rows = load_benchmark("load_serving").capture_cost(mar, png_bytes(digit()), [2], 0.5, serve)
    assert [(name, label) for name, label, *_ in rows] == [
        ("TorchServe", "off"), ("TorchServe", "on"), ("KServe", "off"), ("KServe", "on")]
    assert all(stats["errors"] == 0 and stats["requests"] > 0 for _, _, _, stats, _ in rows)
    assert [captured is None for *_, captured in rows] == [True, False, True, False]
    assert all(captured > 0 for *_, captured in rows if captured is not None)
