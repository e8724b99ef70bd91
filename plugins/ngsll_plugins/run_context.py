"""MLflow run-context plugin: tag every run started inside an ngsll repository with its versions.

Registered under the entry-point group ``mlflow.run_context_provider``. Tags: ``ngsll.git.commit``,
``ngsll.git.dirty``, ``ngsll.git.remote`` (the ``origin`` URL), ``dvc.stage`` (the stage DVC is running,
if any), ``dvc.remote`` (the default DVC remote's URL) and ``dvc.data.<path>`` (the DVC hash of every data
output recorded in ``dvc.lock``).

A guest in every MLflow process: outside a repository holding ``dvc.yaml`` it adds nothing and runs no
command; inside one each git call is bounded by :data:`GIT_TIMEOUT_S`; it never raises (MLflow must not
fail or wait on a run because version information is unavailable) and never records credentials: URLs
lose their user, password, query and fragment before they become tags.
"""

from __future__ import annotations

import configparser
import logging
import os
import subprocess
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from mlflow.tracking.context.abstract_context import RunContextProvider

log = logging.getLogger(__name__)

GIT_TIMEOUT_S = 2.0  # per git call; a hung or slow git (network filesystem, lock) costs a run at most this


def repository_root(start: Path | None = None) -> Path | None:
    """The nearest folder holding ``dvc.yaml`` (``DVC_ROOT`` when DVC runs a stage), or None."""
    if os.environ.get("DVC_ROOT"):
        root = Path(os.environ["DVC_ROOT"])
        return root if root.is_dir() else None
    here = (start or Path.cwd()).resolve()
    return next((folder for folder in (here, *here.parents) if (folder / "dvc.yaml").is_file()), None)


def without_credentials(url: str) -> str:
    """``url`` without user, password, query or fragment (``https://u:p@host/x?sig=s`` -> ``https://host/x``).

    scp-like git addresses (``git@host:org/repo.git``) lose their user too; a plain path is returned as is.
    """
    parts = urlsplit(url)
    if parts.scheme and parts.netloc:
        host = parts.netloc.rsplit("@", 1)[-1]
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    if "@" in url and ":" in url.split("@", 1)[1]:  # user@host:path
        return url.split("@", 1)[1]
    return url


def git_tags(root: Path) -> dict[str, str]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=GIT_TIMEOUT_S,
                              check=True, stdin=subprocess.DEVNULL).stdout.strip()

    tags = {"ngsll.git.commit": git("rev-parse", "HEAD")}
    tags["ngsll.git.dirty"] = str(bool(git("status", "--porcelain", "--untracked-files=no"))).lower()
    try:
        remote = git("remote", "get-url", "origin")
    except subprocess.CalledProcessError:  # no origin: nothing to record
        remote = ""
    if remote:
        tags["ngsll.git.remote"] = without_credentials(remote)
    return tags


def dvc_remote_tags(root: Path) -> dict[str, str]:
    """``dvc.remote`` -> the URL of the default remote named in ``.dvc/config`` (credentials removed)."""
    config = configparser.ConfigParser()
    config.read([root / ".dvc" / "config", root / ".dvc" / "config.local"])
    default = config.get("core", "remote", fallback="")
    url = config.get(f"'remote \"{default}\"'", "url", fallback="") if default else ""
    return {"dvc.remote": without_credentials(url)} if url else {}


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
        for collect in (git_tags, dvc_remote_tags, dvc_data_tags):
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
