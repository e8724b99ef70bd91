"""Stage `package`: the TorchServe model archive and its production config.

Writes ``<serve-dir>/model-store/<name>.mar`` (state-dict checkpoint, handler, feature and class names,
the ngsll package), ``<serve-dir>/config/config.properties`` (loopback only, token authorisation on,
model API off, Prometheus metrics on, server-side batching) and a sample test digit as PNG and JSON for
the README's curl example. With ``--kserve-dir`` also the layout KServe's TorchServe runtime mounts at
``/mnt/models`` (``config/config.properties`` + ``model-store/<name>.mar``, see
``ngsll_plugins.torchserve.kserve_config``) for ``deploy/kserve/inferenceservice.yaml``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from ngsll.config import section
from ngsll_plugins.torchserve import ServerConfig, build_archive, kserve_config
from stage_io import load_params, load_split, log, setup_logging


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True, help="fine checkpoint to serve")
    parser.add_argument("--features", type=Path, required=True, help="features.json from prepare")
    parser.add_argument("--test-split", type=Path, required=True, help="prepared test split (for the sample digit)")
    parser.add_argument("--serve-dir", type=Path, required=True)
    parser.add_argument("--kserve-dir", type=Path, help="also write the KServe model-store layout here")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    setup_logging()
    serve = section(load_params(args.params), "serve")
    name = serve["model_name"]

    mar = build_archive(args.checkpoint, args.features, args.serve_dir / "model-store", name, str(serve["version"]))
    models = {name: {"mar": mar.name, "batch_size": serve["batch_size"], "max_batch_delay": serve["max_batch_delay"]}}
    config = ServerConfig(
        inference_port=int(serve["inference_port"]), management_port=int(serve["management_port"]),
        metrics_port=int(serve["metrics_port"]), models=models,
    )
    config.write(args.serve_dir / "config" / "config.properties")
    if args.kserve_dir is not None:
        (args.kserve_dir / "model-store").mkdir(parents=True, exist_ok=True)
        shutil.copy2(mar, args.kserve_dir / "model-store" / mar.name)
        kserve_config(models).write(args.kserve_dir / "config" / "config.properties")
    sample = load_split(args.test_split).x[int(serve["sample_index"]), 0]  # (28, 28) in [0, 1]
    Image.fromarray(np.rint(sample * 255).astype(np.uint8), mode="L").save(args.serve_dir / "sample_digit.png")
    (args.serve_dir / "sample_digit.json").write_text(json.dumps({"image": np.round(sample, 4).tolist()}))
    log.info("packaged %s (%d bytes) with config %s", mar, mar.stat().st_size, args.serve_dir / "config")


if __name__ == "__main__":
    main()
