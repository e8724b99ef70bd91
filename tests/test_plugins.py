"""The MLflow run-context plugin: real entry point, real MLflow store, never raises."""

from __future__ import annotations

import subprocess
from importlib.metadata import entry_points

import pytest

mlflow = pytest.importorskip("mlflow")

from ngsll_plugins.run_context import NGSLLRunContext, version_tags  # noqa: E402


def make_repo(path, lock: str) -> str:
    (path / "dvc.yaml").write_text("stages: {}\n")
    (path / "dvc.lock").write_text(lock)
    for command in (["git", "init", "-q"], ["git", "add", "."],
                    ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"]):
        subprocess.run(command, cwd=path, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True).stdout.strip()


LOCK = """schema: '2.0'
stages:
  prepare:
    outs:
    - path: data/prepared/mnist
      md5: abc123.dir
    - path: models/other.pt
      md5: fff
"""


def test_tags_name_the_commit_and_data_hashes(tmp_path, monkeypatch) -> None:
    commit = make_repo(tmp_path, LOCK)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setenv("DVC_STAGE", "train_fine@5")
    tags = version_tags(tmp_path / ".")
    assert tags == {"dvc.stage": "train_fine@5", "ngsll.git.commit": commit, "ngsll.git.dirty": "false",
                    "dvc.data.data/prepared/mnist": "abc123.dir"}


def test_outside_a_repository_or_with_a_broken_lock_it_never_raises(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    assert version_tags(tmp_path) == {}
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "dvc.lock").write_text("stages: [unclosed\n")  # not YAML; and no git repository either
    assert version_tags(tmp_path) == {}


@pytest.mark.slow
def test_mlflow_loads_the_plugin_and_tags_real_runs(tmp_path, monkeypatch) -> None:
    names = {ep.name: ep.value for ep in entry_points(group="mlflow.run_context_provider")}
    assert names.get("ngsll") == "ngsll_plugins.run_context:NGSLLRunContext"
    commit = make_repo(tmp_path, LOCK)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert NGSLLRunContext().in_context()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with mlflow.start_run() as run:
        pass
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert tags["ngsll.git.commit"] == commit
    assert tags["dvc.data.data/prepared/mnist"] == "abc123.dir"
