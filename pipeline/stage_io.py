"""File IO shared by the stage scripts: params, prepared splits, JSON, checkpoints, figures.

Stage scripts receive every path from ``dvc.yaml``; nothing here hard-codes one except the default
``params.yaml`` that DVC itself reads. Every writer here is atomic (:func:`atomic_output`): a stage that
fails or is stopped half-way leaves the previous file or none, never a truncated one.
"""

from __future__ import annotations

import html
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ngsll.checkpoint import model_from_checkpoint
from ngsll.errors import NGSLLError
from ngsll.data.images import ImageSplit
from ngsll.table import TableSplit
from ngsll.text import TextSplit

log = logging.getLogger("ngsll.pipeline")


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("great_expectations", "alembic", "mlflow"):  # their INFO chatter drowns the stage's own
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextmanager
def one_line_errors(stage: str) -> Iterator[None]:
    """Bad data or configuration (any :class:`NGSLLError`) ends the stage with one line that names it
    (the message says which file or key and what is accepted) instead of a traceback."""
    try:
        yield
    except NGSLLError as error:
        raise SystemExit(f"{stage} failed: {error}") from None


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    with open(path) as handle:
        return yaml.safe_load(handle)


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A temporary file beside ``path`` to write; it replaces ``path`` only when the block completes.

    On any exception, ``SystemExit`` from a stop signal included, the temporary file is removed and
    ``path`` keeps its previous content (or stays absent). The parent folder is created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_output(path) as temporary:
        temporary.write_text(text)


def write_json(path: str | Path, payload: Any) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def save_arrays(path: str | Path, compressed: bool = True, **arrays: Any) -> None:
    """``np.savez[_compressed]`` of ``arrays`` to ``path``, atomically (the name is kept as given)."""
    with atomic_output(path) as temporary, open(temporary, "wb") as handle:
        (np.savez_compressed if compressed else np.savez)(handle, **arrays)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def save_split(path: Path, split: ImageSplit | TextSplit | TableSplit) -> None:
    """Store a split compactly: images as (N, C, H, W) uint8 pixels (x = pixels / 255), z, labels, the
    labels as stored and ids; sentences as token ids, z, labels, ids and the texts; table rows as x, z,
    labels, ids and each row as a JSON record."""
    if isinstance(split, TableSplit):
        save_arrays(path, table_x=split.x, z=split.z, mask=split.z == 0, y=split.y, ids=split.ids,
                    records=np.asarray(split.records, dtype=str))
        return
    if isinstance(split, TextSplit):
        save_arrays(path, tokens=split.x, z=split.z, mask=split.z == 0, y=split.y, ids=split.ids,
                    texts=np.asarray(split.texts, dtype=str))
        return
    pixels = np.rint(split.x * 255).astype(np.uint8)  # (N, C, H, W)
    save_arrays(path, pixels=pixels, z=split.z, mask=split.z == 0, y=split.y, source_labels=split.source_labels,
                ids=split.ids)


def load_split(path: Path) -> ImageSplit | TextSplit | TableSplit:
    """The split :func:`save_split` wrote (a :class:`TextSplit` when it holds token ids, a :class:`TableSplit`
    when it holds records)."""
    with np.load(path) as stored:
        if "records" in stored.files:
            return TableSplit(x=stored["table_x"], z=stored["z"], y=stored["y"], ids=stored["ids"],
                              records=stored["records"].tolist())
        if "tokens" in stored.files:
            return TextSplit(x=stored["tokens"], z=stored["z"], y=stored["y"], ids=stored["ids"],
                             texts=stored["texts"].tolist())
        return ImageSplit(
            x=stored["pixels"].astype(np.float32) / 255.0,  # (N, C, H, W)
            z=stored["z"], y=stored["y"], source_labels=stored["source_labels"], ids=stored["ids"],
        )


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    with atomic_output(path) as temporary:
        torch.save(checkpoint, temporary)


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_model(source: Path | dict[str, Any], device: torch.device):
    """The model of a checkpoint file (or an already loaded checkpoint dict), on ``device``."""
    checkpoint = source if isinstance(source, dict) else load_checkpoint(source)
    return model_from_checkpoint(checkpoint).to(device)


def save_figure(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    try:
        with atomic_output(path) as temporary:
            figure.savefig(temporary, dpi=110, format=Path(path).suffix.lstrip(".") or "png")
    finally:
        plt.close(figure)


def finish_gate(report, report_path: Path, html_path: Path, stage: str, dropped: dict[str, Any] | None = None) -> None:
    """Write a data-quality gate's JSON and HTML reports; exit non-zero with its summary if it failed.

    ``dropped``: rows a ``drop`` policy removed before the checks (``{"policy", "reason", "count", "rows"}``,
    see :func:`ngsll.quality.drop_rows`), recorded in both reports and logged, so the next stage and a reader
    see exactly what was left out.
    """
    summary = {"success": report.success, "failures": report.failures, "results": report.results}
    write_json(report_path, {**summary, **({"dropped": dropped} if dropped else {})})
    page = report.to_html(stage)
    if dropped:
        listed = "\n".join(f"{row['split'] + ' ' if 'split' in row else ''}id={row['id']}: {row['value']!r} "
                            f"({row['reason']})" for row in dropped["rows"])
        page = page.replace("</body>", f"<h2>{dropped['count']} row(s) dropped ({html.escape(dropped['reason'])})</h2>"
                                       f"<pre>{html.escape(listed)}</pre></body>")
        log.warning("%s: dropped %d row(s) (%s): ids %s", stage, dropped["count"], dropped["reason"],
                    [row["id"] for row in dropped["rows"]][:20])
    write_text(html_path, page)
    if not report.success:
        sys.exit(f"{stage} failed: {report.summary()}\nfull report: {report_path}")
    log.info("%s: %s", stage, report.summary())


def require_passed(report_path: Path) -> None:
    """Refuse to go on unless the data-quality gate that wrote ``report_path`` passed."""
    report = read_json(report_path)
    if not report.get("success"):
        raise SystemExit(f"refusing to run: the data-quality gate {report_path} did not pass")
