"""Stages `package` (MNIST) and `package_text@<dataset>`: the TorchServe model archive and its production config.

Writes ``<serve-dir>/model-store/<name>.mar`` (state-dict checkpoint, handler, feature and class names,
for text models the vocabularies ``encoder.json``, the ngsll package), ``<serve-dir>/config/config.properties``
(loopback only, token authorisation on, model API off, Prometheus metrics on, server-side batching) and a
sample request for the README's curl example: a test digit as PNG and JSON (``sample_digit.*``) or a test
sentence as plain text and JSON (``sample_text.*``). With ``--kserve-dir`` also the layout KServe's
TorchServe runtime mounts at ``/mnt/models`` (``config/config.properties`` + ``model-store/<name>.mar``,
see ``ngsll_plugins.torchserve.kserve_config``) for ``deploy/kserve/inferenceservice.yaml``.

MNIST reads the ``serve`` params; a text dataset ``<name>`` reads ``text.serve`` (its K, version and
sample) and is served as ``ngsll-<name>`` on the ``serve`` ports and batching.

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

from ngsll.config import dataset_settings, section
from ngsll.text import TextSplit
from ngsll_plugins.torchserve import ServerConfig, build_archive, kserve_config
from ngsll_plugins.tracking import configure, end_runs_on_signal, run_model_version, set_champion
from stage_io import atomic_output, load_checkpoint, load_params, load_split, log, setup_logging, write_text


def serve_settings(params: dict, dataset: str) -> dict:
    """The ``serve`` params for MNIST; for a text dataset ``text.serve`` over them, named ``ngsll-<dataset>``."""
    serve = section(params, "serve")
    if dataset_settings(params, dataset).input_kind == "image":  # also rejects unknown dataset names
        return serve
    return {**serve, **section(params, "text", "serve"), "model_name": f"ngsll-{dataset}"}


def write_sample(test_split: Path, index: int, serve_dir: Path) -> None:
    """One test sample as the README's curl example: a digit (PNG, JSON) or a sentence (text, JSON)."""
    split = load_split(test_split)
    if isinstance(split, TextSplit):
        sentence = split.texts[index]
        write_text(serve_dir / "sample_text.txt", sentence + "\n")
        write_text(serve_dir / "sample_text.json", json.dumps({"text": sentence}))
        return
    digit = split.x[index, 0]  # (28, 28) in [0, 1]
    with atomic_output(serve_dir / "sample_digit.png") as temporary:
        Image.fromarray(np.rint(digit * 255).astype(np.uint8), mode="L").save(temporary, format="PNG")
    write_text(serve_dir / "sample_digit.json", json.dumps({"image": np.round(digit, 4).tolist()}))


def promote_champion(params: dict, dataset: str, checkpoint: Path) -> None:
    """Alias ``champion`` on the registered version that the served checkpoint's training run logged."""
    tracking = dataset_settings(params, dataset).tracking
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
    parser.add_argument("--dataset", default="mnist", help="mnist or a text dataset under text.datasets")
    parser.add_argument("--checkpoint", type=Path, required=True, help="fine checkpoint to serve")
    parser.add_argument("--features", type=Path, required=True, help="features.json from prepare")
    parser.add_argument("--encoder", type=Path, help="encoder.json from prepare_text (text models)")
    parser.add_argument("--test-split", type=Path, required=True, help="prepared test split (for the sample request)")
    parser.add_argument("--serve-dir", type=Path, required=True)
    parser.add_argument("--kserve-dir", type=Path, help="also write the KServe model-store layout here")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    setup_logging()
    end_runs_on_signal()
    params = load_params(args.params)
    serve = serve_settings(params, args.dataset)
    name = serve["model_name"]

    mar = build_archive(args.checkpoint, args.features, args.serve_dir / "model-store", name, str(serve["version"]),
                        encoder=args.encoder, torch_threads=serve.get("threads_per_worker"))
    models = {name: {"mar": mar.name, "batch_size": serve["batch_size"], "max_batch_delay": serve["max_batch_delay"],
                     "workers": serve.get("workers", 1)}}
    config = ServerConfig(
        inference_port=int(serve["inference_port"]), management_port=int(serve["management_port"]),
        metrics_port=int(serve["metrics_port"]), models=models,
    )
    config.write(args.serve_dir / "config" / "config.properties")
    if args.kserve_dir is not None:
        (args.kserve_dir / "model-store").mkdir(parents=True, exist_ok=True)
        shutil.copy2(mar, args.kserve_dir / "model-store" / mar.name)
        kserve_config(models).write(args.kserve_dir / "config" / "config.properties")
    write_sample(args.test_split, int(serve["sample_index"]), args.serve_dir)
    promote_champion(params, args.dataset, args.checkpoint)
    log.info("packaged %s (%d bytes) with config %s", mar, mar.stat().st_size, args.serve_dir / "config")


if __name__ == "__main__":
    main()
