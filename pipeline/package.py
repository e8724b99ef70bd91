"""Stage `package`: one dataset's TorchServe model archive and its production config.

Writes ``<serve-dir>/model-store/<name>.mar`` (state-dict checkpoint of the served K, handler, features.json
with the feature and class names and, for images, the image spec serving converts requests by; for text
models the vocabularies ``encoder.json``, for tables the fitted ``encoder.json``; the ngsll package), ``<serve-dir>/config/config.properties``
(loopback only, token authorisation on, model API off, Prometheus metrics on, server-side batching),
``<serve-dir>/config/kserve.json`` (model name, loopback host, port and batch cap for
``ngsll_plugins.kserve_server``, which serves the same archive on KServe's model server),
``<serve-dir>/config/capture.json`` (``serve.capture``: whether and how much both servers capture of the
answered explanations; the archive's model config carries it for TorchServe) and a
sample request for the README's curl example under ``<serve-dir>/sample/``: a test image as PNG and JSON
(``sample.png``, ``sample.json``), a test sentence as plain text and JSON (``sample.txt``, ``sample.json``) or
a test row as a JSON record (``sample.json``).
With ``--kserve-dir`` also the layout KServe's TorchServe runtime mounts at ``/mnt/models``
(``config/config.properties`` + ``model-store/<name>.mar``, see ``ngsll_plugins.torchserve.kserve_config``)
for ``deploy/kserve/inferenceservice.yaml``.

The dataset's ``serve`` section picks the K and version; it is served as ``ngsll-<dataset>`` on the shared
``serve`` ports and batching.

MLflow: the registered version of the served checkpoint (``ngsll-<dataset>``) gets the alias ``champion``,
so ``models:/ngsll-<dataset>@champion`` is what this stage packaged.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from ngsll.config import dataset_settings
from ngsll.table import TableSplit
from ngsll.text import TextSplit
from ngsll_plugins.torchserve import ServerConfig, build_archive, kserve_config
from ngsll_plugins.tracking import configure, end_runs_on_signal, run_model_version, set_champion
from stage_io import atomic_output, load_checkpoint, load_params, load_split, log, setup_logging, write_text


def write_sample(test_split: Path, index: int, sample_dir: Path) -> None:
    """One test sample as the README's curl example: an image (PNG, JSON), a sentence (text, JSON) or a
    table row (a JSON record)."""
    split = load_split(test_split)
    if isinstance(split, TableSplit):
        write_text(sample_dir / "sample.json", split.records[index])
        return
    if isinstance(split, TextSplit):
        sentence = split.texts[index]
        write_text(sample_dir / "sample.txt", sentence + "\n")
        write_text(sample_dir / "sample.json", json.dumps({"text": sentence}))
        return
    image = split.x[index].transpose(1, 2, 0)  # (H, W, C) in [0, 1]
    pixels = np.rint(image * 255).astype(np.uint8)
    with atomic_output(sample_dir / "sample.png") as temporary:
        Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels).save(temporary, format="PNG")
    listed = image[..., 0] if image.shape[2] == 1 else image  # (H, W) or (H, W, 3), as the JSON request takes it
    write_text(sample_dir / "sample.json", json.dumps({"image": np.round(listed, 4).tolist()}))


def promote_champion(tracking: dict, checkpoint: Path) -> None:
    """Alias ``champion`` on the registered version that the served checkpoint's training run logged."""
    run_id = load_checkpoint(checkpoint).get("mlflow_run_id")
    if not run_id:
        log.warning("%s carries no MLflow run id: no registered version to mark as champion", checkpoint)
        return
    configure(tracking["experiment"])
    name = tracking["registered_model"]
    version = run_model_version(name, run_id)
    if version is None:
        log.warning("run %s registered no version of %s in this MLflow store: champion left as it was", run_id, name)
        return
    set_champion(name, version)
    log.info("models:/%s@champion is version %s", name, version)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", required=True, help="a name under datasets in params.yaml")
    parser.add_argument("--fine-dir", type=Path, required=True, help="folder of fine checkpoints (serve.k is served)")
    parser.add_argument("--data-dir", type=Path, required=True, help="prepared data (features.json, encoder.json, test)")
    parser.add_argument("--serve-dir", type=Path, required=True)
    parser.add_argument("--kserve-dir", type=Path, help="also write the KServe model-store layout here")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    setup_logging()
    end_runs_on_signal()
    dataset = dataset_settings(load_params(args.params), args.dataset)
    serve = dataset.serve
    name = serve["model_name"]
    checkpoint = args.fine_dir / f"k{int(serve['k'])}.pt"
    if not checkpoint.exists():
        raise SystemExit(f"datasets.{args.dataset}.serve.k is {serve['k']}, which is not one of train.ks {dataset.ks}")
    encoder = args.data_dir / "encoder.json" if dataset.kind != "image" else None

    capture = dict(serve.get("capture") or {"enabled": False})
    mar = build_archive(checkpoint, args.data_dir / "features.json", args.serve_dir / "model-store", name,
                        str(serve["version"]), encoder=encoder, torch_threads=serve.get("threads_per_worker"),
                        capture=capture if capture.get("enabled") else None)
    models = {name: {"mar": mar.name, "batch_size": serve["batch_size"], "max_batch_delay": serve["max_batch_delay"],
                     "workers": serve.get("workers", 1)}}
    config = ServerConfig(
        inference_port=int(serve["inference_port"]), management_port=int(serve["management_port"]),
        metrics_port=int(serve["metrics_port"]), models=models,
    )
    config.write(args.serve_dir / "config" / "config.properties")
    write_text(args.serve_dir / "config" / "capture.json", json.dumps(capture, indent=2) + "\n")
    write_text(args.serve_dir / "config" / "kserve.json", json.dumps({
        "model_name": name, "host": "127.0.0.1", "http_port": int(serve["kserve_port"]),
        "max_batch_size": int(serve["kserve_max_batch_size"])}, indent=2) + "\n")
    if args.kserve_dir is not None:
        (args.kserve_dir / "model-store").mkdir(parents=True, exist_ok=True)
        shutil.copy2(mar, args.kserve_dir / "model-store" / mar.name)
        kserve_config(models).write(args.kserve_dir / "config" / "config.properties")
    write_sample(args.data_dir / "test.npz", int(serve["sample_index"]), args.serve_dir / "sample")
    promote_champion(dataset.tracking, checkpoint)
    log.info("packaged %s (%d bytes) with config %s", mar, mar.stat().st_size, args.serve_dir / "config")


if __name__ == "__main__":
    main()
