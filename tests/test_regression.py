"""Regression for every kind: a real-valued target read, split, standardised, trained on, scored in its own
units and served with an explanation that still adds up exactly."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from ngsll.config import task_of
from ngsll.data.images import RawImages, image_splits
from ngsll.data.labels import LabelError, numeric_target, target_strata
from ngsll.data.table import RawTable, read_table_source
from ngsll.data.text import TextCorpus, TextDataError, read_corpus, split_indices
from ngsll.evaluation import output_metrics, primary_metric
from ngsll.explain import predict_explain
from ngsll.model import ModelArgs, build_model
from ngsll.serving import TableService
from ngsll.table import TableEncoder
from ngsll.target import TargetScale, regression_metrics
from ngsll.train import PhaseConfig, TensorData, seed_everything, train_phase


def test_the_task_is_read_from_prepared_features() -> None:
    assert task_of({"task": "regression", "class_names": []}) == "regression"
    assert task_of({"class_names": ["no", "yes"]}) == "binary"
    assert task_of({"class_names": ["a", "b", "c"]}) == "multiclass"


def test_regression_metrics_match_a_hand_computation() -> None:
    y, predicted = np.array([1.0, 2.0, 3.0, 6.0]), np.array([1.0, 3.0, 2.0, 6.0])  # errors 0, 1, -1, 0
    metrics = regression_metrics(y, predicted)
    assert metrics["rmse"] == pytest.approx(math.sqrt(2 / 4)) and metrics["mae"] == pytest.approx(0.5)
    assert metrics["r2"] == pytest.approx(1 - 2 / 14)  # SST about the mean 3: 4 + 1 + 0 + 9
    assert regression_metrics(y, np.full(4, 3.0))["r2"] == pytest.approx(0.0)  # the mean itself explains nothing


def test_metrics_are_reported_in_the_targets_own_units() -> None:
    scale = TargetScale.fit("price", np.array([100.0, 200.0, 300.0]))
    assert (scale.mean, scale.std) == pytest.approx((200.0, math.sqrt(20000 / 3)))
    y = scale.standardise(np.array([150.0, 250.0]))
    metrics = output_metrics(y, scale.standardise(np.array([160.0, 230.0]))[:, None], "regression", scale=scale)
    assert metrics["rmse"] == pytest.approx(math.sqrt((10**2 + 20**2) / 2), rel=1e-5)
    assert primary_metric("regression") == "r2" and primary_metric("binary") == "accuracy"
    with pytest.raises(Exception, match="need the target's scale"):
        output_metrics(y, y[:, None], "regression")
    assert TargetScale.fit("c", np.ones(3)).std == 1.0  # a constant target: nothing but its mean to learn


def test_classification_metrics_from_outputs_agree_with_predictions() -> None:
    logits = np.array([[2.0], [-1.0], [0.5], [-3.0]])
    binary = output_metrics(np.array([1, 0, 0, 0]), logits, "binary")
    assert binary["accuracy"] == 0.75 and binary["auc"] == 1.0
    probabilities = np.array([[0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    assert output_metrics(np.array([1, 0, 0]), probabilities, "multiclass", probabilities=True)["accuracy"] == 2 / 3


def test_a_target_is_parsed_as_finite_numbers_and_bad_rows_are_named() -> None:
    assert numeric_target(np.array([" 1.5", "2", 3], dtype=object), "c").tolist() == [1.5, 2.0, 3.0]
    with pytest.raises(LabelError, match=r"rows \[1, 3\] hold \['n/a', 'inf'\]"):
        numeric_target(np.array(["1", "n/a", "2", "inf"], dtype=object), "column 'price'")
    strata = target_strata(np.arange(100.0), bins=5)
    assert np.bincount(strata).tolist() == [20] * 5 and target_strata(np.ones(10)).tolist() == [0] * 10


def prices(path, rows: int = 60):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"area": rng.uniform(30, 150, rows), "district": rng.choice(["centre", "north"], rows)})
    frame["price"] = 2500 * frame["area"] + 60000 * (frame["district"] == "centre") + rng.normal(0, 1000, rows)
    frame.to_csv(path, index=False)
    return path, frame


def test_a_regression_table_keeps_its_values_through_the_raw_file(tmp_path) -> None:
    path, frame = prices(tmp_path / "prices.csv")
    raw = read_table_source(path, {"label_column": "price", "task": "regression"}, "datasets.p")
    assert raw.regression and raw.class_names == [] and raw.numeric == ["area"] and raw.categorical == ["district"]
    assert np.allclose(raw.frame["label"], frame["price"])
    raw.write_csv(tmp_path / "table.csv")
    again = RawTable.read_csv(tmp_path / "table.csv", raw.schema())
    assert again.regression and again.frame["label"].dtype == np.float64
    assert np.allclose(again.frame["label"], frame["price"])
    frame["price"] = frame["price"].astype(object)
    frame.loc[4, "price"] = "about 300k"
    frame.to_csv(path, index=False)
    with pytest.raises(LabelError, match=r"column 'price' must hold a finite number .* rows \[4\]"):
        read_table_source(path, {"label_column": "price", "task": "regression"}, "datasets.p")


def test_a_text_regression_corpus_is_split_by_target_bins(tmp_path) -> None:
    path = tmp_path / "scores.csv"
    pd.DataFrame({"text": [f"sentence {i}" for i in range(50)], "score": np.linspace(-1, 1, 50)}).to_csv(path)
    corpus = read_corpus(path, "csv", label_column="score", regression=True)
    assert corpus.regression and corpus.labels.dtype == np.float64
    again = TextCorpus.from_frame(corpus.frame(), [])
    assert np.allclose(again.labels, corpus.labels) and again.regression
    splits = split_indices(corpus, seed=0, validation_fraction=0.2, test_fraction=0.2)
    for name in ("validation", "test"):  # one of every fifth of the range in each drawn split
        assert sorted(target_strata(corpus.labels)[splits[name]].tolist()) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    with pytest.raises(TextDataError, match="trec corpus is a classification task"):
        read_corpus(path, "trec", regression=True)


def test_image_regression_standardises_values_over_the_training_split() -> None:
    rng = np.random.default_rng(0)
    stored = {"train_images": rng.integers(0, 256, size=(30, 8, 8)).astype(np.uint8),
              "train_labels": np.linspace(10, 40, 30), "test_labels": np.array([10.0, 20, 30, 40, 50, 60]),
              "test_images": rng.integers(0, 256, size=(6, 8, 8)).astype(np.uint8)}
    splits, mapping, _ = image_splits(RawImages.from_arrays(stored), {"task": "regression", "grid": 2,
                                                                      "num_validation": 5}, 0, "d")
    assert mapping.class_names == [] and splits["train"].y.dtype == np.float32
    train = splits["train"].y
    assert train.mean() == pytest.approx(0.0, abs=1e-6) and train.std() == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(mapping.target.restore(splits["test"].y), stored["test_labels"], atol=1e-4)


def test_ngsll_learns_a_regression_target_and_its_answer_adds_up_in_target_units(tmp_path) -> None:
    path, _ = prices(tmp_path / "prices.csv", rows=400)
    raw = read_table_source(path, {"label_column": "price", "task": "regression"}, "datasets.p")
    encoder = TableEncoder.fit(raw.frame, raw.numeric, raw.categorical, label="price")
    x, z = encoder.encode(raw.frame)
    scale = TargetScale.fit("price", raw.frame["label"].to_numpy()[:300])
    y = scale.standardise(raw.frame["label"].to_numpy())
    seed_everything(0)
    model = build_model(ModelArgs(input_kind="table", numeric_inputs=encoder.numeric_inputs,
                                  category_sizes=encoder.category_sizes, embedding_dim=4, hidden_layers=1,
                                  hidden_units=16, k=2, task="regression", num_classes=1,
                                  num_features=len(encoder.feature_names)))
    train, test = TensorData.from_arrays(x[:300], z[:300], y[:300]), TensorData.from_arrays(x[300:], z[300:], y[300:])
    train_phase(model, train, test, PhaseConfig(k=2, lr=3e-3, max_epochs=60, patience=60, batch_size=32))
    model.eval()
    with torch.inference_mode():
        outputs = model(test.x, test.z).logits.numpy()  # (100, 1) standardised
    metrics = output_metrics(y[300:], outputs, "regression", scale=scale)
    assert metrics["r2"] > 0.9, metrics  # price is linear in area and district: K = 2 can say it
    answers = predict_explain(model, test.x[:5], test.z[:5], encoder.feature_names, [], scale)
    for answer, output in zip(answers, outputs[:5, 0]):
        assert sum(w["contribution"] for w in answer["weights"]) == pytest.approx(answer["logit"], abs=1e-4)
        assert answer["value"] == pytest.approx(scale.mean + scale.std * float(output), rel=1e-5)
        assert answer["label"] == answer["value"] and answer["probabilities"] == {}
    service = TableService(model, encoder, [])
    service.target = scale
    arrays = service.tensors([encoder.check_record(r) for r in [{"area": 80.0, "district": "centre"}]])
    assert float(arrays["label"][0]) == pytest.approx(scale.restore(float(arrays["logit"][0])), rel=1e-5)
    assert arrays["probabilities"].shape == (1, 0)
