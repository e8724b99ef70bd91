"""Smoke test of the latency benchmark's code on tiny inputs (timings are printed, never asserted)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_args
from ngsll import build_model

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


latency, accuracy = load_benchmark("latency"), load_benchmark("accuracy")
architecture_search = load_benchmark("architecture_search")
recipes = load_benchmark("recipes")
kar_curve = load_benchmark("kar_curve")


def test_latency_benchmark_runs_every_row_on_tiny_inputs() -> None:
    torch.manual_seed(0)
    models = {k: build_model(tiny_args(num_features=4, k=k)) for k in (1, 2)}
    rng = np.random.default_rng(0)
    x = rng.random((6, 1, 8, 8)).astype(np.float32)
    z = rng.random((6, 4)).astype(np.float32)
    rows = latency.ngsll_rows(models, x, z, samples=2, batch=4)
    assert set(rows) == {f"NGSLL, {g}, {n}" for g in ("one-pass top-K", "sequential K-step")
                         for n in ("1 sample", "batch 4 (per sample)")}
    pytest.importorskip("lime")
    rows |= latency.lime_rows(z, np.array([0, 1, 0, 1, 0, 1]), z, [1, 2], samples=1, num_samples=50, seed=0)
    pytest.importorskip("shap")
    rows |= latency.shap_rows(z, np.array([0, 1, 0, 1, 0, 1]), z, [1, 2], samples=1, seed=0)
    pytest.importorskip("captum")
    dnn = build_model(tiny_args(num_features=4, kind="dnn"))
    rows |= latency.captum_rows(dnn, x, [1, 2], samples=1, num_samples=20, cells=2, per_eval=10)
    text = latency.table(rows, [1, 2], reference="NGSLL, one-pass top-K, 1 sample")
    assert text.count("\n") == len(rows) + 1 and "LIME tabular (50 samples)" in text
    assert "SHAP KernelExplainer" in text and "Captum Lime (20 samples)" in text and "Captum KernelShap" in text


def test_cell_mask_numbers_cells_row_by_row() -> None:
    mask = latency.cell_mask(4, 2)[0, 0]
    assert mask.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]


@torch.inference_mode()
def test_sequential_and_one_pass_gates_explain_the_same_way() -> None:
    torch.manual_seed(1)
    model = build_model(tiny_args(num_features=4, k=2)).eval()
    x, z = torch.rand(5, 1, 8, 8), torch.rand(5, 4)
    dense = model.generator(x).view(5, 4, 1)
    one_pass = model(x, z).gate
    sequential = latency.sequential_argmax_gate(dense.pow(2).sum(-1), model.feature_mask(z), 2)
    assert torch.equal(one_pass, sequential)


def test_accuracy_table_averages_seeds_and_cites_the_paper() -> None:
    runs = [
        {"test_accuracy": {"NGSLL": {"1": 0.99, "5": 0.98}, "DNN": {"0": 0.97}}, "device": "cpu (2 threads)"},
        {"test_accuracy": {"NGSLL": {"1": 0.97, "5": 0.98}, "DNN": {"0": 0.99}}, "device": "cpu (2 threads)"},
    ]
    table = accuracy.summary_table("mnist", runs)
    assert "| NGSLL | 0.980 (±0.010) [paper 0.994] | 0.980 (±0.000) [paper 0.995] |" in table
    assert "| DNN | 0.980 (±0.010) [paper 0.992] | 0.980 (±0.010) [paper 0.992] |" in table
    assert table.endswith("2 seed(s); measured on cpu (2 threads)")
    assert "[paper" not in accuracy.summary_table("trec", runs)


def test_experiment_records_are_found_at_any_depth_of_dvc_exp_show() -> None:
    shown = [{"rev": "workspace", "name": None, "data": {}},
             {"rev": "abc", "name": "main", "data": {}, "experiments": [{"revs": [{"name": "s-seed1", "data": {"x": 1}}]}]}]
    assert [record["name"] for record in accuracy._experiments(shown)] == [None, "main", "s-seed1"]


def test_architecture_search_scores_the_kept_epoch_and_picks_the_best_mean() -> None:
    history = [{"epoch": 1, "val_loss": 0.5, "val_accuracy": 0.80},  # train_phase's rows, as the search reads them
               {"epoch": 2, "val_loss": 0.4, "val_accuracy": 0.79},
               {"epoch": 3, "val_loss": 0.45, "val_accuracy": 0.90}]
    assert architecture_search.kept_epoch(history)["epoch"] == 2  # early stopping kept the lowest loss
    assert architecture_search.kept_epoch(history, "val_accuracy")["epoch"] == 3  # by accuracy
    points = [{"hidden_layers": 1, "hidden_units": 128, "mean": 0.80}, {"hidden_layers": 1, "hidden_units": 256,
                                                                         "mean": 0.85},
              {"hidden_layers": 2, "hidden_units": 128, "mean": 0.85}]
    assert architecture_search.choose(points, lower_is_better=False) is points[1]  # ties: the first, smaller one
    assert architecture_search.choose(points, lower_is_better=True) is points[0]  # an error: lower wins


def test_recipe_overrides_set_dotted_keys_to_yaml_values_and_leave_params_alone() -> None:
    from ngsll import ConfigError

    params = {"datasets": {"trec": {"model": {"hidden_units": 256}, "train": {}}}}
    changed = recipes.with_overrides(params, ["datasets.trec.train.dnn.monitor=val_accuracy",
                                              "datasets.trec.model.word_dropout=0.25", "datasets.trec.train.ks=[5, 10]"])
    assert changed["datasets"]["trec"] == {"model": {"hidden_units": 256, "word_dropout": 0.25},
                                           "train": {"dnn": {"monitor": "val_accuracy"}, "ks": [5, 10]}}
    assert params == {"datasets": {"trec": {"model": {"hidden_units": 256}, "train": {}}}}  # a copy was changed
    with pytest.raises(ConfigError, match="dotted.key=value"):
        recipes.with_overrides(params, ["datasets.trec.model.word_dropout"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        recipes.with_overrides(params, ["datasets.trec.model.hidden_units.wide=1"])


def test_recipes_lead_with_params_yaml_unless_no_baseline() -> None:
    from ngsll import ConfigError

    named = [["wd", "datasets.trec.model.word_dropout=0.25"]]
    assert recipes.recipe_overrides(named) == {"params.yaml": [], "wd": ["datasets.trec.model.word_dropout=0.25"]}
    assert recipes.recipe_overrides(named, baseline=False) == {"wd": ["datasets.trec.model.word_dropout=0.25"]}
    with pytest.raises(ConfigError, match="name at least one --recipe"):
        recipes.recipe_overrides([], baseline=False)


def test_recipe_table_gives_mean_and_spread_per_recipe_and_model() -> None:
    runs = {"params.yaml": [{"scores": {"DNN": [0.80, 0.84]}, "seconds": 60},
                            {"scores": {"DNN": [0.82, 0.86]}, "seconds": 120}],
            "monitor": [{"scores": {"DNN": [0.85, 0.88]}, "seconds": 90}]}
    table = recipes.recipes_table(runs, {"params.yaml": [], "monitor": ["datasets.trec.train.dnn.monitor=val_accuracy"]})
    assert "| params.yaml | DNN | 0.810 (±0.014) | 0.850 (±0.014) | 1.5 |" in table  # stdev of 0.80, 0.82
    assert "| monitor | DNN | 0.850 (±0.000) | 0.880 (±0.000) | 1.5 |" in table
    assert "- **monitor**: `datasets.trec.train.dnn.monitor=val_accuracy`" in table


def test_kar_curve_retrains_on_the_explain_stages_rankings_at_k_with_its_bounds_lifted() -> None:
    importance = {"by_k": {"5": {"normlime": [0.1, 0.9, 0.0], "sp_lime": [1, 2, 3], "mean_abs": [0.5, 0.2, 0.1]},
                           "10": {"normlime": [9, 9, 9], "sp_lime": [9, 9, 9], "mean_abs": [9, 9, 9]}},
                  "dnn_mean_gradient": [-0.7, 0.2, -0.1]}
    rankings = kar_curve.rankings_from_importance(importance, 5)
    assert list(rankings) == ["NormLIME", "SP-LIME", "mean abs weight", "abs mean gradient (DNN)"]  # the stage's rows
    assert rankings["NormLIME"].tolist() == [0.1, 0.9, 0.0] and rankings["SP-LIME"].tolist() == [1.0, 2.0, 3.0]
    assert rankings["abs mean gradient (DNN)"].tolist() == [0.7, 0.2, 0.1]  # a large negative gradient matters most
    with_lime = kar_curve.rankings_from_importance({**importance, "lime_normlime_dnn": [3, 2, 1]}, 10)
    assert with_lime["NormLIME"].tolist() == [9, 9, 9] and with_lime["NormLIME over LIME (DNN)"].tolist() == [3, 2, 1]
    with pytest.raises(SystemExit, match=r"no K=1; it holds K in \['5', '10'\]"):
        kar_curve.rankings_from_importance(importance, 1)
    explain = {"split": "test", "retrain_classifier": {"enabled": False, "fractions": [0.9], "samples": 2000,
                                                       "max_epochs": 2, "random_draws": 5}}
    settings = kar_curve.unbounded_settings(explain, [0.1, 0.5], samples=5452, max_epochs=20, random_draws=3)
    assert settings["retrain_classifier"] == {"enabled": True, "fractions": [0.1, 0.5], "samples": 5452,
                                              "max_epochs": 20, "random_draws": 3}
    assert settings["split"] == "test" and explain["retrain_classifier"]["samples"] == 2000  # params left alone
