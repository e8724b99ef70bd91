"""Stage `package`: the TorchServe model archive and its production config.

Writes ``<serve-dir>/model-store/<name>.mar`` (state-dict checkpoint, handler, feature and class names,
the ngsll package), ``<serve-dir>/config/config.properties`` (loopback only, token authorisation on,
model API off, Prometheus metrics on, server-side batching) and a sample test digit as PNG and JSON for
the README's curl example. This is also the layout KServe's TorchServe runtime mounts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from ngsll.config import section
from ngsll_plugins.torchserve import ServerConfig, build_archive
from stage_io import load_params, load_split, log, setup_logging


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True, help="fine checkpoint to serve")
    parser.add_argument("--features", type=Path, required=True, help="features.json from prepare")
    parser.add_argument("--test-split", type=Path, required=True, help="prepared test split (for the sample digit)")
    parser.add_argument("--serve-dir", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    setup_logging()
    serve = section(load_params(args.params), "serve")
    name = serve["model_name"]

    mar = build_archive(args.checkpoint, args.features, args.serve_dir / "model-store", name, str(serve["version"]))
    config = ServerConfig(
        inference_port=int(serve["inference_port"]), management_port=int(serve["management_port"]),
        metrics_port=int(serve["metrics_port"]),
        models={name: {"mar": mar.name, "batch_size": serve["batch_size"], "max_batch_delay": serve["max_batch_delay"]}},
    )
    config.write(args.serve_dir / "config" / "config.properties")
    sample = load_split(args.test_split).x[int(serve["sample_index"]), 0]  # (28, 28) in [0, 1]
    Image.fromarray(np.rint(sample * 255).astype(np.uint8), mode="L").save(args.serve_dir / "sample_digit.png")
    (args.serve_dir / "sample_digit.json").write_text(json.dumps({"image": np.round(sample, 4).tolist()}))
    log.info("packaged %s (%d bytes) with config %s", mar, mar.stat().st_size, args.serve_dir / "config")


if __name__ == "__main__":
    main()
