"""NGSLL on KServe's Python model server (``kserve`` 0.21): the v1 protocol and the Open Inference Protocol v2.

A thin adapter over :mod:`ngsll.serving`, next to the TorchServe handler (TorchServe was archived upstream in
2025; this is the maintained runtime). The same framework-free service answers both, so the same request
gets the same JSON from either server.

* v1: ``POST /v1/models/<name>:predict`` and ``:explain`` take every body the TorchServe endpoint takes
  (PNG/JPEG bytes, ``{"image": ...}``, ``{"text": ...}``, a raw sentence, the ``{"instances": [...]}``
  envelope). Bodies reach the service as bytes (CloudEvents excepted), so bad ones get the service's own
  400 body ``{"error", "accepted"}`` (413 over the size limit), exactly as from TorchServe.
* v2: ``POST /v2/models/<name>/infer`` with one input tensor (images: FP32 ``[n, H, W]`` (``[n, H, W, 3]``
  RGB) or BYTES ``[n]`` PNG/JPEG; text: BYTES ``[n]``) answers the tensors of
  :meth:`ngsll.serving.Service.tensors`: ``label``, ``probabilities``, ``logit`` and the explanation
  ``feature_index``, ``feature_name``, ``weight``, ``value``, ``contribution`` (``[n, K]``, padded with
  -1 / "" / 0). ``GET /v2/models/<name>`` lists them; ``/v2/health/live``, ``/v2/health/ready`` and
  ``/v2/models/<name>/ready`` answer. The explanation schema: ``docs/explanations.md``.

Requests are batched greedily: while the model runs a batch, the requests that arrive wait and go together
into the next forward pass (at most ``max_batch_size`` requests), so a lone client never waits for a
batching delay. The model runs on one thread beside the event loop, which keeps accepting requests. A body
over 16 MiB is drained unread and answered 413. With a capture folder (``--capture-dir``; ``start`` uses
``SERVE_DIR/run-kserve/captures`` when the package's ``config/capture.json`` turns capture on) every
answered explanation is written by :mod:`ngsll.capture`, counted on ``/metrics``.

Command line (``make serve SERVER=kserve``, ``make serve-stop SERVER=kserve``)::

    python -m ngsll_plugins.kserve_server start SERVE_DIR [--model-uri models:/ngsll-mnist@champion]
    python -m ngsll_plugins.kserve_server stop SERVE_DIR
    python -m ngsll_plugins.kserve_server run --model-dir DIR --name NAME [--host H --port P]

``start`` serves the package stage's archive of SERVE_DIR (``model-store/*.mar``; host, port and batch size
from ``config/kserve.json``) in the background, logs and pid under ``SERVE_DIR/run-kserve``; ``run`` serves
in the foreground (the container's command; ``--model-dir`` is a folder holding one ``.mar`` or the plain
``*.pt`` checkpoint, ``features.json`` and, for text, ``encoder.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path
from typing import Any

from fastapi.responses import JSONResponse

import kserve
from kserve import InferOutput, InferRequest, InferResponse
from kserve.errors import InvalidInput
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.rest.server import RESTServer
from ngsll.capture import CaptureSettings, CaptureSink
from ngsll.serving import DEFAULT_MAX_INSTANCES, RequestError, Service, load_service

DEFAULT_PORT = 8090
READY_TIMEOUT_S = 120.0
# The largest body read into memory (TorchServe's max_request_size in the packaged config). The service
# itself refuses bodies over its own 1 MiB with a 413; this bound only keeps larger ones out of memory.
MAX_REQUEST_BYTES = 16 << 20


class NGSLLModel(kserve.Model):
    """An :class:`ngsll.serving.Service` as a KServe model: v1 predict/explain and v2 infer, batched."""

    def __init__(self, name: str, service: Service, max_batch_size: int = 64) -> None:
        super().__init__(name)
        self.service, self.max_batch_size = service, max_batch_size
        self._queue: asyncio.Queue | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ngsll-model")
        self.ready = True

    def load(self) -> bool:  # the service is loaded before the model is made
        self.ready = True
        return True

    async def predict(self, payload: Any, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> dict | InferResponse:
        if isinstance(payload, InferRequest):
            return await self._infer(payload)
        return await self._respond(payload, explain=False)

    async def explain(self, payload: Any, headers: dict[str, str] | None = None) -> dict:
        return await self._respond(payload, explain=True)

    def get_input_types(self) -> list[dict[str, Any]]:
        return self.service.input_tensors()

    def get_output_types(self) -> list[dict[str, Any]]:
        return self.service.output_tensors()

    async def _respond(self, body: Any, explain: bool) -> dict:
        status, payload = await self._submit(("v1", body, explain))
        if status != 200:
            raise ServedError(status, payload)
        return payload

    async def _infer(self, request: InferRequest) -> InferResponse:
        if len(request.inputs) != 1:
            raise self._bad_tensor(f"send exactly one input tensor, got {len(request.inputs)}")
        tensor = request.inputs[0]
        try:
            values = tensor.as_numpy()
        except (InvalidInput, ValueError, TypeError) as error:
            raise self._bad_tensor(f"input tensor {tensor.name!r} ({tensor.datatype} {tensor.shape}) does not hold "
                                   f"its data ({error})") from error
        try:
            inputs = self.service.decode_tensor(tensor.datatype, list(tensor.shape), values)
        except RequestError as error:
            raise ServedError(error.status, error.payload()) from error
        status, arrays = await self._submit(("v2", inputs, False))
        if status != 200:
            raise ServedError(status, arrays)
        outputs = []
        for spec in self.service.output_tensors():
            array = arrays[spec["name"]]
            output = InferOutput(name=spec["name"], shape=list(array.shape), datatype=spec["datatype"])
            output.set_data_from_numpy(array, binary_data=False)
            outputs.append(output)
        return InferResponse(response_id=request.id or "", model_name=self.name, infer_outputs=outputs)

    def _bad_tensor(self, message: str) -> ServedError:
        return ServedError(400, {"error": message, "accepted": self.service.accepted_tensors})

    async def _submit(self, item: tuple[str, Any, bool]) -> tuple[int, Any]:
        """Queue one request for the next batch and wait for its ``(status, payload)``."""
        if self._queue is None:  # created in the server's event loop, on its first request
            self._queue = asyncio.Queue()
            asyncio.get_running_loop().create_task(self._batches())
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future

    async def _batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            items = [item for item, _ in batch]
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch, items)
            except Exception as error:  # a failed forward pass fails its own batch only, the loop goes on
                results = [(500, {"error": f"{type(error).__name__}: {error}", "accepted": ""})] * len(batch)
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)

    def _run_batch(self, items: list[tuple[str, Any, bool]]) -> list[tuple[int, Any]]:
        """One forward pass for the batch's v1 requests and one for its v2 requests."""
        results: list[tuple[int, Any] | None] = [None] * len(items)
        v1 = [i for i, (protocol, _, _) in enumerate(items) if protocol == "v1"]
        if v1:
            answers = self.service.respond([items[i][1] for i in v1], [items[i][2] for i in v1])
            for i, answer in zip(v1, answers):
                results[i] = answer
        v2 = [i for i, (protocol, _, _) in enumerate(items) if protocol == "v2"]
        if v2:
            for i, arrays in zip(v2, self.service.respond_tensors([items[i][1] for i in v2])):
                results[i] = (200, arrays)
        return results


class CaptureCounters:
    """Prometheus collector of a capture sink's counts: ``ngsll_explanations_captured_total`` and
    ``ngsll_explanations_dropped_total`` by model, read from the sink at scrape time (nothing per request)."""

    def __init__(self, model: str, sink: CaptureSink) -> None:
        self.model, self.sink = model, sink

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        for name, value, text in (("ngsll_explanations_captured", self.sink.captured, "explanations written"),
                                  ("ngsll_explanations_dropped", self.sink.dropped,
                                   "explanations dropped (queue full, disk full or folder not writable)")):
            family = CounterMetricFamily(name, f"NGSLL capture: {text}", labels=["model"])
            family.add_metric([self.model], value)
            yield family


class ServedError(Exception):
    """A request the service refused: answered with ``status`` and the service's ``{"error", "accepted"}``."""

    def __init__(self, status: int, payload: dict[str, str]) -> None:
        super().__init__(payload.get("error", ""))
        self.status, self.payload = status, payload


async def served_error_handler(_, error: ServedError) -> JSONResponse:
    return JSONResponse(status_code=error.status, content=error.payload)


class RawBodyDataPlane(DataPlane):
    """KServe's data plane, except that a v1 body reaches the model as the bytes it came as.

    KServe parses JSON bodies itself (and refuses some that Python's ``json`` reads, such as ``NaN``) with
    its own error text; the NGSLL service parses them as the TorchServe handler does, so both servers give
    the same answer and the same 400 body. CloudEvents still go through KServe's decoder. An explanation's
    response headers are its own (KServe 0.21 sends the request's back, ``Content-Type: image/png`` included).
    """

    async def explain(self, model_name: str, request: Any, headers: dict[str, str] | None = None):
        response, _ = await super().explain(model_name, request, dict(headers or {}))
        return response, {}

    def decode(self, body, headers, protocol_version: str = "v1", model_name: str | None = None):
        from cloudevents.sdk.converters.util import has_binary_headers

        if isinstance(body, (bytes, bytearray)) and protocol_version == "v1" and not (
            headers and (has_binary_headers(headers) or headers.get("content-type") == "application/cloudevents+json")
        ):
            return bytes(body), {}
        return super().decode(body, headers, protocol_version=protocol_version, model_name=model_name)


class BodyLimit:
    """ASGI middleware: a body declared larger than ``max_bytes`` is drained unread (never held in memory)
    and answered 413 with the NGSLL error body, so the client gets an HTTP answer, not a reset connection."""

    def __init__(self, app, max_bytes: int = MAX_REQUEST_BYTES) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        length = dict(scope.get("headers") or []).get(b"content-length") if scope["type"] == "http" else None
        if length is None or not length.isdigit() or int(length) <= self.max_bytes:
            await self.app(scope, receive, send)
            return
        while (await receive()).get("more_body", False):
            pass
        body = json.dumps({"error": f"the request body has {int(length)} bytes; the server reads at most "
                                    f"{self.max_bytes}", "accepted": "a body the model's service takes"}).encode()
        await send({"type": "http.response.start", "status": HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class LoopbackRESTServer(RESTServer):
    """KServe's REST server on a chosen host (KServe's binds every interface) with NGSLL's 4xx bodies and a
    bound on the body size (:class:`BodyLimit`)."""

    def __init__(self, *args: Any, host: str = "127.0.0.1", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config.host = host

    def _add_exception_handlers(self, app) -> None:
        super()._add_exception_handlers(app)
        app.add_exception_handler(ServedError, served_error_handler)

    def _add_middlewares(self, app) -> None:
        super()._add_middlewares(app)
        app.add_middleware(BodyLimit)


class NGSLLModelServer(kserve.ModelServer):
    """KServe's ``ModelServer`` with :class:`RawBodyDataPlane` and :class:`LoopbackRESTServer` (REST only)."""

    def __init__(self, host: str, http_port: int) -> None:
        super().__init__(http_port=http_port, enable_grpc=False, workers=1)
        self.host = host
        self.dataplane = RawBodyDataPlane(model_registry=self.registered_models)

    def start(self, models: list[kserve.Model]) -> None:
        self._register_and_check_atleast_one_model_is_ready(models)
        self._rest_server = LoopbackRESTServer(
            "kserve.model_server:app", self.dataplane, self.model_repository_extension, self.http_port,
            host=self.host, workers=1, grace_period=self.grace_period, timeout_keep_alive=self.timeout_keep_alive,
        )
        self.servers.append(self._rest_server.start())
        self.setup_event_loop()
        asyncio.run(self._serve())  # uvicorn ends the server on SIGTERM / SIGINT


def model_files_in(model_dir: Path, unpack_to: Path) -> tuple[Path, Path, Path | None]:
    """(checkpoint, features.json, encoder.json or None) of a model folder: one ``.mar`` archive (unpacked
    into ``unpack_to``) or the plain files the archive holds."""
    archives = sorted(model_dir.glob("*.mar"))
    if len(archives) > 1:
        raise SystemExit(f"{model_dir} holds {len(archives)} archives ({', '.join(a.name for a in archives)}); "
                         "point --model-dir at a folder with one")
    if archives:
        with zipfile.ZipFile(archives[0]) as archive:
            archive.extractall(unpack_to)
        manifest = json.loads((unpack_to / "MAR-INF" / "MANIFEST.json").read_text())
        model_dir = unpack_to
        checkpoint = model_dir / manifest["model"]["serializedFile"]
    else:
        checkpoints = sorted(model_dir.glob("*.pt"))
        if len(checkpoints) != 1:
            raise SystemExit(f"{model_dir} holds no .mar and {len(checkpoints)} .pt checkpoints; it needs one of either")
        checkpoint = checkpoints[0]
    if not (model_dir / "features.json").exists():
        raise SystemExit(f"{model_dir} has no features.json beside {checkpoint.name}")
    encoder = model_dir / "encoder.json"
    return checkpoint, model_dir / "features.json", encoder if encoder.exists() else None


def serve(name: str, checkpoint: Path, features: Path, encoder: Path | None, host: str, port: int,
          max_batch_size: int, capture: CaptureSettings | None = None, version: str = "") -> None:
    """Load the model and serve it in the foreground until SIGTERM / SIGINT; with ``capture`` every answered
    explanation goes to its folder (:mod:`ngsll.capture`), counted on ``/metrics``."""
    threads = os.environ.get("NGSLL_TORCH_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    service = load_service(checkpoint, features, encoder)
    if capture is not None:
        from prometheus_client import REGISTRY

        service.capture = CaptureSink(capture, name, version)
        REGISTRY.register(CaptureCounters(name, service.capture))
    NGSLLModelServer(host, port).start([NGSLLModel(name, service, max_batch_size)])


def wait_until_ready(url: str, name: str, process: subprocess.Popen | None = None,
                     timeout: float = READY_TIMEOUT_S) -> None:
    """Poll ``/v2/models/<name>/ready`` until it answers 200; fail early if ``process`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the KServe server exited with code {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/v2/models/{name}/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url}/v2/models/{name}/ready did not answer 200 within {timeout:.0f} s")


def start_background(run_dir: Path, name: str, model_dir: Path | None, host: str, port: int, max_batch_size: int,
                     model_uri: str | None = None, capture: dict | None = None) -> subprocess.Popen:
    """Start ``run`` as a background process (log ``run_dir/kserve.log``, pid ``run_dir/kserve.pid``); with
    ``capture`` (a ``capture.json`` mapping) capturing into ``run_dir/captures``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    pid_file = run_dir / "kserve.pid"
    if pid_file.exists() and _alive(int(pid_file.read_text())):
        raise SystemExit(f"a KServe server is already running (pid {pid_file.read_text().strip()}); stop it first")
    command = [sys.executable, "-m", "ngsll_plugins.kserve_server", "run", "--name", name, "--host", host,
               "--port", str(port), "--max-batch-size", str(max_batch_size)]
    command += ["--model-uri", model_uri] if model_uri else ["--model-dir", str(model_dir)]
    if capture:
        command += ["--capture-dir", str(run_dir / "captures"), "--capture", json.dumps(capture)]
    with open(run_dir / "kserve.log", "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    pid_file.write_text(str(process.pid))
    try:
        wait_until_ready(f"http://{host}:{port}", name, process)
    except Exception:
        stop_background(run_dir)
        raise
    return process


def stop_background(run_dir: Path, timeout: float = 30.0) -> bool:
    """SIGTERM the server started in ``run_dir`` and wait for it to exit; False if none was running."""
    pid_file = run_dir / "kserve.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text())
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    pid_file.unlink()
    return True


def _alive(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)  # reap our own child if it exited
        if finished:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def read_config(serve_dir: Path) -> dict[str, Any]:
    """The package stage's ``config/kserve.json`` (model name, host, port, batch size)."""
    path = serve_dir / "config" / "kserve.json"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run `dvc repro` (or `make run`) first")
    return json.loads(path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("start", "stop", "run"))
    parser.add_argument("serve_dir", type=Path, nargs="?", help="a package stage's serve folder (start, stop)")
    parser.add_argument("--model-dir", type=Path, help="run: a folder with one .mar, or a .pt + features.json")
    parser.add_argument("--model-uri", help="serve this MLflow model (e.g. models:/ngsll-mnist@champion)")
    parser.add_argument("--name", help="run: the model name in the URLs")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_INSTANCES // 4)
    parser.add_argument("--capture-dir", type=Path, help="run: capture every answered explanation here")
    parser.add_argument("--capture", default="{}", help="run: capture bounds as JSON (max_file_mb, max_total_mb, ...)")
    args = parser.parse_args()
    if args.action == "run":
        if not args.name or not (args.model_dir or args.model_uri):
            parser.error("run needs --name and --model-dir or --model-uri")
        with tempfile.TemporaryDirectory() as unpacked:
            if args.model_uri:
                from ngsll_plugins.deployment import model_files
                from ngsll_plugins.tracking import tracking_uri
                import mlflow

                mlflow.set_tracking_uri(tracking_uri(Path.cwd()))
                files = model_files(args.model_uri, Path(unpacked))
            else:
                files = model_files_in(args.model_dir, Path(unpacked))
            capture = (CaptureSettings.from_dict(args.capture_dir, json.loads(args.capture)) if args.capture_dir
                       else None)
            serve(args.name, *files, host=args.host, port=args.port, max_batch_size=args.max_batch_size,
                  capture=capture)
        return
    if args.serve_dir is None:
        parser.error(f"{args.action} needs SERVE_DIR")
    run_dir = args.serve_dir / "run-kserve"
    if args.action == "stop":
        print("KServe server stopped." if stop_background(run_dir) else f"no KServe server was running ({run_dir})")
        return
    config = read_config(args.serve_dir)
    name, host, port = config["model_name"], config["host"], int(config["http_port"])
    capture_path = args.serve_dir / "config" / "capture.json"
    capture = json.loads(capture_path.read_text()) if capture_path.exists() else {}
    start_background(run_dir, name, args.serve_dir / "model-store", host, port, int(config["max_batch_size"]),
                     args.model_uri, capture if capture.get("enabled") else None)
    url = f"http://{host}:{port}"
    text = (args.serve_dir / "sample" / "sample.txt").exists()
    sample = args.serve_dir / "sample" / "sample.json"
    v2 = ('{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a sentence to explain"]}]}'
          if text else '{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["'
          f'$(base64 -w0 {args.serve_dir / "sample" / "sample.png"})"]}}]}}')
    print(f"""NGSLL is serving {name} at {url} on KServe's model server (loopback only{', ' + args.model_uri if args.model_uri else ''}).
Each answer holds the label, probabilities, logit(s) and the top-K weights that produced it.

  v1:  curl -s -H "Content-Type: application/json" -d @{sample} {url}/v1/models/{name}:predict
       (:explain adds every class's weights and {"every token's weight" if text else "the weight map"})
  v2:  curl -s -H "Content-Type: application/json" -d "{v2.replace('"', chr(92) + '"')}" {url}/v2/models/{name}/infer
  tensors: curl -s {url}/v2/models/{name}    ready: {url}/v2/health/ready    metrics: {url}/metrics

Log: {run_dir / 'kserve.log'}{'    Captured explanations: ' + str(run_dir / 'captures') if capture.get('enabled') else ''}
Stop it with: python -m ngsll_plugins.kserve_server stop {args.serve_dir}""")


if __name__ == "__main__":
    main()
