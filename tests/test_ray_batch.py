"""NormLIME on a local Ray (2 CPUs, several blocks) equals the single-process explain stage's result."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conftest import tiny_args
from ngsll import build_model
from ngsll.checkpoint import checkpoint_dict
from ngsll.importance import accumulate_normlime
from ngsll.train import TensorData

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    from ngsll_plugins.ray_batch import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.mark.parametrize("task, classes", [("binary", 2), ("multiclass", 3)])
def test_ray_normlime_equals_the_single_process_pass(local_ray, tmp_path, task, classes) -> None:
    from ngsll_plugins.ray_batch import ray_normlime

    torch.manual_seed(0)
    model = build_model(tiny_args(num_features=6, k=3, task=task, num_classes=classes)).eval()
    rng = np.random.default_rng(0)
    x = rng.random((150, 1, 8, 8)).astype(np.float32)
    z = (rng.random((150, 6)) * (rng.random((150, 6)) > 0.3)).astype(np.float32)  # some cells blank (masked)
    expected = accumulate_normlime(model, TensorData.from_arrays(x, z, np.zeros(150, dtype=np.int64)), classes, 32)

    result = ray_normlime(checkpoint_dict(model, {}), x, z, classes, blocks=5, batch_size=16, actors=2, cpus_per_actor=0.5,
                          weights_dir=tmp_path / "weights")
    assert result.blocks >= 2 and result.normlime.samples == 150
    for name in ("global_importance_", "class_importance_", "class_signed_", "sp_lime_", "mean_abs_", "usage_"):
        np.testing.assert_allclose(getattr(result.normlime, name), getattr(expected, name), rtol=1e-5, atol=1e-7)
    table = pq.read_table(tmp_path / "weights")
    assert sorted(table.column("id").to_pylist()) == list(range(150))
    weights = np.stack(table.column("weights").to_numpy(zero_copy_only=False))
    assert weights.shape == (150, 6) and ((weights != 0).sum(axis=1) <= 3).all()
