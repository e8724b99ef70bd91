"""A real TorchServe on 127.0.0.1 (free ports, logs in a temporary folder) serving a small NGSLL.

Checks the handler end to end: PNG and JSON requests, the contribution-sum invariant, server-side
batching equal to unbatched answers, the explain endpoints, 400s that leave the worker alive, token
authorisation in the production config, the MLflow deployment plugin's create -> predict -> explain ->
delete cycle, the KServe layout answering the v1 protocol, and a text model archive answering sentences
with word weights.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ts")
pytest.importorskip("model_archiver")

from conftest import tiny_args  # noqa: E402
from explanation_contract import check_served  # noqa: E402
from ngsll import build_model  # noqa: E402
from ngsll.checkpoint import checkpoint_dict  # noqa: E402
from ngsll.simplify import cell_names  # noqa: E402
from ngsll_plugins.torchserve import (  # noqa: E402
    ServerConfig, TorchServeClient, TorchServeError, build_archive, free_ports, free_worker_port, key_file,
    kserve_config, read_properties, start, stop, wait_until_ready,
)
from ngsll.serving import TextService  # noqa: E402
from ngsll.text import TextEncoder  # noqa: E402
from test_serving import assert_same_answer, digit, png_bytes  # noqa: E402
from test_text_serving import (  # noqa: E402
    CLASSES as TEXT_CLASSES, CORPUS, SENTENCE, check_answer, text_model, write_text_model,
)

pytestmark = pytest.mark.slow
CLASSES = ["0-4", "5-9"]


def write_model(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build_model(tiny_args(num_features=49, image_size=28, k=5))
    torch.save(checkpoint_dict(model, {"seed": 0}), folder / "model.pt")
    (folder / "features.json").write_text(json.dumps({"feature_names": cell_names(7), "class_names": CLASSES}))
    return folder / "model.pt", folder / "features.json"


class Server:
    """A TorchServe started in its own folder; ``client`` talks to it."""

    def __init__(self, root: Path, config: ServerConfig, model: str | None) -> None:
        self.root, self.config = root, config
        self.store = root / "model-store"
        self.client = TorchServeClient(
            f"http://127.0.0.1:{config.inference_port}", f"http://127.0.0.1:{config.management_port}", timeout=30
        )
        start(root, self.store, config.write(root / "config" / "config.properties"))
        try:
            if config.token_auth:
                self.client = TorchServeClient.from_key_file(
                    key_file(root), inference_url=self.client.inference_url, management_url=self.client.management_url
                )
            wait_until_ready(self.client, model)
        except Exception:
            self.stop()
            raise

    def stop(self) -> None:
        stop(self.root)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchserve")
    checkpoint, features = write_model(root / "model")
    build_archive(checkpoint, features, root / "model-store", "ngsll")
    config = ServerConfig(*free_ports(5), worker_port=free_worker_port(), token_auth=False, model_api=True,
                          models={"ngsll": {"mar": "ngsll.mar"}})
    running = Server(root, config, "ngsll")
    running.client.register("ngsll.mar", "ngsll-batched", batch_size=4, max_batch_delay=300)
    yield running
    running.stop()


def post(url: str, body: bytes, content_type: str = "application/json", token: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": content_type, **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.headers["Content-Type"].startswith("application/json")
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def check_invariant(answer: dict) -> None:
    check_served(answer)  # docs/schema/explanation-v1.schema.json and its invariants
    assert len(answer["weights"]) == answer["k"] == 5  # the test digits ink more than 5 cells
    assert sum(w["contribution"] for w in answer["weights"]) == pytest.approx(answer["logit"], abs=1e-4)
    assert answer["label"] in CLASSES and set(answer["probabilities"]) == set(CLASSES)


def test_png_and_json_requests_answer_with_weights(server: Server) -> None:
    url = f"{server.client.inference_url}/predictions/ngsll"
    for body, content_type in ((png_bytes(digit()), "image/png"), (json.dumps({"image": digit().tolist()}).encode(), "application/json")):
        status, answer = post(url, body, content_type)
        assert status == 200
        check_invariant(answer)
    status, envelope = post(url, json.dumps({"instances": [digit(1).tolist(), digit(2).tolist()]}).encode())
    assert status == 200 and len(envelope["predictions"]) == 2


def test_server_side_batching_gives_the_unbatched_answers(server: Server) -> None:
    bodies = [json.dumps({"image": digit(seed).tolist()}).encode() for seed in range(7)]
    bodies.insert(3, b'{"image": [[1, 2, 3]]}')
    unbatched = [post(f"{server.client.inference_url}/predictions/ngsll", body) for body in bodies]
    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        batched = list(pool.map(lambda body: post(f"{server.client.inference_url}/predictions/ngsll-batched", body), bodies))
    assert [status for status, _ in batched] == [200, 200, 200, 400, 200, 200, 200, 200]
    for (status, single), (_, together) in zip(unbatched, batched):
        if status == 200:
            assert_same_answer(single, together)


@pytest.mark.parametrize("path", ["/explanations/ngsll", "/v1/models/ngsll:explain"])
def test_explain_endpoints_add_the_weight_map(server: Server, path: str) -> None:
    status, answer = post(server.client.inference_url + path, json.dumps({"image": digit().tolist()}).encode())
    assert status == 200
    check_invariant(answer)
    weight_map = np.asarray(answer["weight_map"])
    assert weight_map.shape == (7, 7) and (weight_map != 0).sum() == 5
    assert set(answer["class_weights"]) == {w["feature"] for w in answer["weights"]}


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b"this is not an image", "application/octet-stream", 400),
        (png_bytes(digit())[:50], "image/png", 400),
        (b'{"image": [[0.5, 0.5]]}', "application/json", 400),
        (b'{"image": [[NaN]]}', "application/json", 400),
        (b'{"text": ""}', "application/json", 400),
        (b"\xff\xd8" + b"\x00" * (1 << 20), "image/jpeg", 413),  # one byte over the service's 1 MiB
        (b"a digit, sent as curl -d sends it", "application/x-www-form-urlencoded", 400),
        (b"", "image/png", 400),
    ],
)
def test_bad_requests_get_400_and_the_worker_stays_alive(server: Server, body: bytes, content_type: str,
                                                          expected: int) -> None:
    url = f"{server.client.inference_url}/predictions/ngsll"
    status, payload = post(url, body, content_type)
    assert status == expected
    check_served(payload)
    if content_type.endswith("form-urlencoded"):  # named as such, not as an empty body
        assert "x-www-form-urlencoded" in payload["error"] and "text/plain" in payload["error"]
    if not body:
        assert "empty" in payload["error"], payload
    assert payload["error"] and "PNG or JPEG" in payload["accepted"]
    status, answer = post(url, json.dumps({"image": digit().tolist()}).encode())
    assert status == 200
    check_invariant(answer)


def test_production_config_requires_the_token_and_keeps_the_model_api_off(tmp_path: Path) -> None:
    checkpoint, features = write_model(tmp_path / "model")
    build_archive(checkpoint, features, tmp_path / "model-store", "ngsll")
    config = ServerConfig(*free_ports(5), worker_port=free_worker_port(),
                          models={"ngsll": {"mar": "ngsll.mar", "batch_size": 4, "max_batch_delay": 5}})
    assert config.token_auth and not config.model_api and config.bind == "127.0.0.1"
    server = Server(tmp_path, config, "ngsll")
    try:
        url = f"{server.client.inference_url}/predictions/ngsll"
        body = json.dumps({"image": digit().tolist()}).encode()
        assert post(url, body)[0] in (400, 401)  # no token: refused
        status, answer = post(url, body, token=server.client.inference_token)
        assert status == 200
        check_invariant(answer)
        with pytest.raises(TorchServeError) as refused:
            server.client.register("ngsll.mar", "other")
        assert refused.value.status == 405
        with urllib.request.urlopen(f"http://127.0.0.1:{config.metrics_port}/metrics", timeout=10) as metrics:
            assert b"ts_inference_requests_total" in metrics.read()
    finally:
        server.stop()


def test_mlflow_deployment_plugin_create_predict_explain_delete(server: Server, tmp_path: Path, monkeypatch) -> None:
    import mlflow
    from mlflow.deployments import get_deploy_client

    from ngsll_plugins.tracking import log_pyfunc_model, set_champion

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("deploy-test")
    checkpoint, features = write_model(tmp_path / "model")
    with mlflow.start_run():
        info = log_pyfunc_model(checkpoint, features, "ngsll-deploy", digit()[None])
    set_champion("ngsll-deploy", info.registered_model_version)
    monkeypatch.setenv("NGSLL_TS_INFERENCE_URL", server.client.inference_url)
    monkeypatch.setenv("NGSLL_TS_MANAGEMENT_URL", server.client.management_url)
    monkeypatch.setenv("NGSLL_TS_MODEL_STORE", str(server.store))

    names = {ep.name: ep.value for ep in entry_points(group="mlflow.deployments")}
    assert names.get("ngsll-torchserve") == "ngsll_plugins.deployment"
    assert not names.get("torchserve", "").startswith("ngsll")  # mlflow-torchserve's name stays theirs
    client = get_deploy_client("ngsll-torchserve")
    client.create_deployment("ngsll-deploy", "models:/ngsll-deploy@champion",
                             config={"batch_size": 2, "max_batch_delay": 20})
    assert "ngsll-deploy" in {d["name"] for d in client.list_deployments()}
    assert client.get_deployment("ngsll-deploy")["modelName"] == "ngsll-deploy"
    predictions = client.predict("ngsll-deploy", np.stack([digit(3), digit(4)])).get_predictions()
    assert len(predictions) == 2
    for answer in predictions.to_dict(orient="records"):
        check_invariant(answer)
    explained = client.explain("ngsll-deploy", digit(5)[None])
    assert np.asarray(explained["explanations"][0]["weight_map"]).shape == (7, 7)
    client.update_deployment("ngsll-deploy", config={"workers": 1})
    updated = client.update_deployment("ngsll-deploy", "models:/ngsll-deploy@champion",
                                       config={"batch_size": 2, "max_batch_delay": 20})
    assert updated["version"] == "2.0"  # a rolling update: the next version replaced the first
    assert [entry["modelVersion"] for entry in server.client.describe("ngsll-deploy")] == ["2.0"]
    check_invariant(client.predict("ngsll-deploy", digit(6)[None]).get_predictions().to_dict(orient="records")[0])
    client.delete_deployment("ngsll-deploy")
    assert "ngsll-deploy" not in {d["name"] for d in client.list_deployments()}


def test_kserve_layout_answers_the_v1_protocol_like_the_plain_endpoint(server: Server, tmp_path: Path) -> None:
    """The package stage's KServe layout, started the way KServe's runtime starts it (`torchserve --start
    --model-store <mount>/model-store --ts-config <mount>/config/config.properties`), with TS_* variables
    moving its 0.0.0.0 addresses to free loopback ports as a pod's environment would."""
    mount = tmp_path / "mnt-models"
    checkpoint, features = write_model(tmp_path / "model")
    build_archive(checkpoint, features, mount / "model-store", "ngsll")
    config = kserve_config({"ngsll": {"mar": "ngsll.mar"}}).write(mount / "config" / "config.properties")
    properties = read_properties(config)
    assert properties["inference_address"] == "http://0.0.0.0:8085" and "ngsll" in properties["model_snapshot"]
    inference, management, metrics, grpc, grpc_management = free_ports(5)
    env = {"TS_INFERENCE_ADDRESS": f"http://127.0.0.1:{inference}", "TS_MANAGEMENT_ADDRESS": f"http://127.0.0.1:{management}",
           "TS_METRICS_ADDRESS": f"http://127.0.0.1:{metrics}", "TS_GRPC_INFERENCE_ADDRESS": "127.0.0.1",
           "TS_GRPC_MANAGEMENT_ADDRESS": "127.0.0.1", "TS_GRPC_INFERENCE_PORT": str(grpc),
           "TS_GRPC_MANAGEMENT_PORT": str(grpc_management), "TS_INITIAL_WORKER_PORT": str(free_worker_port())}
    workdir = tmp_path / "run"
    start(workdir, mount / "model-store", config, env=env)
    try:
        client = TorchServeClient(f"http://127.0.0.1:{inference}", f"http://127.0.0.1:{management}", timeout=30)
        wait_until_ready(client, "ngsll")  # the snapshot's model has a READY worker
        images = [digit(0), digit(7)]
        instances = {"instances": [{"image": images[0].tolist()}, {"b64": base64.b64encode(png_bytes(images[1])).decode()}]}
        body = json.dumps(instances).encode()
        status, predicted = post(f"{client.inference_url}/v1/models/ngsll:predict", body)
        assert status == 200 and list(predicted) == ["predictions"] and len(predicted["predictions"]) == 2
        status, explained = post(f"{client.inference_url}/v1/models/ngsll:explain", body)
        assert status == 200 and list(explained) == ["explanations"]
        assert all(len(item["weight_map"]) == 7 for item in explained["explanations"])
        for image, answer in zip(images, predicted["predictions"]):
            status, plain = post(f"{server.client.inference_url}/predictions/ngsll", png_bytes(image), "image/png")
            assert status == 200
            assert_same_answer(answer, plain)
        status, error = post(f"{client.inference_url}/v1/models/ngsll:predict", b'{"instances": []}')
        assert status == 400 and "instances" in error["error"]
    finally:
        stop(workdir)


def test_a_text_archive_answers_sentences_with_word_weights(server: Server, tmp_path: Path) -> None:
    """A text model packaged with its encoder.json, registered (batched) on the running server; its answers
    equal the in-process TextService's, raw UTF-8 and JSON alike, and a bad sentence leaves the worker alive."""
    encoder = TextEncoder.fit(CORPUS, max_length=12)
    model = text_model(encoder)
    checkpoint, features, encoder_file = write_text_model(tmp_path / "text", encoder)
    build_archive(checkpoint, features, server.store, "ngsll-text", encoder=encoder_file)
    server.client.register("ngsll-text.mar", "ngsll-text", batch_size=4, max_batch_delay=300)
    try:
        url = f"{server.client.inference_url}/predictions/ngsll-text"
        sentences = [SENTENCE, "Where was the comedy made?", "What is a funny script?", "Who liked the theatre?"]
        expected = [answer for _, answer in TextService(model, encoder, TEXT_CLASSES).respond(sentences)]
        bodies = [(sentences[0].encode(), "text/plain; charset=utf-8"), (sentences[1].encode(), "application/octet-stream"),
                  (json.dumps({"text": sentences[2]}).encode(), "application/json"),
                  (json.dumps({"text": sentences[3]}).encode(), "application/json")]
        with ThreadPoolExecutor(max_workers=len(bodies)) as pool:  # one server-side batch of mixed bodies
            answers = list(pool.map(lambda item: post(url, *item), bodies))
        for text, (status, answer), reference in zip(sentences, answers, expected):
            assert status == 200
            check_served(answer)
            check_answer(answer, text)
            assert_same_answer(answer, reference)
        status, explained = post(f"{server.client.inference_url}/explanations/ngsll-text", SENTENCE.encode(), "text/plain")
        assert status == 200 and [entry["token"] for entry in explained["token_weights"]][:3] == ["who", "made", "the"]
        for body in (b"caf\xe9", b'{"text": "   "}'):
            status, payload = post(url, body, "application/octet-stream")
            assert status == 400 and "UTF-8 sentence" in payload["accepted"]
        assert post(url, SENTENCE.encode(), "text/plain")[0] == 200
    finally:
        server.client.unregister("ngsll-text")


def test_mlflow_deployment_plugin_serves_a_registered_text_model(server: Server, tmp_path: Path, monkeypatch) -> None:
    import mlflow
    from mlflow.deployments import get_deploy_client

    from ngsll_plugins.tracking import log_pyfunc_model

    encoder = TextEncoder.fit(CORPUS, max_length=12)
    checkpoint, features, encoder_file = write_text_model(tmp_path / "text", encoder)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("deploy-text")
    with mlflow.start_run():
        log_pyfunc_model(checkpoint, features, "ngsll-text-deploy", CORPUS[:2], encoder_path=encoder_file)
    monkeypatch.setenv("NGSLL_TS_INFERENCE_URL", server.client.inference_url)
    monkeypatch.setenv("NGSLL_TS_MANAGEMENT_URL", server.client.management_url)
    monkeypatch.setenv("NGSLL_TS_MODEL_STORE", str(server.store))

    client = get_deploy_client("ngsll-torchserve")
    client.create_deployment("ngsll-text-deploy", "models:/ngsll-text-deploy/1")
    try:
        sentences = [SENTENCE, "Where is the comedy theatre?"]
        predictions = client.predict("ngsll-text-deploy", sentences).get_predictions()
        expected = TextService(text_model(encoder), encoder, TEXT_CLASSES).answer(sentences)
        for text, answer, reference in zip(sentences, predictions.to_dict(orient="records"), expected):
            check_answer(answer, text)
            assert_same_answer(answer, reference)
        explained = client.explain("ngsll-text-deploy", SENTENCE)["explanations"][0]
        assert [entry["token"] for entry in explained["token_weights"]][-1] == "film"
    finally:
        client.delete_deployment("ngsll-text-deploy")


def worker_pids(config: ServerConfig) -> list[int]:
    """Process ids of the Python workers of the server started with ``config`` (the soak benchmark's finder)."""
    from test_benchmarks import load_benchmark

    return load_benchmark("soak_serving").worker_pids(config.worker_port)


def test_a_killed_worker_costs_a_retrying_client_nothing(server: Server) -> None:
    """TorchServe fails the in-flight batch of a dying worker with 507 and answers 503 until the restart;
    the project's client retries those (idempotent) predictions with bounded backoff."""
    import os
    import signal

    client = TorchServeClient(server.client.inference_url, server.client.management_url, timeout=30)
    body = json.dumps({"image": digit(2).tolist()}).encode()
    check_invariant(client.predict("ngsll", body))
    pids = worker_pids(server.config)
    assert pids, "no worker process found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    for _ in range(10):  # straight after the kill: no worker until the frontend restarts one
        check_invariant(client.predict("ngsll", body))
    assert set(worker_pids(server.config)).isdisjoint(pids)  # answered by restarted workers


@pytest.mark.parametrize(("megabytes", "answered"), [(2, True), (10, True), (50, False)])
def test_oversized_bodies_get_a_413_up_to_the_frontend_limit_and_never_hurt_the_worker(
        server: Server, megabytes: int, answered: bool) -> None:
    """What a client sees (the production ServerConfig's max_request_size, 16 MiB): a 413 JSON answer from
    the handler up to it; beyond it TorchServe's frontend drops the connection without an HTTP answer."""
    body = b"\x89PNG" + b"\x00" * (megabytes << 20)
    url = f"{server.client.inference_url}/predictions/ngsll"
    if answered:
        status, payload = post(url, body, "image/png")
        assert status == 413 and "the limit is 1048576" in payload["error"]
    else:
        with pytest.raises(OSError):  # connection reset / broken pipe: no status line comes back
            post(url, body, "image/png")
    assert post(url, json.dumps({"image": digit().tolist()}).encode())[0] == 200  # the worker is fine


def test_a_short_soak_loses_nothing_through_a_worker_kill_and_a_version_update(tmp_path: Path) -> None:
    """benchmarks/soak_serving.py on a tiny model for a few seconds: every request is answered 200 and
    correct although a worker is killed and the model's version replaced inside the window."""
    from test_benchmarks import load_benchmark

    soak = load_benchmark("soak_serving")
    checkpoint, features = write_model(tmp_path / "model")
    pngs = [png_bytes(digit(seed)) for seed in range(8)]
    result = soak.run_soak(checkpoint, features, pngs, {"batch_size": 4, "max_batch_delay": 5, "workers": 2},
                           clients=4, seconds=24, max_requests=40_000)
    counts = result["counts"]
    assert counts["ok"] > 100 and set(counts) == {"ok"}, counts  # nothing wrong, refused or lost
    assert [what.split(":")[0] for _, what in result["log"]] == ["worker kill", "version update"]
    assert "SIGKILL" in result["log"][0][1] and result["served"] == ["2.0"]


def test_the_mlflow_deployments_cli_serves_the_champion(server: Server, tmp_path: Path) -> None:
    """`mlflow deployments create -t ngsll-torchserve -m models:/ngsll-mnist@champion`, predict, delete."""
    import subprocess
    import sys

    import mlflow

    from ngsll_plugins.tracking import log_pyfunc_model, set_champion

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(store)
    mlflow.set_experiment("deploy-cli")
    checkpoint, features = write_model(tmp_path / "model")
    with mlflow.start_run():
        info = log_pyfunc_model(checkpoint, features, "ngsll-mnist", digit()[None])
    set_champion("ngsll-mnist", info.registered_model_version)
    env = {**__import__("os").environ, "MLFLOW_TRACKING_URI": store,
           "NGSLL_TS_INFERENCE_URL": server.client.inference_url,
           "NGSLL_TS_MANAGEMENT_URL": server.client.management_url,
           "NGSLL_TS_MODEL_STORE": str(server.store)}
    (tmp_path / "digits.json").write_text(json.dumps({"instances": [{"image": digit(8).tolist()}]}))
    output = tmp_path / "answer.json"

    def cli(*arguments: str) -> None:
        result = subprocess.run([sys.executable, "-m", "mlflow", "deployments", *arguments, "-t", "ngsll-torchserve",
                                 "--name", "ngsll-mnist-cli"], env=env, capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stderr[-3000:]

    cli("create", "-m", "models:/ngsll-mnist@champion")
    try:
        cli("predict", "--input-path", str(tmp_path / "digits.json"), "--output-path", str(output))
        answers = json.loads(output.read_text())
        answers = answers.get("predictions", answers)
        check_invariant(answers[0] if isinstance(answers, list) else answers)
    finally:
        cli("delete")
    assert "ngsll-mnist-cli" not in {m["modelName"] for m in server.client.list()["models"]}


def test_an_archive_sets_its_workers_torch_threads(server: Server, tmp_path: Path) -> None:
    """The package stage bakes serve.threads_per_worker into the archive: two workers of one thread each on
    two cores instead of two workers fighting over all of them."""
    checkpoint, features = write_model(tmp_path / "model")
    build_archive(checkpoint, features, server.store, "ngsll-threads", torch_threads=1)
    server.client.register("ngsll-threads.mar", "ngsll-threads", workers=2)
    try:
        check_invariant(server.client.predict("ngsll-threads", json.dumps({"image": digit().tolist()}).encode()))
        logged = "\n".join(path.read_text(errors="replace") for path in (server.root / "logs").glob("*.log"))
        loaded = [line for line in logged.splitlines() if "NGSLL (image" in line and "1 torch thread(s)" in line]
        assert len(loaded) >= 2  # both workers
    finally:
        server.client.unregister("ngsll-threads")
