"""Checkpoints are plain dicts that round-trip through torch.load(weights_only=True)."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_args
from ngsll import ConfigError, build_model
from ngsll.checkpoint import checkpoint_dict, model_from_checkpoint


@pytest.mark.parametrize("kind", ["ngsll", "dnn"])
def test_checkpoint_round_trip(tmp_path, tiny_batch, kind) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_args(kind=kind)).eval()
    params = {"seed": 0, "train": {"ks": [1, 5]}}
    path = tmp_path / "model.pt"
    torch.save(checkpoint_dict(model, params, history=[{"epoch": 1, "val_loss": 0.5}], final_lr=1e-3), path)

    loaded = torch.load(path, weights_only=True)
    restored = model_from_checkpoint(loaded)
    assert loaded["params"] == params and loaded["model_args"] == model.args.to_dict()
    assert not restored.training
    x, z = tiny_batch
    before, after = model(x, z), restored(x, z)
    if kind == "ngsll":
        before, after = before.logits, after.logits
    assert torch.equal(before, after)


def test_checkpoint_without_state_is_refused() -> None:
    with pytest.raises(ConfigError, match="state_dict"):
        model_from_checkpoint({"model_args": tiny_args().to_dict()})
