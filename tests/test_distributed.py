"""Data-parallel training: DistributedSampler shards, and the real training stage under a real torchrun.

The slow tests train a tiny model on tiny learnable images with two gloo processes on CPU and compare it
with the single-process run of the same stage:
* the DNN has no sampling noise, so the same global batches and averaged gradients must give the same
  weights: max |difference| <= 1e-5 (only the order of float additions differs);
* NGSLL draws Gumbel noise per rank, so its validation loss must agree within 0.05.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ngsll.config import DistributedSettings, distributed_settings
from ngsll.distributed import (
    DistributedContext, context_from_environment, epoch_indices, per_rank_batch_size, resolve_backend, shard,
    torchrun_command,
)
from ngsll.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
STAGE = REPO / "pipeline" / "train.py"
BROKEN_RANK = Path(__file__).with_name("ddp_broken_rank.py")
DNN_WEIGHT_TOLERANCE = 1e-5
NGSLL_VAL_LOSS_TOLERANCE = 0.05


# ---- sharding and settings (fast) -------------------------------------------------------------------

@pytest.mark.parametrize("num_samples, world_size", [(100, 2), (101, 2), (10, 3), (7, 4)])
def test_ranks_share_one_permutation_without_overlap(num_samples: int, world_size: int) -> None:
    whole = epoch_indices(num_samples, epoch=3, seed=0, context=DistributedContext())
    shares = [epoch_indices(num_samples, 3, 0, DistributedContext(rank, world_size)) for rank in range(world_size)]
    assert sorted(whole.tolist()) == list(range(num_samples))
    assert len({len(part) for part in shares}) == 1  # every rank takes the same number of steps
    interleaved = torch.stack(shares, dim=1).reshape(-1)  # (W * ceil(N / W),) in global order
    assert interleaved[:num_samples].tolist() == whole.tolist()  # rank r holds positions r, r + W, ...
    assert set(interleaved[num_samples:].tolist()) <= set(whole[: world_size].tolist())  # padding repeats the start


def test_epochs_reshuffle_and_the_seed_fixes_the_order() -> None:
    context = DistributedContext()
    assert torch.equal(epoch_indices(50, 1, 0, context), epoch_indices(50, 1, 0, context))
    assert not torch.equal(epoch_indices(50, 1, 0, context), epoch_indices(50, 2, 0, context))
    assert not torch.equal(epoch_indices(50, 1, 0, context), epoch_indices(50, 1, 1, context))


def test_evaluation_shards_cover_every_sample_once() -> None:
    shards = [shard(11, DistributedContext(rank, 3)).tolist() for rank in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))


def test_batch_size_must_split_evenly_over_ranks() -> None:
    assert per_rank_batch_size(128, DistributedContext(0, 4)) == 32
    with pytest.raises(ConfigError, match="divisible by the number of processes"):
        per_rank_batch_size(128, DistributedContext(0, 3))


def test_backend_follows_the_device_and_nccl_needs_cuda() -> None:
    assert resolve_backend("auto", torch.device("cpu")) == "gloo"
    assert resolve_backend("auto", torch.device("cuda")) == "nccl"
    with pytest.raises(ConfigError, match="needs CUDA"):
        resolve_backend("nccl", torch.device("cpu"))
    with pytest.raises(ConfigError, match="one of"):
        resolve_backend("mpi", torch.device("cpu"))


def test_settings_default_to_one_process_and_reject_bad_values() -> None:
    assert distributed_settings({}) == DistributedSettings()
    assert distributed_settings({"distributed": {"nproc_per_node": 2}}).nproc_per_node == 2
    with pytest.raises(ConfigError, match="nproc_per_node must be >= 1"):
        distributed_settings({"distributed": {"nproc_per_node": 0}})
    with pytest.raises(ConfigError, match="timeout_s"):
        distributed_settings({"distributed": {"timeout_s": 0}})
    with pytest.raises(ConfigError, match="unknown keys"):
        distributed_settings({"distributed": {"nprocs": 2}})


def test_context_comes_from_torchrun_variables(monkeypatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert context_from_environment() == DistributedContext()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    context = context_from_environment()
    assert (context.rank, context.world_size, context.is_main, context.is_distributed) == (1, 2, False, True)
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ConfigError, match="RANK must lie"):
        context_from_environment()


def test_torchrun_command_runs_the_same_script_and_arguments() -> None:
    command = torchrun_command("pipeline/train.py", ["--stage", "dnn"], 2)
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc-per-node=2" in command and "--max-restarts=0" in command
    assert command[-3:] == ["pipeline/train.py", "--stage", "dnn"]


# ---- the real stage under torchrun (slow) -----------------------------------------------------------

@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Prepared tiny binary images (digits 5-9 carry a bright block), a passed gate report, params."""
    sys.path.insert(0, str(REPO / "pipeline"))
    from ngsll.data.images import RawImages, image_splits
    from stage_io import save_split, write_json

    root = tmp_path_factory.mktemp("ddp")
    rng = np.random.default_rng(0)

    def images(count: int) -> tuple[np.ndarray, np.ndarray]:
        digits = rng.integers(0, 10, count).astype(np.uint8)
        pixels = rng.integers(0, 60, size=(count, 28, 28)).astype(np.uint8)
        pixels[digits >= 5, :10, 8:20] += 180
        return pixels, digits

    (train_x, train_y), (test_x, test_y) = images(140), images(40)
    raw = RawImages.from_arrays({"train_images": train_x, "train_labels": train_y, "test_images": test_x,
                                 "test_labels": test_y})
    task = {"task": "binary", "classes": {"0-4": [0, 1, 2, 3, 4], "5-9": [5, 6, 7, 8, 9]}, "num_validation": 40}
    splits, mapping, spec = image_splits(raw, task, seed=0, where="ddp")
    for name, split in splits.items():
        save_split(root / "prepared" / f"{name}.npz", split)
    write_json(root / "prepared" / "features.json", {"feature_names": spec.feature_names,
                                                     "class_names": mapping.class_names, "image": spec.to_dict()})
    write_json(root / "checked.json", {"success": True})
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["device"] = "cpu"
    image = params["defaults"]["image"]
    image["model"].update(conv_channels=[4, 4, 4], hidden_units=16)
    image["train"].update(batch_size=16, ks=[3])
    for phase in ("coarse", "fine", "dnn"):
        image["train"][phase].update(max_epochs=3, patience=3)
    for processes in (1, 2):
        params["distributed"].update(nproc_per_node=processes, timeout_s=20)
        (root / f"params_{processes}.yaml").write_text(yaml.safe_dump(params))
    return root


def run_stage(root: Path, processes: int, stage: str, *extra: str, store: str, script: Path = STAGE,
              environment: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``pipeline/train.py`` as DVC runs it (the params switch launches torchrun), outputs under ``root/<store>``."""
    out = root / store
    fine = stage == "fine"  # the fine stage writes a folder of k<K>.pt
    command = [sys.executable, str(script), "--dataset", "mnist", "--stage", stage, "--data-dir", str(root / "prepared"),
               "--checked", str(root / "checked.json"), "--out", str(out / ("fine" if fine else f"{stage}.pt")),
               "--history", str(out / ("history" if fine else f"{stage}.json")),
               "--params", str(root / f"params_{processes}.yaml"), *extra]
    if script != STAGE:  # the broken-rank wrapper runs directly under torchrun
        command = torchrun_command(str(script), command[2:], processes)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / store / 'mlflow.db'}", **(environment or {})}
    (root / store).mkdir(exist_ok=True)
    return subprocess.run(command, cwd=root / store, env=env, capture_output=True, text=True, timeout=timeout)


def checked(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"stage failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def runs(database: Path) -> list[tuple[str, str, str | None]]:
    """(name, status, parent name) of every run in an MLflow SQLite store."""
    with sqlite3.connect(database) as connection:
        rows = connection.execute(
            "SELECT r.run_uuid, r.name, r.status, t.value FROM runs r "
            "LEFT JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'mlflow.parentRunId'").fetchall()
    names = {uuid: name for uuid, name, _, _ in rows}
    return sorted((name, status, names.get(parent)) for _, name, status, parent in rows)


def world_sizes(database: Path) -> set[str]:
    with sqlite3.connect(database) as connection:
        return {value for (value,) in connection.execute("SELECT value FROM params WHERE key = 'world_size'")}


@pytest.mark.slow
def test_dnn_on_two_gloo_processes_matches_one_process(workspace: Path) -> None:
    checked(run_stage(workspace, 1, "dnn", store="single"))
    started = time.perf_counter()
    result = checked(run_stage(workspace, 2, "dnn", store="ddp"))
    print(f"two-process DNN stage: {time.perf_counter() - started:.1f} s")
    assert "2 processes under torchrun" in result.stderr
    single = torch.load(workspace / "single/dnn.pt", weights_only=True)
    parallel = torch.load(workspace / "ddp/dnn.pt", weights_only=True)
    assert (single["world_size"], parallel["world_size"]) == (1, 2)
    difference = max((single["state_dict"][name] - tensor).abs().max().item()
                     for name, tensor in parallel["state_dict"].items())
    assert difference <= DNN_WEIGHT_TOLERANCE
    assert [row["epoch"] for row in parallel["history"]] == [row["epoch"] for row in single["history"]]
    assert np.allclose([row["val_loss"] for row in parallel["history"]],
                       [row["val_loss"] for row in single["history"]], atol=1e-5)
    assert runs(workspace / "ddp/mlflow.db") == [("DNN", "FINISHED", None)]  # rank 1 logged nothing


@pytest.mark.slow
def test_coarse_then_fine_on_two_processes_log_one_run_tree(workspace: Path) -> None:
    for store, processes in (("single_ngsll", 1), ("ddp_ngsll", 2)):
        checked(run_stage(workspace, processes, "coarse", store=store))
        checked(run_stage(workspace, processes, "fine", "--coarse", str(workspace / store / "coarse.pt"), store=store))
    single = torch.load(workspace / "single_ngsll/fine/k3.pt", weights_only=True)
    parallel = torch.load(workspace / "ddp_ngsll/fine/k3.pt", weights_only=True)
    assert parallel["world_size"] == 2 and parallel["model_args"]["k"] == 3
    assert abs(single["history"][-1]["val_loss"] - parallel["history"][-1]["val_loss"]) <= NGSLL_VAL_LOSS_TOLERANCE
    database = workspace / "ddp_ngsll/mlflow.db"
    assert runs(database) == [("NGSLL K=3", "FINISHED", None), ("coarse", "FINISHED", "NGSLL K=3"),
                              ("fine", "FINISHED", "NGSLL K=3")]
    assert world_sizes(database) == {"2"}
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT COUNT(*) FROM model_versions").fetchone() == (1,)


@pytest.mark.slow
@pytest.mark.parametrize("failure, expected", [
    ("raise", "injected failure on rank 1"),
    ("hang", "Timed out waiting"),  # rank 0's all-reduce gives up after distributed.timeout_s
])
def test_a_broken_rank_fails_the_stage_instead_of_hanging(workspace: Path, failure: str, expected: str) -> None:
    params = yaml.safe_load((workspace / "params_2.yaml").read_text())
    # A hang is detected by the collective timeout, so it is short; a raising rank must not be beaten to it by a
    # slow start (the DDP set-up's own collectives on a loaded CI machine), so it keeps the usual 20 s.
    params["distributed"]["timeout_s"] = 5 if failure == "hang" else 20
    (workspace / "params_2.yaml").write_text(yaml.safe_dump(params))
    try:
        started = time.perf_counter()
        result = run_stage(workspace, 2, "dnn", store=f"broken_{failure}", script=BROKEN_RANK, timeout=180,
                           environment={"NGSLL_TEST_BROKEN_RANK": "1", "NGSLL_TEST_FAILURE": failure})
        elapsed = time.perf_counter() - started
    finally:
        params["distributed"]["timeout_s"] = 20
        (workspace / "params_2.yaml").write_text(yaml.safe_dump(params))
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Root Cause" in output and expected in output, output[-4000:]
    assert elapsed < 120
    assert not (workspace / f"broken_{failure}/dnn.pt").exists()
    assert runs(workspace / f"broken_{failure}/mlflow.db") == [("DNN", "FAILED", None)]
