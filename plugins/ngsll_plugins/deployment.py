"""MLflow deployment plugin, target ``ngsll-torchserve``: serve registered NGSLL models on TorchServe.

Registered under the entry-point group ``mlflow.deployments`` (as ``ngsll-torchserve``, so it never
shadows the ``torchserve`` target of the separate mlflow-torchserve package)::

    mlflow deployments create -t ngsll-torchserve --name ngsll-mnist -m models:/ngsll-mnist@champion

builds a model archive from the registered model's checkpoint, feature names (and, for text models, its
vocabularies) and registers it with a running TorchServe through its management API (which must be
enabled on that server: ``enable_model_api=true``). ``predict``, ``explain``, ``get``, ``list``,
``update`` and ``delete`` go through the same server. ``update`` with a new model URI is a rolling update
that loses no request: the new archive is registered as the next version beside the serving one, made
the default, and the old version is unregistered after a short drain
(:func:`ngsll_plugins.torchserve.replace_version`). Predictions and explanations are retried on 503/507.

Where the server is comes from the environment (or ``-C key=value`` deployment config):

* ``NGSLL_TS_INFERENCE_URL`` (default ``http://127.0.0.1:8080``)
* ``NGSLL_TS_MANAGEMENT_URL`` (default ``http://127.0.0.1:8081``)
* ``NGSLL_TS_MODEL_STORE``: the server's ``--model-store`` folder, where archives are written (create/update)
* ``NGSLL_TS_KEY_FILE``: the server's ``key_file.json`` when token authorisation is on
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from mlflow.deployments import BaseDeploymentClient, PredictionsResponse
from mlflow.exceptions import MlflowException

from ngsll_plugins.torchserve import (
    ServerConfig, TorchServeClient, TorchServeError, build_archive, replace_version, start, wait_until_ready,
)

DEPLOYMENT_CONFIG = ("batch_size", "max_batch_delay", "workers", "threads", "version")


def target_help() -> str:
    return __doc__ or ""


def model_files(model_uri: str, destination: Path) -> tuple[Path, Path, Path | None]:
    """Download an NGSLL pyfunc model (any model URI: ``models:/<name>@champion``, ``models:/<name>/3``,
    ``runs:/...``) into ``destination``: its checkpoint, features.json and (text models) encoder.json."""
    import mlflow.artifacts

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(destination)))
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"].get("python_function", {})
    artifacts = flavor.get("artifacts") or {}
    if not {"checkpoint", "features"} <= set(artifacts):
        raise MlflowException(f"{model_uri} is not an NGSLL pyfunc model (it lacks checkpoint/features artifacts)")
    encoder = local / artifacts["encoder"]["path"] if "encoder" in artifacts else None
    return local / artifacts["checkpoint"]["path"], local / artifacts["features"]["path"], encoder


def _as_instances(inputs: Any) -> bytes:
    """Images (N, 28, 28) or sentences as an array, DataFrame, list or string -> a KServe v1 JSON body.

    A DataFrame read from a request file (what ``mlflow deployments predict --input-path`` hands over) may
    hold the v1 envelope's ``instances`` column or a ``text`` / ``image`` / ``b64`` column.
    """
    if isinstance(inputs, (bytes, bytearray)):
        return bytes(inputs)
    if isinstance(inputs, dict):
        return json.dumps(inputs).encode()
    if isinstance(inputs, pd.DataFrame) and "instances" in inputs.columns:
        return json.dumps({"instances": inputs["instances"].tolist()}, cls=_NumpyJSON).encode()
    for column in ("image", "b64"):
        if isinstance(inputs, pd.DataFrame) and column in inputs.columns:
            return json.dumps({"instances": [{column: item} for item in inputs[column]]}, cls=_NumpyJSON).encode()
    if isinstance(inputs, pd.DataFrame) and "text" in inputs.columns:
        inputs = inputs["text"]
    values = [inputs] if isinstance(inputs, str) else inputs.values if hasattr(inputs, "values") else inputs
    texts = values.ravel().tolist() if isinstance(values, np.ndarray) and values.dtype == object else values
    if isinstance(texts, list) and texts and all(isinstance(text, str) for text in texts):
        return json.dumps({"instances": [{"text": text} for text in texts]}).encode()
    pixels = np.asarray(values, dtype=np.float64)
    if pixels.ndim == 2 and pixels.shape[1] == 28 * 28:
        pixels = pixels.reshape(-1, 28, 28)
    if pixels.ndim == 2:
        pixels = pixels[None]
    return json.dumps({"instances": [{"image": image.tolist()} for image in pixels]}).encode()


class _NumpyJSON(json.JSONEncoder):
    def default(self, value: Any) -> Any:
        return value.tolist() if isinstance(value, np.ndarray) else super().default(value)


class TorchServeDeploymentClient(BaseDeploymentClient):
    """Deploy NGSLL models to a running TorchServe; see the module docstring."""

    def __init__(self, target_uri: str) -> None:
        super().__init__(target_uri)
        key_file = os.environ.get("NGSLL_TS_KEY_FILE")
        urls = {
            "inference_url": os.environ.get("NGSLL_TS_INFERENCE_URL", "http://127.0.0.1:8080"),
            "management_url": os.environ.get("NGSLL_TS_MANAGEMENT_URL", "http://127.0.0.1:8081"),
        }
        self.client = TorchServeClient.from_key_file(Path(key_file), **urls) if key_file else TorchServeClient(**urls)

    def _model_store(self, config: dict[str, Any]) -> Path:
        store = config.get("model_store") or os.environ.get("NGSLL_TS_MODEL_STORE")
        if not store:
            raise MlflowException("set NGSLL_TS_MODEL_STORE (or -C model_store=...) to the server's model store folder")
        return Path(store)

    def _call(self, action: str, *args: Any) -> Any:
        try:
            return getattr(self.client, action)(*args)
        except TorchServeError as error:
            raise MlflowException(f"TorchServe {action} failed ({error.status}): {error.body}") from error

    @staticmethod
    def _checked(config: dict[str, Any] | None) -> dict[str, Any]:
        config = dict(config or {})
        unknown = set(config) - set(DEPLOYMENT_CONFIG) - {"model_store"}
        if unknown:
            raise MlflowException(f"unknown deployment config {sorted(unknown)}; accepted: {DEPLOYMENT_CONFIG}")
        return config

    def _archive(self, name: str, model_uri: str, config: dict[str, Any], version: str) -> Path:
        """``<model store>/<name>-<version>.mar`` built from ``model_uri`` (a new file per version, so the
        serving version's archive is never overwritten)."""
        with tempfile.TemporaryDirectory() as download:
            checkpoint, features, encoder = model_files(model_uri, Path(download))
            threads = int(config["threads"]) if "threads" in config else None  # torch threads per worker
            mar = build_archive(checkpoint, features, Path(download) / "archive", name, version, encoder=encoder,
                                torch_threads=threads)
            target = self._model_store(config) / f"{name}-{version}.mar"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(mar, target)
        return target

    @staticmethod
    def _serving(config: dict[str, Any]) -> tuple[int, int, int]:
        return int(config.get("batch_size", 1)), int(config.get("max_batch_delay", 0)), int(config.get("workers", 1))

    def create_deployment(self, name, model_uri, flavor=None, config=None, endpoint=None):
        config = self._checked(config)
        mar = self._archive(name, model_uri, config, str(config.get("version", "1.0")))
        self._call("register", mar.name, name, *self._serving(config))
        return {"name": name, "flavor": flavor or "python_function", "model_uri": model_uri}

    def update_deployment(self, name, model_uri=None, flavor=None, config=None, endpoint=None):
        config = self._checked(config)
        if model_uri is None:
            self._call("scale", name, int(config.get("workers", 1)))
            return {"name": name, "flavor": flavor or "python_function"}
        serving = [entry["modelVersion"] for entry in self._call("describe", name)]
        version = str(config.get("version") or f"{max(float(v) for v in serving) + 1:.1f}")
        mar = self._archive(name, model_uri, config, version)
        try:
            replace_version(self.client, name, mar.name, version, *self._serving(config))
        except TorchServeError as error:
            raise MlflowException(f"TorchServe update of {name} to {version} failed ({error.status}): "
                                  f"{error.body}") from error
        return {"name": name, "flavor": flavor or "python_function", "model_uri": model_uri, "version": version}

    def delete_deployment(self, name, config=None, endpoint=None):
        self._call("unregister", name)

    def list_deployments(self, endpoint=None):
        return [{"name": model["modelName"], "url": model["modelUrl"]} for model in self._call("list")["models"]]

    def get_deployment(self, name, endpoint=None):
        description = self._call("describe", name)[0]
        return {"name": description["modelName"], **description}

    def predict(self, deployment_name=None, inputs=None, endpoint=None):
        return PredictionsResponse(self._call("predict", deployment_name, _as_instances(inputs)))

    def explain(self, deployment_name=None, df=None, endpoint=None):
        return self._call("explain", deployment_name, _as_instances(df))


def run_local(name: str, model_uri: str, flavor: str | None = None, config: dict[str, Any] | None = None) -> None:
    """Serve ``model_uri`` on a local TorchServe (loopback, no token; stop it with ``torchserve --stop``)."""
    config = dict(config or {})
    workdir = Path(config.get("workdir") or tempfile.mkdtemp(prefix="ngsll-torchserve-"))
    with tempfile.TemporaryDirectory() as download:
        checkpoint, features, encoder = model_files(model_uri, Path(download))
        build_archive(checkpoint, features, workdir / "model-store", name, encoder=encoder)
    server = ServerConfig(token_auth=False, models={name: {
        "mar": f"{name}.mar", "batch_size": int(config.get("batch_size", 1)),
        "max_batch_delay": int(config.get("max_batch_delay", 0)),
    }})
    start(workdir, workdir / "model-store", server.write(workdir / "config" / "config.properties"))
    wait_until_ready(TorchServeClient(), name)
    print(f"serving {model_uri} as {name} on http://127.0.0.1:{server.inference_port}/predictions/{name} "
          f"(logs in {workdir / 'logs'}; stop with: TMPDIR={workdir} torchserve --stop)")
