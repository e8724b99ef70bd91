"""NGSLL's contract: the logit is z^T w', the weights are sparse, gradients reach the generator."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_args
from ngsll import ConfigError, InputError, ModelArgs, NGSLL, build_model
from ngsll.model import DNNClassifier


@pytest.mark.parametrize(
    "overrides",
    [dict(task="binary"), dict(task="multiclass", num_classes=4), dict(task="regression", num_classes=1)],
)
@pytest.mark.parametrize("training", [False, True])
def test_logits_equal_inner_product_of_z_and_sparse_weights(overrides, training, tiny_batch) -> None:
    torch.manual_seed(1)
    model = build_model(tiny_args(**overrides)).train(training)
    x, z = tiny_batch
    output = model(x, z)
    expected = (z.unsqueeze(-1) * output.weights).sum(dim=1)  # (B, C), per class
    assert output.logits.shape == (5, model.args.num_outputs)
    assert torch.allclose(output.logits, expected, atol=1e-5)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_eval_weights_have_min_k_available_nonzeros_and_none_masked(k, tiny_batch) -> None:
    torch.manual_seed(2)
    model = build_model(tiny_args(k=k, task="multiclass", num_classes=3)).eval()
    x, z = tiny_batch
    output = model(x, z)
    available = (z != 0).sum(dim=1)
    nonzero = (output.weights != 0).any(dim=-1)  # (B, d)
    assert torch.equal(nonzero.sum(dim=1), torch.clamp(available, max=k))
    assert not (nonzero & (z == 0)).any()


def test_rows_with_nothing_or_fewer_than_k_available_are_finite(tiny_model, tiny_batch) -> None:
    x, z = tiny_batch
    for training in (True, False):
        output = tiny_model.train(training)(x, z)
        assert torch.isfinite(output.logits).all() and torch.isfinite(output.weights).all()
    assert output.logits[3].item() == 0.0  # all masked: no evidence, logit 0


def test_gradients_reach_the_generator_through_the_gate(tiny_model, tiny_batch) -> None:
    x, z = tiny_batch
    tiny_model.train()
    output = tiny_model(x, z)
    # Through w' = g * w and through log pi = log softmax(w^2) inside the gate.
    output.logits.sum().backward()
    grads = [p.grad for p in tiny_model.generator.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(g.abs().sum() > 0 for g in grads)
    tiny_model.zero_grad()
    gate_only = tiny_model(x, z).gate.sum(dim=0) @ torch.arange(6.0)  # depends on w only via the gate
    gate_only.backward()
    assert tiny_model.generator.head[-1].weight.grad.abs().sum() > 0


def test_ablation_trains_dense_and_evaluates_top_k(tiny_batch) -> None:
    torch.manual_seed(3)
    model = build_model(tiny_args(use_gate=False, k=2))
    x, z = tiny_batch
    assert torch.all(model.train()(x, z).gate == 1)
    assert torch.equal(model.eval()(x, z).gate.sum(dim=1), torch.clamp((z != 0).sum(dim=1), max=2).float())


def test_mask_can_be_switched_off_or_given(tiny_batch) -> None:
    torch.manual_seed(4)
    model = build_model(tiny_args(mask_zero_features=False, k=6)).eval()
    x, z = tiny_batch
    assert torch.all(model(x, z).gate == 1)  # no mask: every feature may be kept
    mask = torch.zeros_like(z, dtype=torch.bool)
    mask[:, 0] = True
    assert torch.all(model(x, z, mask=mask).gate[:, 0] == 0)


def test_set_gate_switches_k_and_tau(tiny_model) -> None:
    tiny_model.set_gate(1, 0.1)
    assert (tiny_model.gate.k, tiny_model.gate.tau, tiny_model.args.k) == (1, 0.1, 1)
    with pytest.raises(ConfigError):
        tiny_model.set_gate(0, 0.1)
    with pytest.raises(ConfigError):
        tiny_model.set_gate(7, 0.1)


@pytest.mark.parametrize(
    ("x_shape", "z_shape", "message"),
    [((5, 8, 8), (5, 6), "x must have shape"), ((5, 1, 9, 9), (5, 6), "x must have shape"),
     ((5, 1, 8, 8), (5, 7), "z must have shape"), ((4, 1, 8, 8), (5, 6), "same number of samples")],
)
def test_wrong_shapes_raise_input_error(tiny_model, x_shape, z_shape, message) -> None:
    with pytest.raises(InputError, match=message):
        tiny_model(torch.rand(x_shape), torch.rand(z_shape))


def test_nan_pixels_raise_input_error(tiny_model, tiny_batch) -> None:
    x, z = tiny_batch
    x = x.clone()
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        tiny_model(x, z)
    with pytest.raises(InputError, match="NaN"):
        tiny_model(tiny_batch[0], torch.full_like(z, float("nan")))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [(dict(k=0), "K must be >= 1"), (dict(k=7), "K must be <="), (dict(task="ranking"), "task must be"),
     (dict(kind="tree"), "model kind"), (dict(task="multiclass", num_classes=2), "num_classes >= 3"),
     (dict(tau=0.0), "tau"), (dict(output_rank=-1), "output_rank")],
)
def test_bad_model_arguments_raise_config_error(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny_args(**overrides)


def test_unknown_model_argument_is_named() -> None:
    with pytest.raises(ConfigError, match="unknown model arguments"):
        ModelArgs.from_dict({**tiny_args().to_dict(), "depth": 3})


def test_dnn_outputs_class_logits(tiny_batch) -> None:
    model = build_model(tiny_args(kind="dnn", task="multiclass", num_classes=3))
    assert isinstance(model, DNNClassifier) and not isinstance(model, NGSLL)
    assert model(tiny_batch[0]).shape == (5, 3)


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_training_weights_are_the_soft_gate_times_the_dense_weights(task, tiny_batch) -> None:
    torch.manual_seed(4)
    model = build_model(tiny_args(task=task, num_classes=2 if task == "binary" else 3, tau=1.0)).train()
    x, z = tiny_batch
    output = model(x, z)
    assert torch.equal(output.weights, output.dense_weights * output.gate.unsqueeze(-1))  # w' = g * w
    assert ((output.gate > 0.01) & (output.gate < 0.99)).any()  # soft Gumbel draws, not the evaluation top-K


def test_the_generator_is_the_papers_at_28x28_and_adapts_to_other_sizes() -> None:
    from ngsll.generators import ImageWeightGenerator

    paper = ImageWeightGenerator(1, 28, [32, 32, 64], 1, 256, 49)
    assert not any(isinstance(layer, torch.nn.AdaptiveMaxPool2d) for layer in paper.features)
    assert paper.head[0].in_features == 64 * 3 * 3  # three 2x2 poolings of 28: 3x3 maps
    assert sum(p.numel() for p in paper.parameters()) == 188_369  # conv 320 + 9248 + 18496, head 147712 + 12593
    wide = ImageWeightGenerator(3, 96, [4, 4, 8], 1, 16, 10, image_width=160)
    assert any(isinstance(layer, torch.nn.AdaptiveMaxPool2d) for layer in wide.features)
    assert wide.head[0].in_features == 8 * 4 * 4  # bounded, whatever the photo size
    assert wide(torch.rand(2, 3, 96, 160)).shape == (2, 10)
    args = ModelArgs(num_features=12, image_size=12, image_width=16, in_channels=3, k=2, conv_channels=[2, 2, 2],
                     hidden_units=4)
    model = build_model(args)
    output = model(torch.rand(2, 3, 12, 16), torch.rand(2, 12))
    assert output.logits.shape == (2, 1) and args.image_shape == (3, 12, 16)
    with pytest.raises(InputError, match=r"x must have shape \(B, 3, 12, 16\)"):
        model(torch.rand(2, 3, 16, 12), torch.rand(2, 12))


def test_the_papers_ablation_picks_among_all_features_and_the_masked_one_never_a_zero(tiny_batch) -> None:
    """evaluate's two rows of the no-gate ablation: model_logits with an all-open mask is the model without the
    zero-feature mask (the paper's top-K |w| over every cell), without it the mask applies."""
    from ngsll.evaluation import model_logits

    x, _ = tiny_batch
    z = torch.zeros(5, 6)
    z[:, 5] = 1.0  # one feature with signal: the masked gate always opens it, the paper's only where |w_5| ranks
    torch.manual_seed(5)
    masked = build_model(tiny_args(k=2)).eval()
    unmasked = build_model(tiny_args(k=2, mask_zero_features=False)).eval()
    unmasked.load_state_dict(masked.state_dict())
    paper = torch.from_numpy(model_logits(masked, x, z, batch_size=2, mask=torch.zeros_like(z, dtype=torch.bool)))
    with_mask = torch.from_numpy(model_logits(masked, x, z, batch_size=2))
    torch.testing.assert_close(paper, unmasked(x, z).logits.detach())
    torch.testing.assert_close(with_mask, masked(x, z).logits.detach())
    torch.testing.assert_close(with_mask[:, 0], masked(x, z).dense_weights[:, 5, 0].detach())  # z_5 w_5, always
    assert (paper[:, 0] == 0).any()  # the paper's gate may pass the only feature with signal over


def test_a_low_rank_output_layer_is_a_times_b_h_plus_bias_per_feature_and_class() -> None:
    """w[b, j, c] = A[j] . (B h_b)[:, c] + bias[j, c], computed here one feature and class at a time."""
    from ngsll.generators import LowRankOutput

    torch.manual_seed(6)
    layer = LowRankOutput(in_features=5, rows=4, columns=3, rank=2)
    hidden = torch.randn(7, 5)
    weights = layer(hidden).view(7, 4, 3)
    projected = (hidden @ layer.project.weight.T).view(7, 2, 3)  # (B, r, C)
    for j in range(4):
        for c in range(3):
            expected = projected[:, :, c] @ layer.row_vectors[j] + layer.bias[j, c]  # (B,)
            torch.testing.assert_close(weights[:, j, c], expected)
    assert sum(p.numel() for p in layer.parameters()) == 4 * 2 + 2 * 3 * 5 + 4 * 3  # A, B, bias


def test_a_low_rank_output_layer_starts_every_feature_at_one_shared_prediction() -> None:
    """Untrained, A[j] = (1 + e) / sqrt(r) with |e| <= 0.1: each feature's input-dependent weights lie within a
    tenth of the shared sum_r (B h)[r, c] / sqrt(r)."""
    from ngsll.generators import LowRankOutput

    torch.manual_seed(7)
    layer = LowRankOutput(in_features=16, rows=50, columns=3, rank=8)
    hidden = torch.randn(9, 16)
    dependent = layer(hidden).view(9, 50, 3) - layer.bias  # (B, rows, C) the part that depends on h
    projected = (hidden @ layer.project.weight.T).view(9, 8, 3) / 8 ** 0.5  # (B, r, C)
    shared = projected.sum(dim=1, keepdim=True)  # (B, 1, C)
    bound = 0.1 * projected.abs().sum(dim=1, keepdim=True) + 1e-6  # (B, 1, C)
    assert ((dependent - shared).abs() <= bound).all()
    assert (dependent - shared).abs().amax() > 0  # near, not equal: the features can still tell apart


@pytest.mark.parametrize("input_kind", ["image", "text", "table"])
def test_output_rank_factorises_ngslls_weights_and_leaves_the_dnn_full(input_kind, tiny_batch) -> None:
    from ngsll.generators import LowRankOutput

    kinds = dict(image={}, text=dict(input_kind="text", vocab_size=20, embedding_dim=4, filter_maps=2),
                 table=dict(input_kind="table", numeric_inputs=2, category_sizes=[3, 4], embedding_dim=2))
    args = tiny_args(task="multiclass", num_classes=3, output_rank=2, **kinds[input_kind])
    model, dnn = build_model(args), build_model(ModelArgs.from_dict({**args.to_dict(), "kind": "dnn"}))
    last = model.generator.head[-1]
    assert isinstance(last, LowRankOutput) and (last.rows, last.columns, last.rank) == (6, 3, 2)
    assert isinstance(dnn.generator.head[-1], torch.nn.Linear) and dnn.generator.head[-1].out_features == 3
    x = dict(image=tiny_batch[0], text=torch.randint(0, 20, (5, 7)),
             table=torch.tensor([[0.5, -1.0, 1.0, 2.0]] * 5))[input_kind]
    output = model.eval()(x, tiny_batch[1])
    assert output.dense_weights.shape == (5, 6, 3)
    rebuilt = build_model(args.to_dict())  # a checkpoint's plain dict builds the same layout
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt.eval()(x, tiny_batch[1]).logits, output.logits)
