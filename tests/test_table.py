"""Tables: the reader's column inference, the encoder's two representations, the model's exact sparse
prediction, the gradient view and the service's answers and 400s, on a small seeded table."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from ngsll.data.table import TableDataError, read_table_source
from ngsll.errors import InputError
from ngsll.explain import sparse_explanation
from ngsll.model import ModelArgs, build_model
from ngsll.numpy_table import NumpyTableModel
from ngsll.serving import TableService
from ngsll.table import RecordError, TableEncoder


@pytest.fixture
def table_csv(tmp_path):
    rng = np.random.default_rng(0)
    n = 120
    frame = pd.DataFrame({
        "age": rng.integers(18, 70, n).astype(float), "amount": rng.gamma(2.0, 1000.0, n),
        "housing": rng.choice(["own", "rent", "free"], n), "job": rng.choice([0, 1, 2], n),
    })
    frame.loc[[3, 7], "amount"] = np.nan
    frame["label"] = np.where(frame["age"] > 40, "good", "bad")
    path = tmp_path / "table.csv"
    frame.to_csv(path, index=False)
    return path


def fitted(path, **data):
    raw = read_table_source(path, {"label_column": "label", "task": "binary", **data}, "datasets.t")
    encoder = TableEncoder.fit(raw.frame, raw.numeric, raw.categorical, label="label")
    return raw, encoder


def test_columns_are_inferred_and_declared_ones_win(table_csv):
    raw, _ = fitted(table_csv)
    assert raw.inferred == {"age": "numeric", "amount": "numeric", "housing": "categorical", "job": "numeric"}
    raw, encoder = fitted(table_csv, categorical=["job"])
    assert raw.categorical == ["job", "housing"] and "job" not in raw.inferred
    assert "job=2" in encoder.feature_names and raw.class_names == ["bad", "good"]


def test_reader_refuses_bad_tables(table_csv, tmp_path):
    with pytest.raises(TableDataError, match="no column"):
        fitted(table_csv, numeric=["salary"])
    with pytest.raises(TableDataError, match="at least three"):
        read_table_source(table_csv, {"label_column": "label", "task": "multiclass"}, "datasets.t")
    broken = tmp_path / "broken.csv"
    broken.write_text("age,label\n30,a\nthirty,b\n")
    with pytest.raises(TableDataError, match="non-numbers in rows"):
        read_table_source(broken, {"label_column": "label", "task": "binary", "numeric": ["age"]}, "d")


def test_encoder_layout_standardises_flags_missing_and_one_hots(table_csv):
    raw, encoder = fitted(table_csv, categorical=["job"])
    x, z = encoder.encode(raw.frame)
    names = encoder.feature_names
    assert names[:3] == ["age", "amount", "amount is missing"]
    age = raw.frame["age"].to_numpy()
    np.testing.assert_allclose(z[:, 0], (age - age.mean()) / age.std(), rtol=1e-5)
    assert z[3, 2] == 1 and z[3, 1] == 0 and z[0, 2] == 0  # imputed at the mean, flagged
    one_hots = z[:, encoder.numeric_inputs:]
    assert (one_hots.sum(axis=1) == len(encoder.categories)).all()  # one category per column
    row = raw.frame.iloc[5]
    assert z[5, names.index(f"housing={row['housing']}")] == 1
    codes = x[:, encoder.numeric_inputs:]
    assert x.shape[1] == encoder.numeric_inputs + 2 and (codes >= 1).all()
    np.testing.assert_array_equal(x[:, : encoder.numeric_inputs], z[:, : encoder.numeric_inputs])


def test_check_record_names_the_wrong_field(table_csv):
    _, encoder = fitted(table_csv, categorical=["job"])
    good = {"age": 30, "amount": 1200.5, "housing": "own", "job": 1}
    assert encoder.check_record({**good, "label": "good"})["job"] == "1"
    assert np.isnan(encoder.check_record({**good, "amount": None})["amount"])
    cases = [({k: v for k, v in good.items() if k != "age"}, "lacks the column"),
             ({**good, "salary": 3}, "unknown column 'salary'"),
             ({**good, "age": "old"}, "'age' must be a number"),
             ({**good, "age": True}, "'age' must be a number"),
             ({**good, "housing": "castle"}, "unseen category 'castle'"),
             ([good], "must be a JSON object")]
    for record, message in cases:
        with pytest.raises(RecordError, match=message):
            encoder.check_record(record)
    strict = TableEncoder.from_dict({**encoder.to_dict(), "policy": "fail"})
    with pytest.raises(RecordError, match="policy is 'fail'"):
        strict.check_record({**good, "amount": None})


def table_model(encoder, k=3, kind="ngsll"):
    torch.manual_seed(0)
    args = ModelArgs(kind=kind, input_kind="table", numeric_inputs=encoder.numeric_inputs,
                     category_sizes=encoder.category_sizes, embedding_dim=4, dropout=0.0, hidden_units=16,
                     num_features=len(encoder.feature_names), k=k, use_gate=kind == "ngsll")
    return build_model(args).eval()


def test_prediction_is_the_inner_product_and_never_picks_an_absent_category(table_csv):
    raw, encoder = fitted(table_csv, categorical=["job"])
    x, z = (torch.from_numpy(a) for a in encoder.encode(raw.frame))
    model = table_model(encoder, k=4)
    with torch.inference_mode():
        output = model(x, z)
    torch.testing.assert_close(output.logits[:, 0], (z * output.weights[:, :, 0]).sum(dim=1))
    assert (output.gate.sum(dim=1) <= 4).all() and (output.gate.sum(dim=1) == torch.clamp((z != 0).sum(1), max=4)).all()
    assert not (output.gate.bool() & (z == 0)).any()  # a one-hot that is 0 is never chosen


def test_model_refuses_bad_codes(table_csv):
    raw, encoder = fitted(table_csv)
    x, z = (torch.from_numpy(a) for a in encoder.encode(raw.frame[:4]))
    x[0, -1] = 99
    with pytest.raises(Exception, match="category codes"):
        table_model(encoder)(x, z)


def test_gradient_view_matches_autograd_for_numbers(table_csv):
    from ngsll.importance import table_gradient_view
    from ngsll.train import TensorData

    raw, encoder = fitted(table_csv)
    x, z = encoder.encode(raw.frame)
    dnn = table_model(encoder, kind="dnn")
    data = TensorData.from_arrays(x, z, raw.frame["label"].to_numpy())
    view = table_gradient_view(dnn, data, encoder.category_features(), batch_size=32)
    inputs = torch.from_numpy(x).requires_grad_(True)
    (gradient,) = torch.autograd.grad(dnn(inputs)[:, 0].sum(), inputs)
    np.testing.assert_allclose(view.class_gradient[0, : encoder.numeric_inputs],
                               gradient[:, : encoder.numeric_inputs].mean(dim=0).numpy(), rtol=1e-4, atol=1e-6)
    assert np.abs(view.class_gradient[0, encoder.numeric_inputs:]).sum() > 0  # categories got their share


def test_service_answers_records_and_refuses_bad_ones_without_losing_the_good(table_csv):
    raw, encoder = fitted(table_csv, categorical=["job"])
    service = TableService(table_model(encoder), encoder, raw.class_names)
    record = {"age": 52, "amount": 800.0, "housing": "rent", "job": 2}
    bodies = [json.dumps(record).encode(), json.dumps({**record, "housing": "castle"}).encode(),
              {"instances": [record, {**record, "age": 20}]}, b"age=52", json.dumps({"age": 1}).encode()]
    answers = service.respond(bodies)
    assert [status for status, _ in answers] == [200, 400, 200, 400, 400]
    single, envelope = answers[0][1], answers[2][1]["predictions"]
    # the same record in another batch: the same answer (to float rounding, which depends on the batch's shape)
    assert (envelope[0]["label"], envelope[0]["logit"]) == (single["label"], pytest.approx(single["logit"], abs=1e-6))
    assert [(w["feature"], pytest.approx(w["contribution"], abs=1e-6)) for w in single["weights"]] == \
        [(w["feature"], w["contribution"]) for w in envelope[0]["weights"]]
    assert "castle" in answers[1][1]["error"] and "lacks the column" in answers[4][1]["error"]
    x, z = encoder.encode([encoder.check_record(record)])
    total = sum(w["contribution"] for w in single["weights"])
    assert total == pytest.approx(single["logit"], abs=1e-5)
    for weight in single["weights"]:
        assert weight["value"] == pytest.approx(float(z[0, weight["index"]]), abs=1e-6)
    tensors = service.tensors([encoder.check_record(record)])
    assert list(tensors["feature_name"][0][: len(single["weights"])]) == [w["feature"] for w in single["weights"]]


@pytest.mark.parametrize("task, classes, mask, k, rank", [
    ("binary", 2, True, 4, 0), ("multiclass", 3, True, 3, 0), ("regression", 1, True, 7, 0), ("binary", 2, False, 5, 0),
    ("multiclass", 3, True, 3, 2)])
def test_the_numpy_forward_pass_is_the_torch_models(table_csv, task, classes, mask, k, rank):
    raw, encoder = fitted(table_csv, categorical=["job"])
    x, z = encoder.encode(raw.frame)
    torch.manual_seed(1)
    args = ModelArgs(input_kind="table", numeric_inputs=encoder.numeric_inputs, category_sizes=encoder.category_sizes,
                     embedding_dim=4, dropout=0.3, hidden_layers=2, hidden_units=16, mask_zero_features=mask,
                     num_features=len(encoder.feature_names), k=k, task=task, num_classes=classes, output_rank=rank)
    model = build_model(args).eval()
    with torch.inference_mode():
        expected = model(torch.from_numpy(x), torch.from_numpy(z))
    got, explanation = NumpyTableModel(model).explain(x, z)
    assert torch.equal(got.gate, expected.gate)  # the same K features (k = 7 exceeds the rows' open features)
    for name in ("logits", "weights", "dense_weights"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), rtol=1e-5, atol=1e-6)
    wanted = sparse_explanation(expected, torch.from_numpy(z), k, task)
    valid = wanted.valid
    assert torch.equal(explanation.valid, valid) and torch.equal(explanation.class_index, wanted.class_index)
    # the same open features; in the same order where contributions differ (open features with z = 0 tie at 0)
    assert torch.equal(explanation.indices.masked_fill(~valid, -1).sort(1).values,
                       wanted.indices.masked_fill(~valid, -1).sort(1).values)
    ranked = valid & (wanted.contributions != 0)
    assert torch.equal(explanation.indices[ranked], wanted.indices[ranked])
    for name in ("weights", "values", "contributions"):
        torch.testing.assert_close(getattr(explanation, name)[ranked], getattr(wanted, name)[ranked], rtol=1e-5,
                                   atol=1e-6)


def test_the_numpy_forward_pass_refuses_what_the_torch_model_refuses(table_csv):
    raw, encoder = fitted(table_csv)
    x, z = encoder.encode(raw.frame[:4])
    numpy_model = NumpyTableModel(table_model(encoder))
    for broken_x, broken_z, message in [(np.where(np.arange(x.shape[1]) == x.shape[1] - 1, 99, x), z, "category codes"),
                                        (np.where(np.arange(x.shape[1]) == x.shape[1] - 1, 0.5, x), z, "category codes"),
                                        (np.full_like(x, np.nan), z, "finite"), (x[:, 1:], z, "x must be"),
                                        (x, z[:3], "z must have")]:
        with pytest.raises(InputError, match=message):
            numpy_model(broken_x.astype(np.float32), broken_z)


def test_the_service_answers_on_the_cpu_through_the_numpy_pass_with_the_torch_answers(table_csv, monkeypatch):
    raw, encoder = fitted(table_csv, categorical=["job"])
    model = table_model(encoder, k=4)
    service = TableService(model, encoder, raw.class_names)
    records = [encoder.check_record({c: r[c] for c in encoder.columns}) for r in raw.frame.head(20).to_dict("records")]
    torch_service = TableService(model, encoder, raw.class_names)
    torch_service.numpy_model = None
    expected, expected_tensors = torch_service.answer(records, explain=True), torch_service.tensors(records)
    monkeypatch.setattr(model, "forward", lambda *a, **kw: pytest.fail("the torch model ran"))
    answers, tensors = service.answer(records, explain=True), service.tensors(records)
    assert [a["label"] for a in answers] == [a["label"] for a in expected]
    for got, want in zip(answers, expected):
        assert [w["feature"] for w in got["weights"]] == [w["feature"] for w in want["weights"]]
        assert got["logit"] == pytest.approx(want["logit"], abs=1e-5)
    for name, array in expected_tensors.items():
        if array.dtype == object:
            assert (tensors[name] == array).all(), name
        else:
            np.testing.assert_allclose(tensors[name], array, rtol=1e-5, atol=1e-6, err_msg=name)
