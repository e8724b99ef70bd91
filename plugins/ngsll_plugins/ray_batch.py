"""Batch explanations and NormLIME on Ray Data: the same numbers as the single-process explain stage.

Ray Data holds the prepared split in blocks; ``map_batches`` runs the fine model in actors (one model
load per actor, a GPU when the actor has one) to turn each batch into per-sample sparse weights and
predicted labels; each block then becomes one NormLIME accumulator (sums and counts only) and the driver
merges them, which equals one pass over the whole split (:meth:`ngsll.normlime.NormLIME.merge`).

Local by default (``ray.init()`` on this machine); ``address`` or the ``RAY_ADDRESS`` environment
variable connects to a cluster instead. Ray is the optional ``ray`` extra; nothing else imports it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ngsll.checkpoint import model_from_checkpoint
from ngsll.importance import answered_weights
from ngsll.normlime import NormLIME

_SUMS = NormLIME.STATE  # every sum of the accumulator (class_samples included)


@dataclass
class RayExplainResult:
    """The merged NormLIME, how many blocks fed it, and where the per-sample weights went (if written)."""

    normlime: NormLIME
    blocks: int
    weights_dir: Path | None


class SparseWeights:
    """Ray Data actor: loads a fine checkpoint once, answers batches with weights and predictions."""

    def __init__(self, checkpoint: dict[str, Any]) -> None:
        # Ray exposes a GPU to an actor (CUDA_VISIBLE_DEVICES) only when it was asked for one.
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model_from_checkpoint(checkpoint).to(self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = torch.as_tensor(batch["x"], device=self.device)  # (B, ...) pixels or token ids, dtype kept
        z = torch.as_tensor(batch["z"], dtype=torch.float32, device=self.device)  # (B, d)
        weights, predicted = answered_weights(self.model, x, z)  # (B, d), (B,)
        return {"id": batch["id"], "weights": weights.astype(np.float32), "predicted": predicted.astype(np.int64)}


def _block_state(batch: dict[str, np.ndarray], num_features: int, num_classes: int) -> dict[str, np.ndarray]:
    """One row holding the NormLIME sums of a whole block."""
    normlime = NormLIME(num_features, num_classes).update(np.stack(batch["weights"]), np.asarray(batch["predicted"]))
    state = {name: getattr(normlime, name)[None] for name in _SUMS}
    state["samples"] = np.array([normlime.samples])
    return state


def _from_state(row: dict[str, Any], num_features: int, num_classes: int) -> NormLIME:
    normlime = NormLIME(num_features, num_classes)
    for name in _SUMS:
        setattr(normlime, name, np.asarray(row[name]).astype(getattr(normlime, name).dtype))
    normlime.samples = int(row["samples"])
    return normlime


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to ``address`` (or ``RAY_ADDRESS``), else start a local Ray with ``num_cpus`` CPUs."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


def ray_normlime(
    checkpoint: dict[str, Any], x: np.ndarray, z: np.ndarray, num_classes: int, blocks: int = 8,
    batch_size: int = 1024, actors: int = 2, cpus_per_actor: float = 1.0, weights_dir: Path | None = None,
) -> RayExplainResult:
    """NormLIME of one fine model over (N, ...) x and (N, d) z, computed on Ray Data.

    Args:
        checkpoint: a fine checkpoint dict (``model_args``, ``state_dict``), shipped to each actor once.
        x / z: the split's original and simplified inputs; ``blocks`` Ray blocks are made of them.
        num_classes: labels for the class-specific scores.
        batch_size: samples per model call inside an actor; ``actors``: model replicas, each reserving
            ``cpus_per_actor`` CPUs (leave some free for Ray Data's own read tasks, or the pipeline stalls).
        weights_dir: if given, per-sample ``id, weights, predicted`` are written there as Parquet shards.

    Call :func:`init_ray` first (or let this call start a local Ray).
    """
    import ray

    init_ray()
    num_features = z.shape[1]
    dataset = ray.data.range(len(z), override_num_blocks=blocks)  # column "id": sample indices, in blocks
    split = ray.put((x, z))  # the split goes to the object store once; tasks fetch it by reference

    def attach(batch: dict[str, np.ndarray], split_ref: Any) -> dict[str, np.ndarray]:
        x_all, z_all = ray.get(split_ref[0])
        return {"id": batch["id"], "x": x_all[batch["id"]], "z": z_all[batch["id"]]}

    weighted = dataset.map_batches(attach, fn_kwargs={"split_ref": [split]}, batch_size=batch_size).map_batches(
        SparseWeights, fn_constructor_args=(checkpoint,), batch_size=batch_size, concurrency=actors,
        num_cpus=cpus_per_actor, num_gpus=1 if torch.cuda.is_available() else 0,
    ).materialize()
    if weights_dir is not None:
        weighted.write_parquet(str(weights_dir))
    states = weighted.map_batches(
        _block_state, fn_kwargs={"num_features": num_features, "num_classes": num_classes}, batch_size=None
    ).take_all()
    merged = NormLIME(num_features, num_classes)
    for row in states:
        merged.merge(_from_state(row, num_features, num_classes))
    return RayExplainResult(normlime=merged, blocks=len(states), weights_dir=weights_dir)
