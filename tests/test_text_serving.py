"""The text service: sentences in (raw UTF-8, JSON, KServe v1), answers whose weights are named by words."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import tiny_args
from ngsll import ConfigError, build_model
from ngsll.checkpoint import checkpoint_dict
from ngsll.serving import ImageService, RequestError, TextService, load_service
from ngsll.simplify import cell_names
from ngsll.text import TextEncoder, tokenize
from test_serving import assert_same_answer
from test_text import tiny_text_args

CLASSES = ["DESC", "HUM", "LOC"]
CORPUS = [
    "What is a comedy film?", "Who directed the comedy film?", "Where was the film made?",
    "Who wrote the funny script?", "Where is the funny theatre?", "What is a script?",
    "Who made the theatre film?", "Where was the comedy script written?",
]
SENTENCE = "Who made the funny comedy film?"  # three words of z (funny comedy film); who/made/the are stopwords


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder.fit(CORPUS, max_length=12)


def text_model(encoder: TextEncoder, task: str = "multiclass", k: int = 2):
    torch.manual_seed(0)
    classes = 3 if task == "multiclass" else 2
    return build_model(tiny_text_args(task=task, num_classes=classes, k=k, vocab_size=len(encoder.sequences),
                                      num_features=len(encoder.vocabulary)))


def write_text_model(folder: Path, encoder: TextEncoder) -> tuple[Path, Path, Path]:
    """The three files a text model is served from: checkpoint, features.json, encoder.json."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint_dict(text_model(encoder), {"seed": 0}), folder / "model.pt")
    (folder / "features.json").write_text(json.dumps({"feature_names": encoder.vocabulary.words, "class_names": CLASSES}))
    (folder / "encoder.json").write_text(json.dumps(encoder.to_dict()))
    return folder / "model.pt", folder / "features.json", folder / "encoder.json"


@pytest.fixture(scope="module")
def service(encoder: TextEncoder) -> TextService:
    return TextService(text_model(encoder), encoder, CLASSES)


def check_answer(answer: dict, text: str, k: int = 2, classes: list[str] = CLASSES) -> None:
    """Weights are words of the sentence, at most K, sorted, and they add up to the answered logit."""
    assert answer["label"] == classes[answer["class_index"]] and answer["k"] == k
    words = set(tokenize(text))
    assert all(entry["feature"] in words and entry["value"] == 1.0 for entry in answer["weights"])
    assert len(answer["weights"]) <= k
    magnitudes = [abs(entry["contribution"]) for entry in answer["weights"]]
    assert magnitudes == sorted(magnitudes, reverse=True)
    logit = answer["logits"][answer["label"]] if "logits" in answer else answer["logit"]
    assert sum(entry["contribution"] for entry in answer["weights"]) == pytest.approx(logit, abs=1e-4)


def test_raw_text_json_and_a_json_string_give_the_same_answer(service: TextService, encoder: TextEncoder) -> None:
    bodies = [SENTENCE.encode(), SENTENCE, {"text": SENTENCE}, json.dumps({"text": SENTENCE}).encode(),
              json.dumps(SENTENCE)]
    responses = service.respond(bodies)
    assert [status for status, _ in responses] == [200] * len(bodies)
    for _, answer in responses:
        check_answer(answer, SENTENCE)
        assert_same_answer(responses[0][1], answer)
    assert len(responses[0][1]["weights"]) == 2  # three words present, K = 2


def test_a_sentence_of_stopwords_and_unknown_words_is_answered_from_zero_evidence(service: TextService) -> None:
    status, answer = service.respond(["Is it the one that they were?"])[0]
    assert status == 200 and answer["weights"] == []
    assert set(answer["logits"].values()) == {0.0}
    status, answer = service.respond([b"Who liked the zyzzyva theatre?"])[0]  # one word of z, K = 2
    assert status == 200 and [entry["feature"] for entry in answer["weights"]] == ["theatre"]


def test_binary_text_models_decompose_their_single_logit(encoder: TextEncoder) -> None:
    binary = TextService(text_model(encoder, task="binary", k=3), encoder, ["neg", "pos"])
    status, answer = binary.respond([SENTENCE])[0]
    assert status == 200 and len(answer["weights"]) == 3
    check_answer(answer, SENTENCE, k=3, classes=["neg", "pos"])


def test_kserve_envelope_and_explanations_carry_every_tokens_weight(service: TextService, encoder: TextEncoder) -> None:
    body = json.dumps({"instances": [{"text": SENTENCE}, "Where is the comedy theatre?"]})
    status, payload = service.respond([body])[0]
    assert status == 200 and len(payload["predictions"]) == 2 and "token_weights" not in payload["predictions"][0]
    status, payload = service.respond([body], explain=[True])[0]
    answer = payload["explanations"][0]
    assert [entry["token"] for entry in answer["token_weights"]] == tokenize(SENTENCE)
    chosen = {entry["feature"]: entry["weight"] for entry in answer["weights"]}
    kinds = []
    for entry in answer["token_weights"]:
        if entry["token"] in chosen:
            assert entry["weight"] == pytest.approx(chosen[entry["token"]]) and entry["weight"] != 0
            kinds.append("chosen")
        elif entry["token"] not in encoder.vocabulary.index:  # a stopword, rare or unknown: not a feature of z
            assert entry["weight"] is None
            kinds.append("not a feature")
        else:
            assert entry["weight"] == 0.0  # a word of z the gate did not choose
            kinds.append("not chosen")
    assert kinds.count("chosen") == 2 and kinds.count("not chosen") == 1 and kinds.count("not a feature") == 3
    assert set(answer["class_weights"]) == set(chosen)
    assert all(set(weights) == set(CLASSES) for weights in answer["class_weights"].values())


def test_batched_answers_equal_single_ones_and_bad_requests_do_not_spoil_a_batch(service: TextService) -> None:
    sentences = [SENTENCE, "Where was the comedy made?", "What is a funny script?"]
    singles = [service.respond([text])[0][1] for text in sentences]
    mixed = service.respond([sentences[0], b"\xff\xfe bad", {"text": sentences[1]}, {"text": ""}, sentences[2]])
    assert [status for status, _ in mixed] == [200, 400, 200, 400, 200]
    for single, (_, batched) in zip(singles, [mixed[0], mixed[2], mixed[4]]):
        assert_same_answer(single, batched)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty"),
        (b"   \n ", "the text is empty"),
        (b'{"text": "  "}', "the text is empty"),
        (b'{"text": 5}', "must be a string"),
        (b'{"sentence": "hello"}', "a JSON request must be"),
        (b"caf\xe9 au lait", "not UTF-8"),
        (b"{broken json", "not valid JSON"),
        (b'{"instances": []}', "non-empty"),
        (b'{"instances": [{"text": "fine"}, 7]}', "a JSON request must be"),
    ],
)
def test_bad_text_requests_are_named_400s(service: TextService, body: bytes, message: str) -> None:
    status, payload = service.respond([body])[0]
    assert status == 400
    assert message in payload["error"] and "UTF-8 sentence" in payload["accepted"]
    with pytest.raises(RequestError):
        service.decode(body)


def test_an_oversized_text_body_is_a_413_and_the_batch_goes_on(service: TextService) -> None:
    (status, payload), (good, _) = service.respond([b"x" * ((1 << 20) + 1), SENTENCE.encode()])
    assert status == 413 and "the limit is 1048576" in payload["error"] and good == 200


def test_load_service_reads_what_the_checkpoint_needs(tmp_path: Path, encoder: TextEncoder) -> None:
    checkpoint, features, encoder_file = write_text_model(tmp_path / "text", encoder)
    loaded = load_service(checkpoint, features, encoder_file)
    assert isinstance(loaded, TextService)
    expected = TextService(text_model(encoder), encoder, CLASSES).respond([SENTENCE])[0][1]
    assert_same_answer(loaded.respond([SENTENCE])[0][1], expected)
    with pytest.raises(ConfigError, match="encoder.json"):
        load_service(checkpoint, features, tmp_path / "missing.json")

    image = build_model(tiny_args(num_features=49, image_size=28))
    torch.save(checkpoint_dict(image, {"seed": 0}), tmp_path / "image.pt")
    (tmp_path / "image_features.json").write_text(json.dumps({"feature_names": cell_names(7), "class_names": ["a", "b"]}))
    assert isinstance(load_service(tmp_path / "image.pt", tmp_path / "image_features.json", None), ImageService)
    dnn = build_model(tiny_args(num_features=49, image_size=28, kind="dnn"))
    torch.save(checkpoint_dict(dnn, {"seed": 0}), tmp_path / "dnn.pt")
    with pytest.raises(ConfigError, match="only NGSLL models are served"):
        load_service(tmp_path / "dnn.pt", tmp_path / "image_features.json")


def test_a_service_refuses_a_model_of_the_other_kind(encoder: TextEncoder) -> None:
    with pytest.raises(ConfigError, match="ImageService serves image models"):
        ImageService(text_model(encoder), encoder.vocabulary.words, CLASSES)
    with pytest.raises(ConfigError, match="features but"):
        TextService(text_model(encoder), TextEncoder.fit(CORPUS + ["Extra extra words words"]), CLASSES)


def test_text_pyfunc_model_answers_sentences_like_the_service(tmp_path: Path, encoder: TextEncoder) -> None:
    import mlflow

    from ngsll_plugins.tracking import log_pyfunc_model

    checkpoint, features, encoder_file = write_text_model(tmp_path / "text", encoder)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("text-pyfunc")
    with mlflow.start_run():
        log_pyfunc_model(checkpoint, features, "ngsll-text", CORPUS[:2], encoder_path=encoder_file)
    loaded = mlflow.pyfunc.load_model("models:/ngsll-text/1")
    sentences = [SENTENCE, "Where is the comedy theatre?"]
    expected = TextService(text_model(encoder), encoder, CLASSES).answer(sentences)
    # Through MLflow the signature asks for a DataFrame with a text column; the model itself also takes a list.
    for frame in (loaded.predict(pd.DataFrame({"text": sentences})), loaded.unwrap_python_model().predict(None, sentences)):
        assert frame["label"].tolist() == [answer["label"] for answer in expected]
        for row, answer in zip(frame.to_dict(orient="records"), expected):
            weights = json.loads(row["weights"])
            assert [entry["feature"] for entry in weights] == [entry["feature"] for entry in answer["weights"]]
            assert sum(entry["contribution"] for entry in weights) == pytest.approx(row["logit"], abs=1e-4)
            assert row["logit"] == pytest.approx(answer["logits"][answer["label"]], abs=1e-5)
    with pytest.raises(RequestError, match="non-empty sentences"):
        loaded.unwrap_python_model().predict(None, ["fine", ""])


def test_text_tensors_take_utf8_sentences_and_pad_missing_words(service: TextService) -> None:
    from explanation_contract import same_as_v1

    sentences = [SENTENCE, "Who liked the zyzzyva theatre?", "Is it the one that they were?"]
    values = np.asarray([s.encode() for s in sentences], dtype=object)
    inputs = service.decode_tensor("BYTES", [3], values)
    arrays = service.tensors(inputs)
    same_as_v1(arrays, service.answer(sentences))
    assert list(arrays["feature_name"][1]) == ["theatre", ""] and list(arrays["feature_index"][2]) == [-1, -1]
    assert arrays["probabilities"].shape == (3, 3)
    for datatype, values, message in (("FP32", np.zeros(1, np.float32), "BYTES"),
                                      ("BYTES", np.asarray([b"caf\xe9"], dtype=object), "not UTF-8"),
                                      ("BYTES", np.asarray(["  "], dtype=object), "the text is empty")):
        with pytest.raises(RequestError, match=message) as raised:
            service.decode_tensor(datatype, [1], values)
        assert raised.value.accepted == "one input tensor: text BYTES [-1]"
