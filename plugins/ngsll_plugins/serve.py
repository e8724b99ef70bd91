"""``python -m ngsll_plugins.serve start|stop SERVE_DIR [--model-uri URI]``: run the packaged endpoint
(``make serve``, ``make serve MODEL=models:/ngsll-mnist@champion``).

SERVE_DIR is a `package` stage's output (``config/config.properties``, ``model-store/`` and a sample
request); the server's logs and its token file ``key_file.json`` go to ``SERVE_DIR/run``, the captured
explanations (when the archive captures) to ``SERVE_DIR/run/captures``.
With ``--model-uri`` the archive is built from that MLflow model instead (a registry alias such as
``@champion``, a version, or a run's model; tracking store from ``MLFLOW_TRACKING_URI``, else this
folder's ``mlflow.db``) into ``SERVE_DIR/run/model-store`` and served under the packaged model's name
with the packaged production config.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from ngsll_plugins.torchserve import (
    TorchServeClient, build_archive, key_file, read_properties, start, stop, wait_until_ready,
)


def capture_settings(serve_dir: Path) -> dict | None:
    """The package stage's ``config/capture.json`` (what both servers capture), None if absent or off."""
    path = serve_dir / "config" / "capture.json"
    settings = json.loads(path.read_text()) if path.exists() else {}
    return settings if settings.get("enabled") else None


def archive_from_registry(model_uri: str, model_store: Path, name: str, torch_threads: int | None = None,
                          capture: dict | None = None) -> Path:
    """Build ``model_store/<name>.mar`` from the NGSLL pyfunc model at ``model_uri``."""
    import mlflow

    from ngsll_plugins.deployment import model_files
    from ngsll_plugins.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri(Path.cwd()))
    with tempfile.TemporaryDirectory() as download:
        checkpoint, features, encoder = model_files(model_uri, Path(download))
        return build_archive(checkpoint, features, model_store, name, encoder=encoder, torch_threads=torch_threads,
                             capture=capture)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("serve_dir", type=Path)
    parser.add_argument("--model-uri", help="serve this MLflow model (e.g. models:/ngsll-mnist@champion) instead "
                                            "of the packaged archive")
    args = parser.parse_args()
    run_dir = args.serve_dir / "run"
    if args.action == "stop":
        stop(run_dir)
        print("TorchServe stopped.")
        return
    config_path = args.serve_dir / "config" / "config.properties"
    if not config_path.exists():
        raise SystemExit(f"{config_path} is missing: run `dvc repro package package_text` (or `make run`) first")
    properties = read_properties(config_path)
    (model, versions), = json.loads(properties["models"]).items()
    model_store = args.serve_dir / "model-store"
    if args.model_uri:
        model_store = run_dir / "model-store"
        workers = int(next(iter(versions.values())).get("minWorkers", 1))
        archive_from_registry(args.model_uri, model_store, model, max(1, (os.cpu_count() or 1) // workers),
                              capture_settings(args.serve_dir))
        print(f"built {model_store / (model + '.mar')} from {args.model_uri}")
    captures = run_dir / "captures"  # where the archive's handler.capture writes (when the package turned it on)
    start(run_dir, model_store, config_path, env={"NGSLL_CAPTURE_DIR": str(captures.resolve())})
    keys = key_file(run_dir)
    client = TorchServeClient.from_key_file(
        keys, inference_url=properties["inference_address"], management_url=properties["management_address"]
    )
    wait_until_ready(client, model)
    url = properties["inference_address"]
    text = (args.serve_dir / "sample" / "sample.txt").exists()
    sample = (f'-H "Content-Type: text/plain" --data-binary @{args.serve_dir / "sample" / "sample.txt"}' if text
              else f"-T {args.serve_dir / 'sample' / 'sample.png'}")
    extra = "every token's weight" if text else "the weight map over the cells"
    print(f"""NGSLL is serving {model} at {url} (loopback only, token authorisation on).
Each answer holds the label, probabilities, logit(s) and the top-K weights that produced it.
The inference token is the "inference" key of {keys} (written by TorchServe at start-up):

  TOKEN=$(python3 -c 'import json; print(json.load(open("{keys}"))["inference"]["key"])')
  curl -s -H "Authorization: Bearer $TOKEN" {sample} {url}/predictions/{model}

Explanations (plus per-class weights and {extra}): {url}/explanations/{model}
Prometheus metrics: {properties['metrics_address']}/metrics    Logs: {run_dir / 'logs'}
Captured explanations (if the archive captures): {captures}; check them with
  python -m ngsll_plugins.monitor --dataset <name>
Stop it with: python -m ngsll_plugins.serve stop {args.serve_dir}""")


if __name__ == "__main__":
    main()
