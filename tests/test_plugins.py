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
    mlflow.set_experiment("run-context")  # forget any experiment an earlier test made active elsewhere
    with mlflow.start_run() as run:
        pass
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert tags["ngsll.git.commit"] == commit
    assert tags["dvc.data.data/prepared/mnist"] == "abc123.dir"


@pytest.mark.slow
def test_evaluator_plugin_computes_normlime_and_faithfulness_for_a_logged_model(tmp_path) -> None:
    import json as json_module

    import numpy as np
    import torch

    from conftest import tiny_args
    from ngsll import build_model
    from ngsll.checkpoint import checkpoint_dict
    from ngsll.simplify import cell_names
    from ngsll_plugins.tracking import log_pyfunc_model

    names = {ep.name: ep.value for ep in entry_points(group="mlflow.model_evaluator")}
    assert names.get("ngsll") == "ngsll_plugins.evaluator:NGSLLEvaluator"
    torch.manual_seed(0)
    model = build_model(tiny_args(num_features=49, image_size=28, k=3))
    torch.save(checkpoint_dict(model, {}), tmp_path / "model.pt")
    (tmp_path / "features.json").write_text(json_module.dumps({"feature_names": cell_names(7), "class_names": ["0-4", "5-9"]}))
    rng = np.random.default_rng(0)
    pixels = (rng.random((40, 28, 28)) < 0.2).astype(np.float32)
    labels = (pixels[:, :14].sum(axis=(1, 2)) > pixels[:, 14:].sum(axis=(1, 2))).astype(int)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("evaluator")
    with mlflow.start_run() as run:
        info = log_pyfunc_model(tmp_path / "model.pt", tmp_path / "features.json", None, pixels[:2])
        result = mlflow.models.evaluate(info.model_uri, pixels.reshape(40, -1), targets=labels,
                                        model_type="classifier", evaluators=["ngsll"])
    assert 0 <= result.metrics["accuracy"] <= 1
    assert {"error_gain_at_50/NormLIME", "error_gain_at_50/random"} <= set(result.metrics)
    logged = {f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id, "ngsll_evaluation")}
    assert logged == {"ngsll_evaluation/importance.json", "ngsll_evaluation/class_maps.png",
                      "ngsll_evaluation/faithfulness.png"}
