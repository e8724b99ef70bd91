"""MLflow run-context plugin: tag every run started inside an ngsll repository with its versions.

Registered under the entry-point group ``mlflow.run_context_provider``. Tags: ``ngsll.git.commit``,
``ngsll.git.dirty``, ``dvc.stage`` (the stage DVC is running, if any) and ``dvc.data.<path>`` (the DVC
hash of every data output recorded in ``dvc.lock``). It never raises: MLflow must not fail a run
because version information is unavailable.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

from mlflow.tracking.context.abstract_context import RunContextProvider

log = logging.getLogger(__name__)


def repository_root(start: Path | None = None) -> Path | None:
    """The nearest folder holding ``dvc.yaml`` (``DVC_ROOT`` when DVC runs a stage), or None."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"])
    here = (start or Path.cwd()).resolve()
    return next((folder for folder in (here, *here.parents) if (folder / "dvc.yaml").is_file()), None)


def git_tags(root: Path) -> dict[str, str]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True).stdout

    commit = git("rev-parse", "HEAD").strip()
    dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    return {"ngsll.git.commit": commit, "ngsll.git.dirty": str(dirty).lower()}


def dvc_data_tags(root: Path) -> dict[str, str]:
    """``dvc.data.<path>`` -> md5 for every output under ``data/`` recorded in ``dvc.lock``."""
    import yaml

    lock_path = root / "dvc.lock"
    if not lock_path.is_file():
        return {}
    lock = yaml.safe_load(lock_path.read_text()) or {}
    tags = {}
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if str(out.get("path", "")).startswith("data/") and out.get("md5"):
                tags[f"dvc.data.{out['path']}"] = out["md5"]
    return tags


def version_tags(start: Path | None = None) -> dict[str, str]:
    """All tags this plugin sets, or {} outside a repository. Never raises."""
    try:
        root = repository_root(start)
        if root is None:
            return {}
        tags: dict[str, str] = {}
        if os.environ.get("DVC_STAGE"):
            tags["dvc.stage"] = os.environ["DVC_STAGE"]
        for collect in (git_tags, dvc_data_tags):
            try:
                tags |= collect(root)
            except Exception as error:  # noqa: BLE001 - version info is best effort by design
                log.debug("ngsll run context: %s skipped (%s)", collect.__name__, error)
        return tags
    except Exception as error:  # noqa: BLE001
        log.debug("ngsll run context failed: %s", error)
        return {}


class NGSLLRunContext(RunContextProvider):
    """Adds git and DVC version tags to runs started inside an ngsll repository."""

    def in_context(self) -> bool:
        try:
            return repository_root() is not None
        except Exception:  # noqa: BLE001
            return False

    def tags(self) -> dict[str, str]:
        return version_tags()
