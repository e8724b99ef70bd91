"""The MLflow plugins as guests of a real MLflow store: the run-context plugin (never raises, bounded, no
credentials) and the evaluator (NGSLL models only; image and text)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

mlflow = pytest.importorskip("mlflow")

from ngsll_plugins.evaluator import NGSLLEvaluator, is_ngsll_model  # noqa: E402
from ngsll_plugins.run_context import GIT_TIMEOUT_S, NGSLLRunContext, version_tags, without_credentials  # noqa: E402


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


def test_run_context_in_a_plain_folder_adds_no_tags_and_raises_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no git, no DVC, no dvc.yaml anywhere above a fresh temporary folder
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert not NGSLLRunContext().in_context()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("plain")
    with mlflow.start_run() as run:
        pass
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert not [key for key in tags if key.startswith(("ngsll.", "dvc."))]


def test_run_context_never_records_credentials(tmp_path, monkeypatch) -> None:
    make_repo(tmp_path, LOCK)
    subprocess.run(["git", "remote", "add", "origin", "https://alice:s3cret@git.example.com/org/repo.git?x=1"],
                   cwd=tmp_path, check=True)
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text("[core]\n    remote = store\n['remote \"store\"']\n"
                                              "    url = https://bob:hunter2@dvc.example.com/cache?sig=t0ken\n")
    monkeypatch.delenv("DVC_ROOT", raising=False)
    tags = version_tags(tmp_path)
    assert tags["ngsll.git.remote"] == "https://git.example.com/org/repo.git"
    assert tags["dvc.remote"] == "https://dvc.example.com/cache"
    assert not [value for value in tags.values() if any(s in value for s in ("s3cret", "hunter2", "t0ken", "alice"))]
    assert without_credentials("git@github.com:org/repo.git") == "github.com:org/repo.git"
    assert without_credentials("/srv/dvc-cache") == "/srv/dvc-cache"


def test_a_hanging_git_delays_a_run_by_a_bounded_time(tmp_path, monkeypatch) -> None:
    make_repo(tmp_path, LOCK)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "git").write_text("#!/bin/sh\nsleep 60\n")  # a git stuck on a network filesystem or a lock
    (fake_bin / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")
    monkeypatch.delenv("DVC_ROOT", raising=False)
    started = time.monotonic()
    tags = version_tags(tmp_path)
    assert time.monotonic() - started < 3 * GIT_TIMEOUT_S + 2  # the first git call times out; nothing waits 60 s
    assert "ngsll.git.commit" not in tags and tags["dvc.data.data/prepared/mnist"] == "abc123.dir"


def _sklearn_model_and_data():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(60, 3)), columns=["a", "b", "c"])
    frame["label"] = (frame["a"] + 0.5 * frame["b"] > 0).astype(int)
    return LogisticRegression().fit(frame[["a", "b", "c"]], frame["label"]), frame


@pytest.mark.slow
def test_a_scikit_learn_evaluation_is_the_same_with_ngsll_installed(tmp_path) -> None:
    """MLflow runs every installed evaluator that says yes; ngsll's must leave a plain classifier alone."""
    names = {ep.name for ep in entry_points(group="mlflow.model_evaluator")}
    assert "ngsll" in names  # installed, so MLflow considers it below
    model, frame = _sklearn_model_and_data()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("sklearn-host")
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(model, name="model", input_example=frame[["a", "b", "c"]].head(2))
    config = {"log_model_explainability": False}  # no SHAP: the comparison needs only the metrics
    results = {}
    # None: every installed evaluator that says it can; ["default"]: MLflow's own alone
    for evaluators, evaluator_config in ((None, config), (["default"], {"default": config})):
        with mlflow.start_run() as run:
            results[str(evaluators)] = mlflow.models.evaluate(info.model_uri, frame, targets="label",
                                                              model_type="classifier", evaluators=evaluators,
                                                              evaluator_config=evaluator_config).metrics
        logged = {f.path for f in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
        assert "ngsll_evaluation" not in logged
    assert results["None"] == results["['default']"] and results["None"]["accuracy_score"] > 0.8
    assert NGSLLEvaluator.can_evaluate(model_type="regressor", evaluator_config={}) is False
    assert NGSLLEvaluator.can_evaluate(model_type="classifier", evaluator_config={},
                                       model=mlflow.pyfunc.load_model(info.model_uri)) is False
    assert not is_ngsll_model(mlflow.pyfunc.load_model(info.model_uri)) and not is_ngsll_model(None)


@pytest.mark.slow
def test_evaluator_plugin_gives_a_text_model_word_importance_and_faithfulness(tmp_path) -> None:
    from ngsll.text import TextEncoder
    from ngsll_plugins.tracking import log_pyfunc_model
    from test_text_serving import CLASSES, CORPUS, write_text_model

    checkpoint, features, encoder_file = write_text_model(tmp_path / "text", TextEncoder.fit(CORPUS, max_length=12))
    sentences = CORPUS * 4
    labels = [CLASSES[i % 3] for i in range(len(sentences))]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("text-evaluator")
    with mlflow.start_run() as run:
        info = log_pyfunc_model(checkpoint, features, None, CORPUS[:2], encoder_path=encoder_file)
        assert is_ngsll_model(mlflow.pyfunc.load_model(info.model_uri))
        result = mlflow.models.evaluate(info.model_uri, pd.DataFrame({"text": sentences, "label": labels}),
                                        targets="label", model_type="classifier", evaluators=["ngsll"])
    assert 0 <= result.metrics["accuracy"] <= 1
    assert {"error_gain_at_50/NormLIME", "error_gain_at_50/random"} <= set(result.metrics)
    client = mlflow.MlflowClient()
    logged = {f.path for f in client.list_artifacts(run.info.run_id, "ngsll_evaluation")}
    assert logged == {f"ngsll_evaluation/{name}" for name in
                      ("importance.json", "top_words.md", "top_words.png", "faithfulness.png")}
    importance = json.loads(Path(client.download_artifacts(run.info.run_id, "ngsll_evaluation/importance.json",
                                                           str(tmp_path))).read_text())
    vocabulary = set(importance["feature_names"])
    assert set(importance["top_words_by_class"]) == set(CLASSES)
    for rows in importance["top_words_by_class"].values():
        assert all(row["feature"] in vocabulary and row["importance"] > 0 for row in rows)
        assert [row["importance"] for row in rows] == sorted((row["importance"] for row in rows), reverse=True)
    with pytest.raises(mlflow.exceptions.MlflowException, match="not classes of this model"):
        mlflow.models.evaluate(info.model_uri, pd.DataFrame({"text": sentences, "label": ["nope"] * len(sentences)}),
                               targets="label", model_type="classifier", evaluators=["ngsll"])


def test_mlflow_loading_the_evaluator_imports_neither_torch_nor_the_core() -> None:
    """MLflow loads every installed evaluator whenever anyone evaluates: ours must cost a host nothing."""
    import sys

    probe = ("import sys\nfrom mlflow.models.evaluation.evaluator_registry import _model_evaluation_registry as r\n"
             "print('ngsll' in r._registry, 'torch' in sys.modules, 'ngsll' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.split() == ["True", "False", "False"]


STOPPED_INSIDE_A_TRANSACTION = '''
import os, signal, sys
import mlflow
from sqlalchemy import event
from sqlalchemy.orm import Session
from ngsll_plugins.tracking import end_runs_on_signal

mlflow.set_tracking_uri(sys.argv[1])
end_runs_on_signal()
armed = False

def signal_while_the_write_lock_is_held(session, flush_context):
    global armed
    if armed:
        armed = False
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, before this transaction commits

event.listen(Session, "after_flush", signal_while_the_write_lock_is_held)
with mlflow.start_run(run_name="stage") as stage, mlflow.start_run(run_name="phase", nested=True) as phase:
    print(stage.info.run_id, phase.info.run_id, flush=True)
    armed = True
    mlflow.log_params({"lr": 0.1, "epochs": 3})
    print("not stopped", flush=True)
'''


def test_a_signal_inside_an_mlflow_transaction_still_ends_every_open_run_as_killed(tmp_path) -> None:
    """The race a cancelled job hits: SIGTERM while a stage's own SQLite write holds the store's lock."""
    import sys

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    script = tmp_path / "stage.py"
    script.write_text(STOPPED_INSIDE_A_TRANSACTION)
    result = subprocess.run([sys.executable, str(script), uri], capture_output=True, text=True, timeout=180)
    assert result.returncode == 128 + 15, result.stderr[-3000:]
    stage_id, phase_id = result.stdout.split()  # and no "not stopped": the signal stopped the stage
    client = mlflow.MlflowClient(tracking_uri=uri)
    for run_id in (stage_id, phase_id):
        run = client.get_run(run_id)
        assert run.info.status == "KILLED", result.stderr[-3000:]
        assert run.data.tags["ngsll.stop_reason"] == "stopped by SIGTERM"
    assert client.get_run(phase_id).data.params == {}  # the interrupted write was rolled back, not half-done
