"""TorchServe glue: build the model archive, write its config, start/stop a server, call its APIs.

Used by the `package` stage, ``make serve``, the MLflow deployment plugin and the tests, so there is
one way to do each of these things.

Layout of a served model folder (also what KServe's TorchServe runtime mounts)::

    <dir>/config/config.properties
    <dir>/model-store/<name>.mar
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import ngsll

HANDLER = Path(__file__).resolve().parents[2] / "handlers" / "ngsll_handler.py"


def _executable(name: str) -> str:
    """A console script of this environment (beside the running Python), else from PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def build_archive(
    checkpoint: Path,
    features: Path,
    export_dir: Path,
    model_name: str,
    version: str = "1.0",
    handler: Path = HANDLER,
    encoder: Path | None = None,
    torch_threads: int | None = None,
    capture: dict | None = None,
) -> Path:
    """``torch-model-archiver`` a plain-dict checkpoint (no TorchScript) into ``export_dir/<name>.mar``.

    The archive holds the handler, ``features.json`` (feature and class names), for text models the
    prepared data's ``encoder.json`` (vocabularies; required by the handler for them) and a copy of the
    ``ngsll`` package, so a TorchServe with torch installed can serve it. ``torch_threads``: the intra-op
    threads each worker's torch uses (the model config's ``handler.torch_threads``; default: torch's own,
    all cores, which oversubscribes the CPU as soon as a model has more than one worker). ``capture``: the
    model config's ``handler.capture`` (``enabled``, ``max_file_mb``, ...; see the handler); default off.
    """
    export_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as staging:
        code = Path(staging) / "code"
        shutil.copytree(Path(ngsll.__file__).parent, code / "ngsll", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(features, code / "features.json")
        if encoder is not None:
            shutil.copy(encoder, code / "encoder.json")
        command = [
            _executable("torch-model-archiver"), "--model-name", model_name, "--version", version,
            "--serialized-file", str(checkpoint), "--handler", str(handler), "--extra-files", str(code),
            "--export-path", str(export_dir), "--force",
        ]
        handler_config = {**({"torch_threads": int(torch_threads)} if torch_threads is not None else {}),
                          **({"capture": dict(capture)} if capture else {})}
        if handler_config:
            model_config = Path(staging) / "model-config.yaml"
            model_config.write_text(yaml.safe_dump({"handler": handler_config}, sort_keys=False))
            command += ["--config-file", str(model_config)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"torch-model-archiver failed: {result.stderr.strip()[-2000:]}")
    return export_dir / f"{model_name}.mar"


@dataclass
class ServerConfig:
    """What goes into ``config.properties``. Defaults are the production ones: loopback only, token
    authorisation on, model-management API off, Prometheus metrics on."""

    inference_port: int = 8080
    management_port: int = 8081
    metrics_port: int = 8082
    grpc_inference_port: int = 7070
    grpc_management_port: int = 7071
    worker_port: int = 9000  # first backend worker port; its Unix socket is /tmp/.ts.sock.<port>
    bind: str = "127.0.0.1"
    token_auth: bool = True
    model_api: bool = False
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {"mar", "batch_size", "workers", ...}
    extra: dict[str, str] = field(default_factory=dict)
    snapshot: bool = False  # list the models as a `model_snapshot` (what KServe's wrapper reads) instead
    # Bodies up to this size reach the handler, which answers 413 JSON past its own 1 MiB limit; beyond it the
    # frontend drops the connection without an HTTP answer (TorchServe's default is 6.5 MB).
    max_request_size: int = 16 << 20

    def properties(self) -> str:
        lines = [
            f"inference_address=http://{self.bind}:{self.inference_port}",
            f"management_address=http://{self.bind}:{self.management_port}",
            f"metrics_address=http://{self.bind}:{self.metrics_port}",
            f"grpc_inference_address={self.bind}",
            f"grpc_management_address={self.bind}",
            f"grpc_inference_port={self.grpc_inference_port}",
            f"grpc_management_port={self.grpc_management_port}",
            f"disable_token_authorization={str(not self.token_auth).lower()}",
            f"enable_model_api={str(self.model_api).lower()}",
            "metrics_mode=prometheus",
            "model_metrics_auto_detect=true",  # the handler's own counters (captured / dropped explanations)
            "default_workers_per_model=1",
            f"initial_worker_port={self.worker_port}",
            f"max_request_size={self.max_request_size}",
        ]
        versions = {
            name: {"1.0": {
                "defaultVersion": True, "marName": spec["mar"], "minWorkers": int(spec.get("workers", 1)),
                "maxWorkers": int(spec.get("workers", 1)),
                "batchSize": int(spec.get("batch_size", 1)), "maxBatchDelay": int(spec.get("max_batch_delay", 0)),
                "responseTimeout": int(spec.get("response_timeout", 60)),
            }} for name, spec in self.models.items()
        }
        if self.models and self.snapshot:
            lines.append("model_snapshot=" + json.dumps(
                {"name": "startup.cfg", "modelCount": len(versions), "models": versions}))
        elif self.models:
            lines.append("load_models=" + ",".join(spec["mar"] for spec in self.models.values()))
            lines.append("models=" + json.dumps(versions))
        lines += [f"{key}={value}" for key, value in self.extra.items()]
        return "\n".join(lines) + "\n"

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.properties())
        return path


def kserve_config(models: dict[str, dict[str, Any]]) -> ServerConfig:
    """``config.properties`` for KServe's TorchServe runtime, which mounts ``/mnt/models``.

    TorchServe listens on 0.0.0.0:8085 behind KServe's wrapper (which owns 8080 and gRPC 7070, so
    TorchServe's gRPC moves to 7075/7076); the models are a ``model_snapshot`` (the wrapper reads their
    names from it); ``TS_*`` environment variables may override any property (``enable_envvars_config``).
    Token authorisation is off because the wrapper calls TorchServe without a token: keep the pod's
    TorchServe ports private and authenticate at the cluster ingress. The KServe v1 protocol
    (``{"instances": [...]}`` -> ``{"predictions"|"explanations": [...]}``) is spoken by the NGSLL handler
    itself, not by TorchServe's ``service_envelope=kserve``, which answers only the first request of
    each server-side batch.
    """
    return ServerConfig(
        inference_port=8085, management_port=8081, metrics_port=8082, grpc_inference_port=7075,
        grpc_management_port=7076, bind="0.0.0.0", token_auth=False, model_api=False, models=models, snapshot=True,
        extra={"enable_envvars_config": "true", "model_store": "/mnt/models/model-store"},
    )


def read_properties(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


class TorchServeError(RuntimeError):
    """A TorchServe API call failed; ``status`` and ``body`` hold the server's answer."""

    def __init__(self, status: int, body: Any, url: str) -> None:
        super().__init__(f"TorchServe answered {status} for {url}: {body}")
        self.status, self.body = status, body


RETRIED_STATUSES = (503, 507)  # TorchServe: no worker free / the worker died with the batch in flight


@dataclass
class TorchServeClient:
    """Inference and management calls; tokens (if the server requires them) go in as Bearer headers.

    Predictions and explanations are idempotent: an answer of 503 or 507 (a worker restarting after a
    crash) is retried up to ``retries`` times with exponential backoff from ``backoff_s`` (0.1, 0.2, 0.4 s
    ...), so a client waits at most about ``backoff_s * 2**retries`` seconds longer; the last answer is raised.
    """

    inference_url: str = "http://127.0.0.1:8080"
    management_url: str = "http://127.0.0.1:8081"
    inference_token: str | None = None
    management_token: str | None = None
    timeout: float = 60.0
    retries: int = 5
    backoff_s: float = 0.1

    @classmethod
    def from_key_file(cls, key_file: Path, **urls: str) -> TorchServeClient:
        keys = json.loads(key_file.read_text())
        return cls(inference_token=keys["inference"]["key"], management_token=keys["management"]["key"], **urls)

    def _call(self, method: str, url: str, token: str | None, body: bytes | None = None,
              content_type: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if content_type:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        try:
            payload = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            payload = raw.decode(errors="replace")
        if status >= 400:
            raise TorchServeError(status, payload, url)
        return status, payload

    def _idempotent(self, url: str, body: bytes, content_type: str) -> Any:
        for attempt in range(self.retries + 1):
            try:
                return self._call("POST", url, self.inference_token, body, content_type)[1]
            except TorchServeError as error:
                if error.status not in RETRIED_STATUSES or attempt == self.retries:
                    raise
                time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")  # the loop returns or raises

    def predict(self, name: str, body: bytes, content_type: str = "application/json") -> Any:
        return self._idempotent(f"{self.inference_url}/predictions/{name}", body, content_type)

    def explain(self, name: str, body: bytes, content_type: str = "application/json") -> Any:
        return self._idempotent(f"{self.inference_url}/explanations/{name}", body, content_type)

    def health(self) -> bool:
        try:
            return self._call("GET", f"{self.inference_url}/ping", self.inference_token)[1].get("status") == "Healthy"
        except (OSError, TorchServeError, AttributeError):
            return False

    def register(self, url: str, name: str, batch_size: int = 1, max_batch_delay: int = 0, workers: int = 1) -> Any:
        query = (f"url={url}&model_name={name}&batch_size={batch_size}&max_batch_delay={max_batch_delay}"
                 f"&initial_workers={workers}&synchronous=true")
        return self._call("POST", f"{self.management_url}/models?{query}", self.management_token)[1]

    def describe(self, name: str) -> Any:
        return self._call("GET", f"{self.management_url}/models/{name}", self.management_token)[1]

    def list(self) -> Any:
        return self._call("GET", f"{self.management_url}/models", self.management_token)[1]

    def scale(self, name: str, workers: int) -> Any:
        query = f"min_worker={workers}&max_worker={workers}&synchronous=true"
        return self._call("PUT", f"{self.management_url}/models/{name}?{query}", self.management_token)[1]

    def set_default(self, name: str, version: str) -> Any:
        """Make ``version`` of model ``name`` the one ``/predictions/<name>`` answers with."""
        return self._call("PUT", f"{self.management_url}/models/{name}/{version}/set-default", self.management_token)[1]

    def unregister(self, name: str, version: str | None = None) -> Any:
        suffix = f"/{version}" if version else ""
        return self._call("DELETE", f"{self.management_url}/models/{name}{suffix}", self.management_token)[1]


def replace_version(client: TorchServeClient, name: str, mar: str, version: str, batch_size: int = 1,
                    max_batch_delay: int = 0, workers: int = 1, drain_s: float = 2.0) -> list[str]:
    """Move model ``name`` to archive ``mar`` (version ``version``) without losing a request.

    Registers the new version beside the serving ones (its workers start before it answers), makes it the
    default, waits ``drain_s`` seconds so requests already queued on the old versions are answered (an old
    version unregistered with requests in its queue fails them with 500 "Worker died." or never answers
    them), then unregisters the old versions. Returns the versions it removed.
    """
    old = [entry["modelVersion"] for entry in client.describe(name) if entry["modelVersion"] != version]
    client.register(mar, name, batch_size, max_batch_delay, workers)
    client.set_default(name, version)
    time.sleep(drain_s)
    for stale in old:
        client.unregister(name, stale)
    return old


def start(workdir: Path, model_store: Path, config: Path, models: list[str] | None = None,
          env: dict[str, str] | None = None) -> None:
    """``torchserve --start`` with its logs, key file and pid file inside ``workdir``; ``env`` adds
    environment variables (e.g. ``TS_INFERENCE_ADDRESS`` for a config with ``enable_envvars_config``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    command = [_executable("torchserve"), "--start", "--ncs", "--model-store", str(model_store.resolve()),
               "--ts-config", str(config.resolve())]
    if models:
        command += ["--models", *models]
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    env = {**os.environ, **(env or {}), "TMPDIR": str(workdir.resolve()), "LOG_LOCATION": str(logs.resolve()),
           "METRICS_LOCATION": str(logs.resolve())}
    # The Java frontend inherits these handles and outlives the CLI: give it a file, never a pipe.
    with open(logs / "console.log", "ab") as console:
        subprocess.run(command, cwd=workdir, env=env, check=True, stdout=console, stderr=subprocess.STDOUT)


def stop(workdir: Path) -> None:
    """``torchserve --stop`` for the server started in ``workdir``."""
    env = {**os.environ, "TMPDIR": str(workdir.resolve())}
    subprocess.run([_executable("torchserve"), "--stop"], cwd=workdir, env=env, check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (for servers started by tests and benchmarks)."""
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def free_worker_port(span: int = 10) -> int:
    """A first backend-worker port whose next ``span`` ports and Unix sockets no server here uses."""

    def usable(port: int) -> bool:
        if Path(f"/tmp/.ts.sock.{port}").exists():
            return False
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
        return True

    for first in range(29000, 60000, 50):
        if all(usable(first + offset) for offset in range(span)):
            return first
    raise RuntimeError("no free block of TorchServe worker ports")


def key_file(workdir: Path, timeout: float = 60.0) -> Path:
    """The ``key_file.json`` (token authorisation keys) a server started in ``workdir`` writes there."""
    path = workdir / "key_file.json"
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.stat().st_size:
        if time.monotonic() > deadline:
            raise TimeoutError(f"TorchServe wrote no {path} within {timeout:.0f} s")
        time.sleep(0.2)
    return path


def wait_until_ready(client: TorchServeClient, model: str | None, timeout: float = 90.0) -> None:
    """Block until /ping is healthy (and ``model`` answers its description), or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.health():
            if model is None:
                return
            try:
                workers = client.describe(model)[0].get("workers", [])
                if any(worker.get("status") == "READY" for worker in workers):
                    return
            except (TorchServeError, OSError, IndexError):
                pass
        time.sleep(0.5)
    raise TimeoutError(f"TorchServe at {client.inference_url} was not ready within {timeout:.0f} s")
