"""File IO shared by the stage scripts: params, prepared splits, JSON, checkpoints, figures.

Stage scripts receive every path from ``dvc.yaml``; nothing here hard-codes one except the default
``params.yaml`` that DVC itself reads.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ngsll.checkpoint import model_from_checkpoint
from ngsll.data.mnist import ImageSplit
from ngsll.text import TextSplit
from ngsll.train import TensorData

log = logging.getLogger("ngsll.pipeline")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("great_expectations", "alembic", "mlflow"):  # their INFO chatter drowns the stage's own
        logging.getLogger(noisy).setLevel(logging.WARNING)


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    with open(path) as handle:
        return yaml.safe_load(handle)


def write_json(path: str | Path, payload: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def save_split(path: Path, split: ImageSplit | TextSplit) -> None:
    """Store a split compactly: images as uint8 pixels (x = pixels / 255), z, labels, digits, ids;
    sentences as token ids, z, labels, ids and the texts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(split, TextSplit):
        np.savez_compressed(path, tokens=split.x, z=split.z, mask=split.z == 0, y=split.y, ids=split.ids,
                            texts=np.asarray(split.texts, dtype=str))
        return
    pixels = np.rint(split.x[:, 0] * 255).astype(np.uint8)  # (N, 28, 28)
    np.savez_compressed(
        path, pixels=pixels, z=split.z, mask=split.z == 0, y=split.y, digits=split.digits, ids=split.ids
    )


def load_split(path: Path) -> ImageSplit | TextSplit:
    """The split :func:`save_split` wrote (a :class:`TextSplit` when it holds token ids)."""
    with np.load(path) as stored:
        if "tokens" in stored.files:
            return TextSplit(x=stored["tokens"], z=stored["z"], y=stored["y"], ids=stored["ids"],
                             texts=stored["texts"].tolist())
        return ImageSplit(
            x=(stored["pixels"].astype(np.float32) / 255.0)[:, None],  # (N, 1, 28, 28)
            z=stored["z"], y=stored["y"], digits=stored["digits"], ids=stored["ids"],
        )


def load_tensors(path: Path, device: torch.device) -> TensorData:
    split = load_split(path)
    return TensorData.from_arrays(split.x, split.z, split.y, device=device)


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_model(source: Path | dict[str, Any], device: torch.device):
    """The model of a checkpoint file (or an already loaded checkpoint dict), on ``device``."""
    checkpoint = source if isinstance(source, dict) else load_checkpoint(source)
    return model_from_checkpoint(checkpoint).to(device)


def save_figure(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def finish_gate(report, report_path: Path, html_path: Path, stage: str) -> None:
    """Write a data-quality gate's JSON and HTML reports; exit non-zero with its summary if it failed."""
    write_json(report_path, {"success": report.success, "failures": report.failures, "results": report.results})
    html_path.write_text(report.to_html(stage))
    if not report.success:
        sys.exit(f"{stage} failed: {report.summary()}\nfull report: {report_path}")
    log.info("%s: %s", stage, report.summary())


def require_passed(report_path: Path) -> None:
    """Refuse to go on unless the data-quality gate that wrote ``report_path`` passed."""
    report = read_json(report_path)
    if not report.get("success"):
        raise SystemExit(f"refusing to run: the data-quality gate {report_path} did not pass")
