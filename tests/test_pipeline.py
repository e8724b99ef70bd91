"""The real pipeline: `dvc repro` of this repository's dvc.yaml in a temporary git repository.

Tiny fake MNIST (IDX files, the user-data path) and tiny parameters keep it to well under a minute.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from test_data import fake_mnist, write_idx
from ngsll.checkpoint import model_from_checkpoint
from ngsll.data.mnist import IDX_FILES

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(command: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def tiny_params(data_dir: Path) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["device"] = "cpu"
    params["data"].update(source="idx", path=str(data_dir), num_validation=20)
    params["model"].update(conv_channels=[2, 2, 2], hidden_units=8)
    params["train"]["ks"] = [1, 3]
    for phase in ("coarse", "fine", "dnn"):
        params["train"][phase].update(max_epochs=1, patience=1)
    params["baselines"]["cv_folds"] = 2
    params["evaluate"].update(timing_samples=16, single_samples=4, figure_digits_per_class=1)
    return params


@pytest.fixture(scope="module")
def pipeline_repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    data_dir = root / "user_mnist"
    data_dir.mkdir()
    for name, array in fake_mnist(train=120, test=30).items():
        write_idx(data_dir / f"{IDX_FILES[name]}.gz", array)
    repo = root / "repo"
    repo.mkdir()
    shutil.copytree(REPO / "pipeline", repo / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params(data_dir)))
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    run(["dvc", "config", "core.analytics", "false"], repo)
    run(["dvc", "repro"], repo)
    return repo


def test_repro_produces_metrics_table_figures_and_loadable_models(pipeline_repo: Path) -> None:
    metrics = json.loads((pipeline_repo / "metrics/mnist/evaluate.json").read_text())
    accuracy = metrics["test_accuracy"]
    assert set(accuracy) == {"NGSLL", "NGSLL (w/o K-HGM)", "Ridge", "Lasso", "DNN"}
    assert set(accuracy["NGSLL"]) == {"1", "3"}
    assert all(0.0 <= value <= 1.0 for row in accuracy.values() for value in row.values())
    assert set(metrics["timing_ms_per_sample"]) == {"1", "3"}
    assert "| NGSLL |" in (pipeline_repo / "reports/mnist/table.md").read_text()
    for figure in ("weights.png", "training_curves.png"):
        assert (pipeline_repo / "reports/mnist/figures" / figure).stat().st_size > 1000
    checkpoint = torch.load(pipeline_repo / "models/mnist/fine/k3.pt", weights_only=True)
    assert checkpoint["model_args"]["k"] == 3 and checkpoint["model_args"]["tau"] == 0.1
    assert checkpoint["params"]["train"]["ks"] == [1, 3]
    assert model_from_checkpoint(checkpoint).args.k == 3
    assert json.loads((pipeline_repo / "data/raw/source.json").read_text())["source"] == "idx"


def test_second_repro_is_a_no_op(pipeline_repo: Path) -> None:
    assert "up to date" in run(["dvc", "repro"], pipeline_repo)
