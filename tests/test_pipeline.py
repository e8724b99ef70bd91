"""The real pipeline: `dvc repro` of this repository in a temporary git repository, with real Great
Expectations gates and a real MLflow store, checked afterwards through a real `mlflow server`.

Four datasets through the one family of stages: tiny fake MNIST (IDX files, the user-data path), a tiny
user CSV of sentences, a tiny RGB, non-square, three-class folder of PNG and JPEG files and a tiny credit
table with numbers, categories and missing values; tiny parameters keep it to a few minutes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pipeline_repo import (
    REPO, environment, make_repo, run, tiny_params, write_applicants, write_prices, write_sentences, write_shapes,
)
from test_data import fake_mnist, write_idx
from ngsll.checkpoint import model_from_checkpoint
from ngsll.data.mnist import IDX_FILES
from ngsll_plugins.torchserve import free_ports

pytestmark = pytest.mark.slow
DATASETS = ("mnist", "tiny", "shapes", "credit", "prices")  # the pipeline_repo fixture's run
# evaluate's rows for every kind: the no-gate ablation twice, with the zero-feature mask and the paper's way
MODEL_ROWS = {"NGSLL", "NGSLL (w/o K-HGM)", "NGSLL (w/o K-HGM, top-K of all features)", "Ridge", "Lasso", "DNN"}
SOURCES = {f"source@{name}" for name in DATASETS}  # always run: they fingerprint each dataset's own files


@pytest.fixture(scope="module")
def pipeline_repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    data_dir = root / "user_mnist"
    data_dir.mkdir()
    for name, array in fake_mnist(train=120, test=30).items():
        write_idx(data_dir / f"{IDX_FILES[name]}.gz", array)
    params = tiny_params("idx", data_dir, write_sentences(root / "reviews.csv"), write_shapes(root / "shapes"),
                         write_applicants(root / "applicants.csv"), write_prices(root / "prices.csv"))
    repo = make_repo(root, params)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "pipeline"], repo)  # so runs and model versions name a commit
    run(["dvc", "repro"], repo)
    return repo


def test_repro_produces_metrics_table_figures_and_loadable_models(pipeline_repo: Path) -> None:
    metrics = json.loads((pipeline_repo / "metrics/mnist/evaluate.json").read_text())
    accuracy = metrics["test_accuracy"]
    assert set(accuracy) == MODEL_ROWS
    assert set(accuracy["NGSLL"]) == {"1", "3"}
    assert all(0.0 <= value <= 1.0 for row in accuracy.values() for value in row.values())
    assert set(metrics["timing_ms_per_sample"]) == {"1", "3"}
    assert "| NGSLL |" in (pipeline_repo / "reports/mnist/table.md").read_text()
    for figure in ("weights.png", "training_curves.png", "accuracy_vs_k.png"):
        assert (pipeline_repo / "reports/mnist/figures" / figure).stat().st_size > 1000
    checkpoint = torch.load(pipeline_repo / "models/mnist/fine/k3.pt", weights_only=True)
    assert checkpoint["model_args"]["k"] == 3 and checkpoint["model_args"]["tau"] == 0.1
    assert checkpoint["params"]["defaults"]["image"]["train"]["ks"] == [1, 3]
    assert model_from_checkpoint(checkpoint).args.k == 3
    serve = pipeline_repo / "models/mnist/serve"
    assert (serve / "model-store/ngsll-mnist.mar").stat().st_size > 1000
    properties = (serve / "config/config.properties").read_text()
    assert "disable_token_authorization=false" in properties and "enable_model_api=false" in properties
    assert "inference_address=http://127.0.0.1:" in properties and "metrics_mode=prometheus" in properties
    card = (pipeline_repo / "reports/mnist/model_card.md").read_text()
    assert "## Interpretation" in card and "[missing:" not in card
    assert (pipeline_repo / "reports/mnist/model_card.html").read_text().count("data:image/png;base64,") == 5
    explain = json.loads((pipeline_repo / "metrics/mnist/explain.json").read_text())
    assert set(explain["error_gain_at_50"]) == {"K=1", "K=3"}
    for gate in ("raw", "prepared"):
        assert json.loads((pipeline_repo / f"reports/mnist/validation/{gate}.json").read_text())["success"]
    features = json.loads((pipeline_repo / "data/prepared/mnist/features.json").read_text())
    assert features["class_names"] == ["0-4", "5-9"] and features["image"]["grid"] == [7, 7]
    assert (serve / "sample/sample.png").stat().st_size > 100


def test_your_own_rgb_folder_goes_from_its_files_to_a_card_and_an_archive(pipeline_repo: Path) -> None:
    """The issue's acceptance case: an RGB, non-square, three-class folder of PNG and JPEG files of two sizes."""
    features = json.loads((pipeline_repo / "data/prepared/shapes/features.json").read_text())
    assert features["class_names"] == ["blue", "green", "red"]
    assert features["image"] == {"height": 24, "width": 32, "channels": 3, "grid": [4, 4], "cell_values": "channels",
                                 "invert_light_background": False}
    assert len(features["feature_names"]) == 48 and features["feature_names"][16] == "r0c0:green"
    info = json.loads((pipeline_repo / "data/raw/shapes.json").read_text())
    assert info["shapes"]["train"] == [36, 24, 32, 3] and any("resized" in note for note in info["notes"])
    checkpoint = torch.load(pipeline_repo / "models/shapes/fine/k3.pt", weights_only=True)
    assert checkpoint["model_args"]["in_channels"] == 3
    assert (checkpoint["model_args"]["image_size"], checkpoint["model_args"]["image_width"]) == (24, 32)
    assert checkpoint["model_args"]["task"] == "multiclass" and checkpoint["model_args"]["num_classes"] == 3
    card = (pipeline_repo / "reports/shapes/model_card.md").read_text()
    assert "[missing:" not in card and "24×32\nRGB image" in card and "### By class" in card
    for name in ("**blue**", "**green**", "**red**"):
        assert name in card
    assert (pipeline_repo / "reports/shapes/model_card.html").read_text().count("data:image/png;base64,") == 5
    with zipfile.ZipFile(pipeline_repo / "models/shapes/serve/model-store/ngsll-shapes.mar") as archive:
        assert json.loads(archive.read("features.json"))["image"]["channels"] == 3
    metrics = json.loads((pipeline_repo / "metrics/shapes/evaluate.json").read_text())
    assert set(metrics["test_accuracy"]) == MODEL_ROWS


def test_text_path_runs_from_the_same_repro(pipeline_repo: Path) -> None:
    metrics = json.loads((pipeline_repo / "metrics/tiny/evaluate.json").read_text())
    assert set(metrics["test_accuracy"]) == MODEL_ROWS
    assert set(metrics["test_accuracy"]["NGSLL"]) == {"1", "3"}
    vocabulary = json.loads((pipeline_repo / "metrics/tiny/data.json").read_text())
    features = json.loads((pipeline_repo / "data/prepared/tiny/features.json").read_text())
    assert features["class_names"] == ["neg", "pos"] and vocabulary["vocabulary_size"] == len(features["feature_names"])
    assert {"good", "bad", "film"} <= set(features["feature_names"]) and "the" not in features["feature_names"]
    page = (pipeline_repo / "reports/tiny/figures/sentences.html").read_text()
    assert page.count("NGSLL K=3") == 2 * 3  # 3 sentences per class, one line each per K
    checkpoint = torch.load(pipeline_repo / "models/tiny/fine/k1.pt", weights_only=True)
    assert checkpoint["model_args"]["input_kind"] == "text" and checkpoint["model_args"]["k"] == 1
    dnn = torch.load(pipeline_repo / "models/tiny/dnn.pt", weights_only=True)  # the dataset's own model and train
    assert dnn["phase"]["monitor"] == "val_accuracy" and dnn["model_args"]["word_dropout"] == 0.1
    serve = pipeline_repo / "models/tiny/serve"
    with zipfile.ZipFile(serve / "model-store/ngsll-tiny.mar") as archive:
        assert {"encoder.json", "features.json", "ngsll_handler.py", "k3.pt"} <= set(archive.namelist())
    sample = json.loads((serve / "sample/sample.json").read_text())["text"]
    assert sample == str(np.load(pipeline_repo / "data/prepared/tiny/test.npz")["texts"][0])  # serve.sample_index
    assert (serve / "sample/sample.txt").read_text() == sample + "\n"
    assert "load_models=ngsll-tiny.mar" in (serve / "config/config.properties").read_text()
    for gate in ("raw", "prepared"):
        assert json.loads((pipeline_repo / f"reports/tiny/validation/{gate}.json").read_text())["success"]


def test_a_text_dataset_gets_its_normlime_report_and_its_card(pipeline_repo: Path) -> None:
    importance = json.loads((pipeline_repo / "reports/tiny/explain/importance.json").read_text())
    assert importance["kind"] == "text" and set(importance["by_k"]) == {"1", "3"}
    words = importance["feature_names"]
    assert len(importance["by_k"]["3"]["normlime"]) == len(words) == len(importance["dnn_mean_gradient"])
    tables = importance["top_words_by_class"]
    assert set(tables) == {"neg", "pos"} and all(row["feature"] in words for rows in tables.values() for row in rows)
    explain = pipeline_repo / "reports/tiny/explain"
    assert "predicted neg" in (explain / "top_words.md").read_text() and (explain / "top_words.png").stat().st_size > 1000
    assert "| NormLIME |" in (explain / "faithfulness.md").read_text()
    assert set(json.loads((pipeline_repo / "metrics/tiny/explain.json").read_text())["error_gain_at_50"]) == {"K=1", "K=3"}
    card = (pipeline_repo / "reports/tiny/model_card.md").read_text()
    assert "[missing:" not in card and "sentence CNN" in card and "figures/sentences.html" in card
    assert "predicted pos" in card and "- **neg**:" in card and "“" in card  # top words, classes, example sentences
    assert (pipeline_repo / "reports/tiny/model_card.html").read_text().count("data:image/png;base64,") == 3


def test_your_own_table_goes_from_its_csv_to_a_card_and_an_archive(pipeline_repo: Path) -> None:
    """A CSV of numbers, categories and gaps: named features, its GX gate, the linear and tree baselines, NormLIME
    over named features, the card and an archive whose sample is a JSON record."""
    features = json.loads((pipeline_repo / "data/prepared/credit/features.json").read_text())
    assert features["class_names"] == ["bad", "good"] and features["table"]["categorical"] == ["job", "housing"]
    assert {"age", "amount", "amount is missing", "housing=own", "job=2"} <= set(features["feature_names"])
    encoder = json.loads((pipeline_repo / "data/prepared/credit/encoder.json").read_text())
    assert encoder["missing"] == ["amount"]  # the three gaps got an indicator
    raw_gate = json.loads((pipeline_repo / "reports/credit/validation/raw.json").read_text())
    checks = {(check["expectation_config"]["type"], check["expectation_config"]["kwargs"].get("column"))
              for suite in raw_gate["results"].values() for check in suite["results"]}
    assert raw_gate["success"] and {("expect_column_values_to_be_between", "age"),  # validate.ranges
                                    ("expect_column_values_to_not_be_null", "amount")} <= checks  # missing share
    checkpoint = torch.load(pipeline_repo / "models/credit/fine/k3.pt", weights_only=True)
    assert checkpoint["model_args"]["input_kind"] == "table"
    assert checkpoint["model_args"]["category_sizes"] == [4, 4]  # three categories and the unseen one
    metrics = json.loads((pipeline_repo / "metrics/credit/evaluate.json").read_text())
    assert set(metrics["test_accuracy"]) == MODEL_ROWS | {"Logistic", "Gradient boosting", "EBM"}
    assert set(metrics["test_auc"]["NGSLL"]) == {"1", "3"} and 0.0 <= metrics["test_auc"]["EBM"]["0"] <= 1.0
    importance = json.loads((pipeline_repo / "reports/credit/explain/importance.json").read_text())
    assert importance["kind"] == "table" and set(importance["top_features_by_class"]) == {"bad", "good"}
    assert all(row["feature"] in features["feature_names"] for rows in importance["top_features_by_class"].values()
               for row in rows)
    assert (pipeline_repo / "reports/credit/explain/top_features.png").stat().st_size > 1000
    assert (pipeline_repo / "reports/credit/figures/rows.png").stat().st_size > 1000
    card = (pipeline_repo / "reports/credit/model_card.md").read_text()
    assert "[missing:" not in card and "predicted good" in card and "Gradient boosting" in card
    assert "| test ROC AUC | K = 1 | K = 3 |" in card
    serve = pipeline_repo / "models/credit/serve"
    with zipfile.ZipFile(serve / "model-store/ngsll-credit.mar") as archive:
        assert {"encoder.json", "features.json", "ngsll_handler.py", "k3.pt"} <= set(archive.namelist())
    sample = json.loads((serve / "sample/sample.json").read_text())
    assert set(sample) >= {"age", "amount", "housing", "job"}


def test_a_regression_table_is_trained_scored_and_carded_in_its_targets_units(pipeline_repo: Path) -> None:
    """task: regression end to end: a numeric label gated by its range, standardised for training, R² / RMSE /
    MAE in euros beside regressor baselines, NormLIME over the one output, a card and an archive."""
    features = json.loads((pipeline_repo / "data/prepared/prices/features.json").read_text())
    assert features["task"] == "regression" and features["class_names"] == []
    target = features["target"]
    assert target["name"] == "price" and 150_000 < target["mean"] < 450_000 and target["std"] > 10_000
    train = np.load(pipeline_repo / "data/prepared/prices/train.npz")
    assert train["y"].dtype == np.float32 and abs(float(train["y"].mean())) < 1e-5  # standardised on its own rows
    raw_gate = json.loads((pipeline_repo / "reports/prices/validation/raw.json").read_text())
    checks = {(c["expectation_config"]["type"], c["expectation_config"]["kwargs"].get("column"))
              for suite in raw_gate["results"].values() for c in suite["results"]}
    assert ("expect_column_values_to_be_between", "label") in checks  # validate.label_range
    assert ("expect_column_values_to_be_in_set", "label") not in checks  # no class set
    checkpoint = torch.load(pipeline_repo / "models/prices/fine/k3.pt", weights_only=True)
    assert (checkpoint["model_args"]["task"], checkpoint["model_args"]["num_classes"]) == ("regression", 1)
    metrics = json.loads((pipeline_repo / "metrics/prices/evaluate.json").read_text())
    assert "test_accuracy" not in metrics and set(metrics["test_r2"]) == {
        *MODEL_ROWS, "Gradient boosting", "EBM"}  # no logistic
    assert metrics["test_r2"]["EBM"]["0"] > 0.8 and metrics["test_rmse"]["EBM"]["0"] < target["std"]  # in euros
    importance = json.loads((pipeline_repo / "reports/prices/explain/importance.json").read_text())
    assert importance["class_names"] == ["price"] and set(importance["top_features_by_class"]) == {"price"}
    assert "test RMSE gain" in (pipeline_repo / "reports/prices/explain/faithfulness.md").read_text()
    card = (pipeline_repo / "reports/prices/model_card.md").read_text()
    assert "[missing:" not in card and "regression of `price`" in card and "| test R² | K = 1 | K = 3 |" in card
    assert "tabular-regression" in card and "### By output" in card
    with zipfile.ZipFile(pipeline_repo / "models/prices/serve/model-store/ngsll-prices.mar") as archive:
        assert json.loads(archive.read("features.json"))["target"] == target
    from mlflow import MlflowClient

    champion = MlflowClient(tracking_uri=f"sqlite:///{pipeline_repo / 'mlflow.db'}").get_model_version_by_alias(
        "ngsll-prices", "champion")
    assert float(champion.tags["test_rmse"]) == pytest.approx(metrics["test_rmse"]["NGSLL"]["3"], rel=1e-3)
    assert "test_r2" in champion.tags and "test_accuracy" not in champion.tags


def ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def test_second_repro_is_a_no_op_and_a_params_change_reruns_only_what_reads_it(pipeline_repo: Path) -> None:
    assert ran_stages(run(["dvc", "repro"], pipeline_repo).stdout) == SOURCES
    original = (pipeline_repo / "params.yaml").read_text()

    def changed_by(edit) -> set[str]:
        params = yaml.safe_load(original)
        edit(params)
        (pipeline_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        return set(json.loads(run(["dvc", "status", "--json"], pipeline_repo).stdout)) - SOURCES

    # A default: only the fine stages; DVC lists every kind's defaults on every dataset's stage (a foreach cannot
    # look up an item's kind), so the text and table datasets' fine stages would re-run too.
    assert changed_by(lambda params: params["defaults"]["image"]["train"]["fine"].update(tau=0.2)) == {
        f"train_fine@{name}" for name in DATASETS}
    # One dataset's own train section: the stages that read it, of that dataset alone, and what follows them.
    changed = changed_by(lambda params: params["datasets"]["credit"]["train"].update(fine={"tau": 0.2}))
    assert {"train_coarse@credit", "train_fine@credit", "evaluate@credit"} <= changed
    assert all(stage.endswith("@credit") for stage in changed)
    ran = ran_stages(run(["dvc", "repro"], pipeline_repo).stdout)
    assert ran - SOURCES >= changed | {"package@credit"} and all(stage.endswith("@credit") for stage in ran - SOURCES)
    assert torch.load(pipeline_repo / "models/credit/fine/k3.pt", weights_only=True)["model_args"]["tau"] == 0.2


def test_editing_your_data_file_reruns_its_dataset_and_nothing_else(pipeline_repo: Path) -> None:
    """The user's CSV keeps its path and changes its content: its fetch (and what follows) re-runs, no other."""
    sentences = Path(yaml.safe_load((pipeline_repo / "params.yaml").read_text())["datasets"]["tiny"]["data"]["path"])
    original = sentences.read_text()
    try:
        sentences.write_text(original + '"film plot, great music!",pos\n')
        status = json.loads(run(["dvc", "status", "--json"], pipeline_repo).stdout)
        assert "fetch@tiny" not in status  # DVC cannot see the file; the source stage's fingerprint can
        output = run(["dvc", "repro", "prepare@tiny", "prepare@mnist"], pipeline_repo).stdout
        assert {"fetch@tiny", "validate_raw@tiny", "prepare@tiny"} <= ran_stages(output)
        assert not ran_stages(output) & {"fetch@mnist", "prepare@mnist"}
        assert json.loads((pipeline_repo / "data/raw/tiny.json").read_text())["rows"] == 61
    finally:
        sentences.write_text(original)
        run(["dvc", "repro", "prepare@tiny"], pipeline_repo)


def rest(port: int, path: str, payload: dict, method: str = "POST") -> dict:
    """Call MLflow's REST API: POST with a JSON body, or GET with the payload as the query string."""
    url = f"http://127.0.0.1:{port}/api/2.0/mlflow/{path}"
    if method == "GET":
        request = urllib.request.Request(f"{url}?{urllib.parse.urlencode(payload)}")
    else:
        request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_mlflow_server_shows_nested_runs_baselines_and_the_registered_model(pipeline_repo: Path, tmp_path) -> None:
    (port,) = free_ports(1)
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{pipeline_repo / 'mlflow.db'}",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=tmp_path, env=environment(pipeline_repo), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise AssertionError("mlflow server did not become healthy") from None
                time.sleep(0.5)
        experiments = rest(port, "experiments/search", {"max_results": 10})["experiments"]
        experiment = next(e for e in experiments if e["name"] == "mnist")
        runs = rest(port, "runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 500})["runs"]
        by_name = {}
        for found in runs:
            tags = {t["key"]: t["value"] for t in found["data"].get("tags", [])}
            by_name.setdefault(found["info"]["run_name"], []).append((found, tags))
        parent, _ = by_name["NGSLL K=3"][-1]
        children = [tags for name in ("coarse", "fine") for _, tags in by_name[name]
                    if tags.get("mlflow.parentRunId") == parent["info"]["run_id"]]
        assert sorted(t["phase"] for t in children) == ["coarse", "fine"]
        parent_metrics = {m["key"] for m in parent["data"]["metrics"]}
        assert {"test_accuracy", "ms_per_sample_batched"} <= parent_metrics
        for name in ("Ridge K=1", "Lasso K=3", "DNN", "NGSLL (w/o K-HGM) K=1",
                     "NGSLL (w/o K-HGM, top-K of all features) K=3"):
            assert any(m["key"] == "test_accuracy" for m in by_name[name][-1][0]["data"]["metrics"]), name
        fine_run = next(f for f, t in by_name["fine"] if t.get("mlflow.parentRunId") == parent["info"]["run_id"])
        assert {"val_accuracy", "learning_rate", "seconds_per_epoch"} <= {m["key"] for m in fine_run["data"]["metrics"]}
        models = rest(port, "registered-models/search", {"max_results": 10}, method="GET")["registered_models"]
        assert sorted(m["name"] for m in models) == sorted(f"ngsll-{name}" for name in DATASETS)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_registered_model_predicts_with_its_weights(pipeline_repo: Path, monkeypatch) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{pipeline_repo / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{pipeline_repo / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/ngsll-mnist@champion")
    pixels = np.random.default_rng(0).uniform(size=(3, 28, 28)).astype(np.float32)
    answer = model.predict(pixels)
    assert list(answer.columns) == ["label", "class_index", "probability", "logit", "k", "weights"]
    for logit, k, weights in zip(answer["logit"], answer["k"], answer["weights"]):
        weights = json.loads(weights)
        assert len(weights) == k
        assert sum(w["contribution"] for w in weights) == pytest.approx(logit, abs=1e-4)


def lock_md5(repo: Path, path: str) -> str:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return next(out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", []) if out["path"] == path)


def test_runs_are_model_training_runs_with_dataset_inputs_and_a_champion_per_dataset(pipeline_repo: Path) -> None:
    from mlflow import MlflowClient

    from ngsll_plugins.tracking import file_md5

    client = MlflowClient(tracking_uri=f"sqlite:///{pipeline_repo / 'mlflow.db'}")
    for dataset in ("mnist", "tiny"):
        experiment = client.get_experiment_by_name(dataset)
        assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # UI opens on the runs table
        served = torch.load(pipeline_repo / f"models/{dataset}/fine/k3.pt", weights_only=True)["mlflow_run_id"]
        prepared = pipeline_repo / f"data/prepared/{dataset}"
        inputs = {i.tags[0].value: i.dataset for i in client.get_run(served).inputs.dataset_inputs}
        assert set(inputs) == {"train", "validation", "test"}
        for context, logged in inputs.items():
            assert logged.name == f"{dataset}-{context}" and logged.digest == file_md5(prepared / f"{context}.npz")
        ridge = client.search_runs([experiment.experiment_id], "attributes.run_name = 'Ridge K=1'")[0]
        assert {i.tags[0].value for i in ridge.inputs.dataset_inputs} == {"train", "test"}

        name = f"ngsll-{dataset}"
        versions = client.search_model_versions(f"name = '{name}'")
        assert {v.tags["k"] for v in versions} == {"1", "3"}
        champion = client.get_model_version_by_alias(name, "champion")  # the served K's latest version
        assert champion.run_id == served and champion.tags["k"] == "3" and champion.tags["dataset"] == dataset
        assert 0.0 <= float(champion.tags["test_accuracy"]) <= 1.0
        assert champion.tags["dvc_data_md5"] == lock_md5(pipeline_repo, f"data/prepared/{dataset}")
        assert len(champion.tags["git_commit"]) == 40 and run(["git", "cat-file", "-t", champion.tags["git_commit"]],
                                                             pipeline_repo).stdout.strip() == "commit"


@contextlib.contextmanager
def torchserve(repo: Path, dataset: str, *options: str) -> Iterator[tuple[str, str, str]]:
    """``python -m ngsll_plugins.serve start models/<dataset>/serve [options]`` (what ``make serve`` runs):
    yields the inference URL, its bearer token and the start command's output; stops the server after."""
    from ngsll_plugins.torchserve import read_properties

    serve_dir = repo / f"models/{dataset}/serve"
    command = [sys.executable, "-m", "ngsll_plugins.serve"]
    try:
        started = subprocess.run([*command, "start", str(serve_dir), *options], cwd=repo, env=environment(repo),
                                 capture_output=True, text=True, timeout=240)
        assert started.returncode == 0, started.stderr[-3000:]
        token = json.loads((serve_dir / "run/key_file.json").read_text())["inference"]["key"]
        yield read_properties(serve_dir / "config/config.properties")["inference_address"], token, started.stdout
    finally:
        subprocess.run([*command, "stop", str(serve_dir)], cwd=repo, env=environment(repo), capture_output=True,
                       timeout=120)


def monitor(repo: Path, dataset: str) -> tuple[str, dict]:
    """``python -m ngsll_plugins.monitor --dataset <dataset>`` over the captured answers: its output and drift.json."""
    monitored = subprocess.run([sys.executable, "-m", "ngsll_plugins.monitor", "--dataset", dataset], cwd=repo,
                               env=environment(repo), capture_output=True, text=True, timeout=240)
    assert monitored.returncode == 0, monitored.stderr[-3000:]
    return monitored.stdout, json.loads((repo / f"reports/{dataset}/monitor/drift.json").read_text())


def test_make_serve_serves_a_registry_alias_with_the_packaged_config(pipeline_repo: Path) -> None:
    """`make serve MODEL=models:/ngsll-mnist@champion`: the archive is built from the registry, not the package."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{pipeline_repo / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("ngsll-mnist", "champion")
    k1 = next(v for v in client.search_model_versions("name = 'ngsll-mnist'") if v.tags["k"] == "1")
    client.set_registered_model_alias("ngsll-mnist", "champion", k1.version)  # the package serves K = 3
    serve_dir = pipeline_repo / "models/mnist/serve"
    try:
        with torchserve(pipeline_repo, "mnist", "--model-uri", "models:/ngsll-mnist@champion") as (url, token, said):
            assert "models:/ngsll-mnist@champion" in said and "curl" in said
            assert (serve_dir / "run/model-store/ngsll-mnist.mar").is_file()
            digit = (serve_dir / "sample/sample.png").read_bytes()
            request = urllib.request.Request(f"{url}/predictions/ngsll-mnist", data=digit,
                                             headers={"Authorization": f"Bearer {token}", "Content-Type": "image/png"})
            with urllib.request.urlopen(request, timeout=30) as response:
                answer = json.loads(response.read())
        assert answer["k"] == 1 and len(answer["weights"]) == 1  # the alias's model, not the packaged K = 3
        assert sum(w["contribution"] for w in answer["weights"]) == pytest.approx(answer["logit"], abs=1e-4)
    finally:
        client.set_registered_model_alias("ngsll-mnist", "champion", champion.version)


def test_the_rgb_archive_served_by_torchserve_answers_a_png_with_three_classes(pipeline_repo: Path) -> None:
    serve_dir = pipeline_repo / "models/shapes/serve"
    with torchserve(pipeline_repo, "shapes") as (url, token, _):
        photo = io.BytesIO()  # a photo of another size than training's: converted by the archive's image spec
        Image.open(serve_dir / "sample/sample.png").resize((64, 50)).save(photo, format="PNG")
        for body in ((serve_dir / "sample/sample.png").read_bytes(), photo.getvalue()):
            request = urllib.request.Request(f"{url}/explanations/ngsll-shapes", data=body,
                                             headers={"Authorization": f"Bearer {token}", "Content-Type": "image/png"})
            with urllib.request.urlopen(request, timeout=30) as response:
                answer = json.loads(response.read())
            assert set(answer["probabilities"]) == {"blue", "green", "red"}
            assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
            assert 1 <= len(answer["weights"]) <= 3 and all(":" in w["feature"] for w in answer["weights"])
            total = sum(w["contribution"] for w in answer["weights"])
            assert total == pytest.approx(answer["logits"][answer["label"]], abs=1e-4)
            assert np.asarray(answer["weight_map"]).shape == (3, 4, 4)  # one 4x4 grid per channel
    # the production config captured both answers; `monitor` reads them against the explain stage's reference
    reference = json.loads((pipeline_repo / "reports/shapes/explain/reference_profile.json").read_text())
    assert reference["model"] == "ngsll-shapes" and reference["samples"] > 0
    assert set(reference["class_shares"]) == {"blue", "green", "red"}
    said, drift = monitor(pipeline_repo, "shapes")
    assert "too few explanations" in said  # two explanations: too few to judge, nothing flagged
    assert drift["samples"] == 2 and drift["scan"]["bad_lines"] == 0 and drift["mlflow_run_id"]


def test_the_table_archive_served_by_torchserve_explains_records_and_names_what_is_wrong(pipeline_repo: Path) -> None:
    """The credit archive in a real TorchServe: a record and a v1 batch with a gap answered with named features;
    a record with a missing or unknown column, a wrong type or an unseen category a 400 naming the column, after
    which the worker still answers."""
    sample = json.loads((pipeline_repo / "models/credit/serve/sample/sample.json").read_text())
    names = json.loads((pipeline_repo / "data/prepared/credit/features.json").read_text())["feature_names"]
    with torchserve(pipeline_repo, "credit") as (url, token, _):
        def post(payload: dict) -> tuple[int, dict]:
            request = urllib.request.Request(f"{url}/predictions/ngsll-credit", data=json.dumps(payload).encode(),
                                             headers={"Authorization": f"Bearer {token}",
                                                      "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as error:
                return error.code, json.loads(error.read())

        status, answer = post(sample)
        assert status == 200 and answer["label"] in ("bad", "good")
        assert 1 <= len(answer["weights"]) <= 3 and all(w["feature"] in names for w in answer["weights"])
        assert sum(w["contribution"] for w in answer["weights"]) == pytest.approx(answer["logit"], abs=1e-4)
        status, batch = post({"instances": [sample, {**sample, "amount": None}]})
        assert status == 200 and len(batch["predictions"]) == 2
        for bad, column in (({k: v for k, v in sample.items() if k != "age"}, "age"),
                            ({**sample, "salary": 1}, "salary"), ({**sample, "age": "old"}, "age"),
                            ({**sample, "housing": "castle"}, "housing")):
            status, error = post(bad)
            assert status == 400 and column in error["error"], error
        status, again = post(sample)
        assert status == 200 and again["label"] == answer["label"]
    # the four answered records were captured with their named features, and `monitor` reads them
    _, drift = monitor(pipeline_repo, "credit")
    assert drift["samples"] == 4 and drift["scan"]["bad_lines"] == 0
    assert set(drift["class_shares"]["live"]) == {"bad", "good"}


def test_every_packaged_dataset_is_served_by_kserve_v1_and_v2_alike(pipeline_repo: Path) -> None:
    """`python -m ngsll_plugins.kserve_server start models/<name>/serve` (make serve SERVER=kserve) on the
    RGB archive, the text archive and the table archives (classes and regression) the pipeline packaged: v1
    answers and v2 tensors say the same."""
    from explanation_contract import check_served, same_as_v1, v2_outputs

    command = [sys.executable, "-m", "ngsll_plugins.kserve_server"]
    for name in ("shapes", "tiny", "credit", "prices"):
        serve_dir = pipeline_repo / f"models/{name}/serve"
        config = json.loads((serve_dir / "config/kserve.json").read_text())
        assert config["model_name"] == f"ngsll-{name}" and config["host"] == "127.0.0.1"
        url = f"http://127.0.0.1:{config['http_port']}"
        sample = json.loads((serve_dir / "sample/sample.json").read_text())

        def post(path: str, payload: dict) -> dict:
            request = urllib.request.Request(url + path, data=json.dumps(payload).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())

        try:
            started = subprocess.run([*command, "start", str(serve_dir)], cwd=pipeline_repo,
                                     env=environment(pipeline_repo), capture_output=True, text=True, timeout=240)
            assert started.returncode == 0, started.stderr[-3000:]
            answer = post(f"/v1/models/ngsll-{name}:predict", sample)
            check_served(answer)
            if name == "prices":  # the value in euros: the training mean plus std times what the weights add up to
                target = json.loads((pipeline_repo / "data/prepared/prices/features.json").read_text())["target"]
                contributions = sum(w["contribution"] for w in answer["weights"])
                assert answer["value"] == pytest.approx(target["mean"] + target["std"] * contributions, rel=1e-5)
            if name == "shapes":
                pixels = np.asarray(sample["image"], dtype=np.float32)  # (24, 32, 3)
                tensor = {"name": "image", "datatype": "FP32", "shape": [1, *pixels.shape], "data": pixels.ravel().tolist()}
            elif name == "tiny":
                tensor = {"name": "text", "datatype": "BYTES", "shape": [1], "data": [sample["text"]]}
            else:
                tensor = {"name": "record", "datatype": "BYTES", "shape": [1], "data": [json.dumps(sample)]}
            arrays = v2_outputs(post(f"/v2/models/ngsll-{name}/infer", {"inputs": [tensor]}), k=3)
            same_as_v1(arrays, [answer])
        finally:
            subprocess.run([*command, "stop", str(serve_dir)], cwd=pipeline_repo, env=environment(pipeline_repo),
                           capture_output=True, timeout=120)


def test_the_gpu_check_script_runs_its_checks_on_the_cpu(pipeline_repo: Path) -> None:
    """benchmarks/gpu_check.py with --device cpu on the pipeline's tiny prepared data (no GPU in CI)."""
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/gpu_check.py"), "--device", "cpu", "--epochs", "1",
         "--data-dir", str(pipeline_repo / "data/prepared/mnist"),
         "--checked", str(pipeline_repo / "reports/mnist/validation/prepared.json"),
         "--params", str(pipeline_repo / "params.yaml")],
        cwd=pipeline_repo, env=environment(pipeline_repo), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.count("| passed |") == 3 and "FAILED" not in result.stdout
    assert "paper Table 2 (RTX 2080Ti) | 2.55 | 6.19 | 10.76 |" in result.stdout


def test_mlproject_train_entry_point_runs_an_experiment_offline(pipeline_repo: Path) -> None:
    run(["git", "add", "-A"], pipeline_repo)
    run(["git", "commit", "-qm", "baseline"], pipeline_repo)
    run([sys.executable, "-m", "mlflow", "run", ".", "-e", "train", "-P", "dataset=mnist", "-P", "k=2",
         "--env-manager", "local", "--experiment-name", "mnist"], pipeline_repo)
    metrics = json.loads((pipeline_repo / "metrics/mnist/evaluate.json").read_text())
    assert set(metrics["test_accuracy"]["NGSLL"]) == {"2"}
    assert torch.load(pipeline_repo / "models/mnist/fine/k2.pt", weights_only=True)["model_args"]["k"] == 2


def test_accuracy_benchmark_runs_seeds_as_dvc_experiments(pipeline_repo: Path, monkeypatch) -> None:
    from test_benchmarks import accuracy

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{pipeline_repo / 'mlflow.db'}")
    run(["git", "add", "-A"], pipeline_repo)
    run(["git", "commit", "-qm", "before seeds"], pipeline_repo, check=False)
    # one seed here (each is a whole `dvc exp run --temp`); test_benchmarks averages several
    accuracy.run_seed(pipeline_repo, 1, ["tiny"], "bench-seed1", accuracy.QUICK_OVERRIDES)
    runs = accuracy.collect(pipeline_repo, ["bench-seed1"], ["tiny"])["tiny"]
    assert len(runs) == 1 and set(runs[0]["test_accuracy"]["NGSLL"]) == {"1", "3"}
    assert "| NGSLL |" in accuracy.summary_table("tiny", runs) and "| NGSLL |" in accuracy.summary_table(
        "tiny", runs, "test_auc")


def test_architecture_search_runs_each_grid_point_as_an_experiment_and_records_the_choice(
        pipeline_repo: Path, monkeypatch) -> None:
    from test_benchmarks import architecture_search

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{pipeline_repo / 'mlflow.db'}")
    run(["git", "add", "-A"], pipeline_repo)
    run(["git", "commit", "-qm", "before the search"], pipeline_repo, check=False)
    grid = {"hidden_layers": [1], "hidden_units": [8, 16]}
    record = architecture_search.search(pipeline_repo, "tiny", grid, "arch", architecture_search.QUICK_OVERRIDES)
    assert [(p["hidden_layers"], p["hidden_units"]) for p in record["points"]] == [(1, 8), (1, 16)]
    for point in record["points"]:  # the kept epoch of each fine model, read back from the experiment's commit
        assert set(point["scores"]) == {"1", "3"} and all(0.0 <= v <= 1.0 for v in point["scores"].values())
    best = max(record["points"], key=lambda p: p["mean"])
    assert record["chosen"] == {"hidden_layers": 1, "hidden_units": best["hidden_units"]}
    revision = architecture_search.experiment_revisions(pipeline_repo, ["arch-tiny-L1-U16"])["arch-tiny-L1-U16"]
    trained = yaml.safe_load(run(["git", "show", f"{revision}:params.yaml"], pipeline_repo).stdout)
    assert trained["datasets"]["tiny"]["model"]["hidden_units"] == 16  # what that point's experiment trained
    out = architecture_search.write_record(pipeline_repo, record)
    assert json.loads(out.read_text())["chosen"] == record["chosen"]
    assert "**(chosen)**" in architecture_search.markdown(record)


def test_distributed_switch_runs_a_dvc_training_stage_under_torchrun(pipeline_repo: Path) -> None:
    run(["git", "add", "-A"], pipeline_repo)
    run(["git", "commit", "-qm", "before ddp"], pipeline_repo, check=False)
    result = run(["dvc", "exp", "run", "--temp", "--name", "ddp", "-S", "distributed.nproc_per_node=2",
                  "train_dnn@mnist"], pipeline_repo)
    assert "2 processes under torchrun" in result.stdout + result.stderr
    with sqlite3.connect(pipeline_repo / "mlflow.db") as connection:
        logged = connection.execute(
            "SELECT r.name, r.status FROM runs r JOIN params p ON p.run_uuid = r.run_uuid "
            "WHERE p.key = 'world_size' AND p.value = '2'").fetchall()
    assert logged == [("DNN", "FINISHED")]  # one run, from rank 0


def test_a_stopped_training_stage_ends_its_runs_as_killed_and_leaves_no_partial_output(pipeline_repo: Path) -> None:
    """SIGTERM to `dvc repro` and its stage (what a cancelled CI job sends its process group) mid-training;
    then the one command that resumes."""
    params_path = pipeline_repo / "params.yaml"
    original = params_path.read_text()
    params = yaml.safe_load(original)
    params["defaults"]["image"]["train"]["dnn"].update(max_epochs=100000, patience=100000)  # trains until stopped
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))

    def dnn_runs() -> dict[str, str]:
        with sqlite3.connect(pipeline_repo / "mlflow.db") as connection:
            return dict(connection.execute("SELECT run_uuid, status FROM runs WHERE name = 'DNN'").fetchall())

    before = set(dnn_runs())
    process = subprocess.Popen(["dvc", "repro", "train_dnn@mnist"], cwd=pipeline_repo, env=environment(pipeline_repo),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not [status for run_id, status in dnn_runs().items() if run_id not in before]:
            assert process.poll() is None and time.monotonic() < deadline, "the DNN run never started"
            time.sleep(0.2)
        time.sleep(1.0)  # some epochs into training
        os.killpg(process.pid, signal.SIGTERM)
        process.communicate(timeout=60)
        while "RUNNING" in (new := {r: s for r, s in dnn_runs().items() if r not in before}).values():
            assert time.monotonic() < deadline + 60, "the stopped stage left its run RUNNING"
            time.sleep(0.2)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode != 0
    ((run_id, status),) = new.items()
    assert status == "KILLED"
    from mlflow import MlflowClient

    tags = MlflowClient(tracking_uri=f"sqlite:///{pipeline_repo / 'mlflow.db'}").get_run(run_id).data.tags
    assert tags["ngsll.stop_reason"] == "stopped by SIGTERM"
    assert not (pipeline_repo / "models/mnist/dnn.pt").exists()  # DVC removed it before the stage ran
    assert not list(pipeline_repo.rglob("*.partial"))  # and the stage left no half-written file
    assert "train_dnn@mnist" in json.loads(run(["dvc", "status", "--json"], pipeline_repo).stdout)

    params_path.write_text(original)
    run(["dvc", "repro"], pipeline_repo)  # the one command that resumes
    assert (pipeline_repo / "models/mnist/dnn.pt").exists()
    assert set(json.loads(run(["dvc", "status", "--json"], pipeline_repo).stdout)) <= SOURCES  # and nothing is left


def test_the_monitor_throughput_benchmark_runs_on_the_packaged_models(pipeline_repo: Path) -> None:
    result = subprocess.run([sys.executable, str(REPO / "benchmarks/monitor_throughput.py"), "--datasets", "shapes",
                             "tiny", "--records", "60"], cwd=pipeline_repo, env=environment(pipeline_repo),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| shapes") or line.startswith("| tiny")]
    assert len(rows) == 2 and all("| 60 |" in row for row in rows), result.stdout


@pytest.mark.parametrize("dataset, quality", [("credit", "| test ROC AUC | K = 1 | K = 3 |"),
                                              ("prices", "| test R² | K = 1 | K = 3 |")])
def test_the_table_cost_benchmark_times_ngsll_treeshap_and_lime_on_the_packaged_table(
        pipeline_repo: Path, dataset: str, quality: str) -> None:
    command = [sys.executable, str(REPO / "benchmarks/table_cost.py"), "--data-dir", f"data/prepared/{dataset}",
               "--fine-dir", f"models/{dataset}/fine", "--ks", "1", "3", "--samples", "4", "--lime-samples", "1",
               "--num-samples", "200"]
    result = subprocess.run(command, cwd=pipeline_repo, env=environment(pipeline_repo), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for row in ("| NGSLL torch, 1 row |", "| NGSLL numpy, 1 row |", "| TreeSHAP on gradient boosting, 1 row |",
                "| LIME tabular (200 samples) on"):
        assert row in result.stdout, result.stdout
    assert quality in result.stdout and "| gradient boosting |" in result.stdout
