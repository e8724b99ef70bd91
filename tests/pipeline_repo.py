"""Build a temporary git + DVC repository of this repository's pipeline with tiny parameters, and the tiny
user data files it runs on (a fake MNIST, a CSV of sentences, an RGB folder of shapes, a credit table, a
regression table of flat prices).

Shared by the real-pipeline tests (``test_pipeline.py``: one repository, every dataset to its archive) and the
failure-path tests (``test_pipeline_failures.py``: one repository per broken input).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from ngsll_plugins.torchserve import free_ports

REPO = Path(__file__).resolve().parents[1]
COPIED = ("pipeline", "dvc.yaml", "MLproject", ".dvcignore", "src/ngsll", "handlers", "plugins/ngsll_plugins")


def environment(repo: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}",
        "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "t@t",
    }


def run(command: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=environment(cwd), capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def write_sentences(path: Path, empty_row: bool = False) -> Path:
    """A tiny two-class user CSV: "good"/"great" sentences are pos, "bad"/"awful" ones neg, with filler."""
    rng = np.random.default_rng(0)
    rows = ["review,stars"]
    for i in range(60):
        positive = i % 2 == 0
        word = rng.choice(["good", "great"] if positive else ["bad", "awful"])
        filler = " ".join(rng.choice(["film", "plot", "actors", "music", "ending", "the", "was"], size=4))
        rows.append(f"\"{filler}, {word} {filler}!\",{'pos' if positive else 'neg'}")
    if empty_row:
        rows.append('"?!",pos')
    path.write_text("\n".join(rows) + "\n")
    return path


def write_shapes(root: Path, per_class: int = 12) -> Path:
    """A tiny RGB, non-square, three-class image folder: a red, green or blue square on grey noise, PNG and JPEG,
    two sizes (resized to one by ``data.size``)."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(("blue", "green", "red")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            height, width = (30, 40) if i % 3 else (36, 48)
            pixels = rng.integers(60, 120, size=(height, width, 3)).astype(np.uint8)
            top, left = rng.integers(0, height - 14), rng.integers(0, width - 14)
            pixels[top:top + 14, left:left + 14] = 30
            pixels[top:top + 14, left:left + 14, 2 - c] = 230  # blue: channel 2, green: 1, red: 0
            Image.fromarray(pixels).save(root / name / f"{i}.{'jpg' if i % 4 == 0 else 'png'}")
    return root


def write_applicants(path: Path, rows: int = 120) -> Path:
    """A tiny credit table: numbers (age; amount with three gaps), a category (housing) and job codes declared
    categorical; "good" risk when older than 40 or a home owner."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"age": rng.integers(18, 70, rows), "amount": rng.gamma(2.0, 1000.0, rows).round(),
                          "housing": rng.choice(["own", "rent", "free"], rows), "job": rng.choice([0, 1, 2], rows)})
    frame.loc[[3, 7, 11], "amount"] = np.nan
    frame["risk"] = np.where((frame["age"] > 40) | (frame["housing"] == "own"), "good", "bad")
    frame.to_csv(path, index=False)
    return path


def write_prices(path: Path, rows: int = 120) -> Path:
    """A tiny regression table: a flat's price (around 300,000, so training must standardise it) from its area,
    its district (a category) and its age (two gaps): 2,500 per square metre, +60,000 in the centre, -1,000 a
    year, plus noise."""
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"area": rng.uniform(30, 150, rows).round(1), "district": rng.choice(["centre", "north",
                                                                                               "south"], rows),
                          "age": rng.integers(0, 80, rows).astype(float)})
    frame["price"] = (2500 * frame["area"] + 60000 * (frame["district"] == "centre") - 1000 * frame["age"]
                      + 50000 + rng.normal(0, 5000, rows)).round()
    frame.loc[[2, 9], "age"] = np.nan
    frame.to_csv(path, index=False)
    return path


def tiny_params(source: str, data_path: Path, sentences: Path, shapes: Path | None = None,
                applicants: Path | None = None, prices: Path | None = None) -> dict:
    """The repository's params with tiny models and epochs; datasets mnist (a user copy at ``data_path``),
    tiny (the user CSV), with ``shapes`` the RGB image folder, with ``applicants`` the credit table and with
    ``prices`` the regression table."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["device"] = "cpu"
    image, text, table = params["defaults"]["image"], params["defaults"]["text"], params["defaults"]["table"]
    image["model"].update(conv_channels=[2, 2, 2], hidden_units=8)
    text["model"].update(embedding_dim=8, filter_maps=4, hidden_units=8)
    table["model"].update(embedding_dim=4, hidden_units=8)
    for defaults in (image, text, table):
        defaults["train"]["ks"] = [1, 3]
        for phase in ("coarse", "fine", "dnn"):
            defaults["train"][phase].update(max_epochs=1, patience=1)
        defaults["serve"]["k"] = 3
    for defaults in (text, table):
        defaults["train"]["coarse"]["k"] = 3  # the tiny vocabulary and table have about 10 features
    params["baselines"]["cv_folds"] = 2
    params["evaluate"].update(timing_samples=16, single_samples=4, figure_digits_per_class=1)
    inference, management, metrics, kserve = free_ports(4)  # `make serve` in a test must not need 8080-8090 free
    params["serve"].update(inference_port=inference, management_port=management, metrics_port=metrics,
                           kserve_port=kserve)
    mnist = params["datasets"]["mnist"]
    mnist["data"].update(source=source, path=str(data_path), num_validation=20)
    del mnist["data"]["wheel"]
    mnist["validate"].update(rows={"train": [50, 60000], "test": [10, 10000]}, class_share_tolerance=0.3)
    params["datasets"] = {"mnist": mnist, "tiny": {
        "kind": "text", "description": "tiny reviews",
        "data": {"source": "file", "format": "csv", "path": str(sentences), "text_column": "review",
                 "label_column": "stars"},
        "validate": {"rows": {"min": 10, "max": 1000}}, "model": {"word_dropout": 0.1},
        "train": {"dnn": {"monitor": "val_accuracy"}}, "serve": {},
    }}
    params["run"] = ["mnist", "tiny"]
    if shapes is not None:
        params["datasets"]["shapes"] = {
            "kind": "image", "description": "coloured squares",
            "data": {"source": "folder", "path": str(shapes), "size": [24, 32], "grid": [4, 4], "cell_values": "channels",
                     "num_validation": 6},
            "validate": {}, "model": {}, "train": {}, "serve": {},
        }
        params["run"].append("shapes")
    if applicants is not None:
        params["datasets"]["credit"] = {
            "kind": "table", "description": "tiny credit table",
            "data": {"source": "file", "path": str(applicants), "label_column": "risk", "task": "binary",
                     "categorical": ["job"]},
            "validate": {"ranges": {"age": [18, 100]}}, "model": {}, "train": {}, "serve": {},
        }
        params["run"].append("credit")
    if prices is not None:
        params["datasets"]["prices"] = {
            "kind": "table", "description": "tiny flat prices",
            "data": {"source": "file", "path": str(prices), "label_column": "price", "task": "regression"},
            "validate": {"label_range": [0, 2000000]}, "model": {}, "train": {}, "serve": {},
        }
        params["run"].append("prices")
    return params


def make_repo(root: Path, params: dict) -> Path:
    repo = root / "repo"
    repo.mkdir()
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(source, repo / name)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / ".gitignore").write_text("mlflow.db\nmlartifacts/\n")
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    run(["dvc", "config", "core.analytics", "false"], repo)
    return repo
