"""The text path: tokenisation and vocabulary rules, the sentence-CNN NGSLL's contract, Figure-5 pages."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ngsll import ConfigError, InputError, ModelArgs, build_model
from ngsll.config import dataset_settings, model_args
from ngsll.explain import explanation_records, sparse_explanation
from ngsll.text import PAD_ID, UNKNOWN_ID, SequenceVocabulary, TextEncoder, Vocabulary, tokenize, word_spans
from ngsll.textviz import ExplainedSentence, coloured_sentence, sentences_page
from ngsll.train import PhaseConfig, TensorData, evaluate, train_phase

TRAIN = [
    "A funny comedy, really funny!",
    "Too bad to be funny.",
    "The comedy isn't bad at all",
    "Zebra appears once",
]


def tiny_text_args(**overrides) -> ModelArgs:
    values = dict(input_kind="text", vocab_size=12, num_features=5, embedding_dim=6, filter_widths=[2, 3],
                  filter_maps=4, dropout=0.0, hidden_layers=1, hidden_units=8, k=2)
    values.update(overrides)
    return ModelArgs(**values)


def test_tokens_are_lower_case_words_with_punctuation_as_separator() -> None:
    assert tokenize("A funny comedy, really FUNNY!") == ["a", "funny", "comedy", "really", "funny"]
    assert tokenize("It\u2019s ''Conan'' co-writer's J.R.R. 21st") == [
        "it's", "conan", "co", "writer's", "j", "r", "r", "21st"
    ]
    assert tokenize("") == [] and tokenize(" ?! ... ") == []
    assert tokenize("Café naïve_test") == ["café", "naïve", "test"]


def test_vocabulary_drops_stopwords_singletons_and_short_tokens_and_ranks_by_count() -> None:
    vocabulary = Vocabulary.build([tokenize(text) for text in TRAIN], stopwords="sklearn", min_count=2)
    # "too", "be", "to", "the", "at", "all", "a" are stopwords; "zebra", "really" appear once.
    assert vocabulary.words == ["funny", "bad", "comedy"]
    assert Vocabulary.build([["ok", "ok", "x", "x"]], stopwords="none").words == ["ok"]  # "x" is too short
    custom = Vocabulary.build([tokenize(text) for text in TRAIN], stopwords=["funny"], min_count=1)
    assert "funny" not in custom.words and "the" in custom.words and "zebra" in custom.words
    with pytest.raises(ConfigError, match="vocabulary is empty"):
        Vocabulary.build([["the", "the"]])
    with pytest.raises(ConfigError, match="stopwords must be"):
        Vocabulary.build([["ok"]], stopwords="english")


def test_bag_of_words_is_presence_or_counts_over_the_vocabulary_only() -> None:
    vocabulary = Vocabulary(["funny", "bad", "comedy"])
    tokens = [tokenize("funny funny and bad"), tokenize("unseen words only")]
    assert vocabulary.bag_of_words(tokens).tolist() == [[1, 1, 0], [0, 0, 0]]
    assert vocabulary.bag_of_words(tokens, counts=True).tolist() == [[2, 1, 0], [0, 0, 0]]


def test_sequences_map_unknown_words_pad_and_cut() -> None:
    sequences = SequenceVocabulary.build([tokenize(text) for text in TRAIN])
    assert sequences.tokens[:3] == ["<pad>", "<unk>", "funny"]
    ids = sequences.encode([["funny", "martian"], ["funny"] * 9], length=4)
    funny = sequences.index["funny"]
    assert ids.tolist() == [[funny, UNKNOWN_ID, PAD_ID, PAD_ID], [funny] * 4]


def test_encoder_round_trips_and_encodes_both_representations() -> None:
    encoder = TextEncoder.fit(TRAIN, min_count=2, max_length=6, min_length=3)
    assert encoder.length == 6  # the longest training sentence (7 tokens) cut to max_length
    restored = TextEncoder.from_dict(encoder.to_dict())
    x, z = restored.encode(["Bad comedy, the end"])
    assert x.shape == (1, 6) and x.dtype == np.int64 and (x[0, 4:] == PAD_ID).all()
    assert x[0, 3] == UNKNOWN_ID  # "end" never seen in training
    assert z.tolist() == [[0.0, 1.0, 1.0]]


def test_word_spans_give_back_the_text() -> None:
    text = "It\u2019s ''Conan'' -- a co-writer!"
    spans = word_spans(text)
    assert "".join(piece for piece, _ in spans) == text
    assert [token for _, token in spans if token] == tokenize(text)


def test_text_model_predicts_the_inner_product_and_never_picks_an_absent_word() -> None:
    torch.manual_seed(0)
    for task, classes in (("binary", 2), ("multiclass", 3)):
        model = build_model(tiny_text_args(task=task, num_classes=classes, k=3)).eval()
        x = torch.tensor([[2, 3, 4, 5, 0], [6, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
        z = torch.tensor([[1.0, 1, 0, 1, 1], [0, 1, 0, 0, 0], [0, 0, 0, 0, 0]])  # 4, 1 and 0 words present
        output = model(x, z)
        assert torch.allclose(output.logits, torch.einsum("bd,bdc->bc", z, output.weights), atol=1e-6)
        chosen = (output.weights != 0).any(dim=-1)  # (3, d)
        assert chosen.sum(dim=1).tolist() == [3, 1, 0]  # min(K, words present)
        assert not (chosen & (z == 0)).any()


def test_empty_sentence_gives_zero_evidence_and_an_empty_explanation() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_text_args(task="multiclass", num_classes=3)).eval()
    x, z = torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 5)  # a one-token pad: shorter than every filter
    output = model(x, z)
    assert output.logits.tolist() == [[0.0, 0.0, 0.0]]
    assert explanation_records(sparse_explanation(output, z, 2, "multiclass"), list("abcde")) == [[]]


def test_text_inputs_are_checked() -> None:
    model = build_model(tiny_text_args())
    with pytest.raises(InputError, match="token ids must lie in"):
        model(torch.tensor([[12, 0, 0]]), torch.zeros(1, 5))
    with pytest.raises(InputError, match="integer token ids"):
        model(torch.zeros(1, 3), torch.zeros(1, 5))
    with pytest.raises(ConfigError, match="vocab_size"):
        tiny_text_args(vocab_size=0)


def negation_problem(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sentences of ids over {good=2, bad=3, not=4, filler=5..9}; z = presence of (good, bad).

    y = 1 for "good" or "not bad", 0 for "bad" or "not good": the weight a word needs depends on whether
    "not" precedes it, which only the sequence shows (z never contains "not").
    """
    rng = np.random.default_rng(seed)
    word = rng.choice([2, 3], size=n)
    negated = rng.random(n) < 0.5
    x = rng.integers(5, 10, size=(n, 6))
    x[:, 2] = np.where(negated, 4, rng.integers(5, 10, size=n))
    x[:, 3] = word
    z = np.stack([word == 2, word == 3], axis=1).astype(np.float32)
    y = ((word == 2) ^ negated).astype(np.int64)
    return x, z, y


def test_sentence_cnn_learns_context_dependent_word_weights() -> None:
    train, test = TensorData.from_arrays(*negation_problem(1024, 0)), TensorData.from_arrays(*negation_problem(256, 1))
    torch.manual_seed(0)
    model = build_model(tiny_text_args(num_features=2, k=1, vocab_size=10, filter_maps=8, hidden_units=16))
    train_phase(model, train, test, PhaseConfig(k=1, lr=1e-2, max_epochs=15, patience=15, batch_size=32),
                progress=False)
    assert evaluate(model, test)["accuracy"] > 0.95
    with torch.inference_mode():
        good = torch.tensor([[5, 5, 6, 2, 7, 8], [5, 5, 4, 2, 7, 8]])  # "good" vs "not good"
        weights = model(good, torch.tensor([[1.0, 0.0], [1.0, 0.0]])).weights[:, 0, 0]
    assert weights[0] > 0 > weights[1]


def embedding_inputs(model, tokens: torch.Tensor) -> torch.Tensor:
    """The token ids the generator's embedding layer actually read for ``tokens`` in one forward pass."""
    seen = []
    hook = model.generator.embedding.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    model(tokens, torch.ones(tokens.shape[0], model.args.num_features))
    hook.remove()
    return seen[0]


def test_word_dropout_reads_a_share_of_words_as_unknown_in_training_only() -> None:
    torch.manual_seed(0)
    tokens = torch.randint(2, 12, (200, 30))  # (200, 30) real words only ...
    tokens[:, 20:] = PAD_ID  # ... then padding
    model = build_model(tiny_text_args(word_dropout=0.25)).train()
    read = embedding_inputs(model, tokens)
    words = tokens != PAD_ID
    replaced = read != tokens
    assert (read[replaced] == UNKNOWN_ID).all()  # a dropped word becomes the unknown word ...
    assert not replaced[~words].any()  # ... and padding is never touched
    # 4,000 words at p = 0.25: the share's standard deviation is 0.007, so 0.03 is over four of them.
    assert replaced[words].float().mean().item() == pytest.approx(0.25, abs=0.03)
    assert torch.equal(embedding_inputs(model.eval(), tokens), tokens)  # evaluation reads every word
    assert torch.equal(embedding_inputs(build_model(tiny_text_args()).train(), tokens), tokens)  # default: off
    with pytest.raises(ConfigError, match="word_dropout"):
        build_model(tiny_text_args(word_dropout=1.0))


def test_text_model_args_come_from_params_and_prepared_features() -> None:
    params = {
        "defaults": {"text": {"data": {"counts": False, "format": "csv"}, "validate": {}, "serve": {"k": 2},
                              "model": {"embedding_dim": 4, "filter_widths": [2], "filter_maps": 3, "dropout": 0.1,
                                        "hidden_layers": 1, "hidden_units": 5},
                              "train": {"coarse": {"k": 2, "tau": 1.0}}}},
        "datasets": {"tiny": {"kind": "text", "data": {"format": "tsv"}, "validate": {}, "model": {"hidden_units": 6},
                              "train": {}, "serve": {}}},
    }
    features = {"feature_names": ["a", "b", "c"], "class_names": ["x", "y", "z"], "sequence_vocabulary_size": 7}
    settings = dataset_settings(params, "tiny")
    assert settings.data == {"description": "tiny", "counts": False, "format": "tsv"}  # the dataset's key wins
    assert settings.tracking == {"experiment": "tiny", "registered_model": "ngsll-tiny"}
    args = model_args(settings, features, kind="dnn")
    assert (args.task, args.num_classes, args.num_features, args.vocab_size, args.kind) == ("multiclass", 3, 3, 7, "dnn")
    assert (args.embedding_dim, args.hidden_units, args.word_dropout, args.output_rank) == (4, 6, 0.0, 0)  # absent: off
    params["datasets"]["tiny"]["model"].update(word_dropout=0.25, output_rank=2)
    chosen = model_args(dataset_settings(params, "tiny"), features)
    assert (chosen.word_dropout, chosen.output_rank) == (0.25, 2)
    regression = model_args(settings, {**features, "task": "regression", "class_names": []})
    assert (regression.task, regression.num_classes) == ("regression", 1)
    with pytest.raises(ConfigError, match="unknown dataset"):
        dataset_settings(params, "imdb")
    del params["datasets"]["tiny"]["serve"]
    with pytest.raises(ConfigError, match=r"lacks the section\(s\) \['serve'\]; write e.g. serve: \{\}"):
        dataset_settings(params, "tiny")


def test_model_dnn_overrides_the_model_section_for_the_dnn_only() -> None:
    params = {
        "defaults": {"text": {"data": {}, "validate": {}, "serve": {}, "train": {"coarse": {"k": 2, "tau": 1.0}},
                              "model": {"embedding_dim": 4, "filter_widths": [2], "filter_maps": 3, "dropout": 0.1,
                                        "word_dropout": 0.0, "hidden_layers": 2, "hidden_units": 5,
                                        "output_rank": 2}}},
        "datasets": {"tiny": {"kind": "text", "data": {}, "validate": {}, "train": {}, "serve": {},
                              "model": {"dnn": {"word_dropout": 0.25, "hidden_layers": 0}}}},
    }
    features = {"feature_names": ["a", "b", "c"], "class_names": ["x", "y", "z"], "sequence_vocabulary_size": 7}
    settings = dataset_settings(params, "tiny")
    dnn = model_args(settings, features, kind="dnn")
    assert (dnn.word_dropout, dnn.hidden_layers, dnn.hidden_units) == (0.25, 0, 5)  # overridden, the rest shared
    for gate in (True, False):  # NGSLL and its no-gate ablation keep the shared section
        ngsll = model_args(settings, features, use_gate=gate)
        assert (ngsll.word_dropout, ngsll.hidden_layers, ngsll.output_rank) == (0.0, 2, 2)
    head = build_model(dnn).generator.head
    assert [type(layer).__name__ for layer in head] == ["Linear"]  # L = 0 and a full layer to the 3 logits
    assert head[0].out_features == 3
    params["datasets"]["tiny"]["model"]["dnn"] = {"word_dropuot": 0.25}
    with pytest.raises(ConfigError, match=r"model.dnn sets \['word_dropuot'\].*accepted: \['dropout'"):
        dataset_settings(params, "tiny")
    params["datasets"]["tiny"]["model"]["dnn"] = [0.25]
    with pytest.raises(ConfigError, match="model.dnn must be a mapping"):
        dataset_settings(params, "tiny")


def test_figure_page_colours_chosen_words_and_greys_out_of_vocabulary_ones() -> None:
    html = coloured_sentence("Too <bad> comedy", {"bad": -0.5}, {"bad", "comedy"}, scale=0.5)
    assert "rgba(30,80,220,0.90)" in html and "&lt;" in html  # blue at full strength, text escaped
    assert "<span class=oov title='not a feature of z'>Too</span>" in html
    assert "comedy" in html and "comedy</span>" not in html  # in the vocabulary, not chosen: plain
    page = sentences_page("t", [ExplainedSentence("funny", "pos", {"NGSLL K=1": ("pos", {"funny": 1.0})})], {"funny"})
    assert page.startswith("<!doctype html>") and "rgba(220,30,30,0.90)" in page
