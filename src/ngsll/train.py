"""Training loops: one phase of NGSLL (coarse or fine) or of the DNN baseline, with early stopping.

Coarse-to-fine (paper section 3.3): the coarse phase trains with K = 10, tau = 1 and Adam until the
validation loss stops improving; the fine phase restarts from the coarse weights with the target K,
tau = 0.1 and momentum SGD at one tenth of Adam's final learning rate. Each phase is one call of
:func:`train_phase` with a :class:`PhaseConfig`.
"""

from __future__ import annotations

import copy
import math
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ngsll.distributed import (
    DistributedContext, agree, all_reduce_sum, epoch_indices, per_rank_batch_size, shard,
)
from ngsll.errors import ConfigError, InputError
from ngsll.model import DNNClassifier, NGSLL, NGSLLOutput

OPTIMIZERS = ("adam", "sgd")
MONITORS = ("val_loss", "val_accuracy")
# Redraw often on a terminal; rarely when stderr is a log file (DVC, CI), so logs stay readable.
_PROGRESS_INTERVAL = 0.5 if sys.stderr.isatty() else 30.0


def pick_device(preferred: str = "auto") -> torch.device:
    """CUDA when available (or asked for), else CPU. ``preferred`` is ``auto``, ``cpu`` or ``cuda``."""
    if preferred not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda', got {preferred!r}")
    if preferred == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA device is available")
    if preferred == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preferred)


def device_description(device: torch.device) -> str:
    """Human-readable device name for logs, e.g. ``cuda (NVIDIA H100)`` or ``cpu (2 threads)``."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so a run is repeatable."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@dataclass
class TensorData:
    """A split as tensors: x (N, ...) original input, z (N, d) simplified input, y (N,) targets.

    x keeps integer arrays (token ids) as int64 and turns everything else into float32.
    """

    x: torch.Tensor
    z: torch.Tensor
    y: torch.Tensor

    @classmethod
    def from_arrays(cls, x: np.ndarray, z: np.ndarray, y: np.ndarray, device: torch.device | str = "cpu") -> TensorData:
        if not len(x) == len(z) == len(y):
            raise InputError(f"x, z and y must have the same length, got {len(x)}, {len(z)} and {len(y)}")
        integer_x = np.issubdtype(np.asarray(x).dtype, np.integer)
        return cls(
            x=torch.as_tensor(x, dtype=torch.int64 if integer_x else torch.float32, device=device),
            z=torch.as_tensor(z, dtype=torch.float32, device=device),
            y=torch.as_tensor(y, device=device),
        )

    def __len__(self) -> int:
        return len(self.y)

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.x[indices], self.z[indices], self.y[indices]

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Consecutive ``(x, z, y)`` batches of at most ``batch_size`` samples, in order."""
        for start in range(0, len(self), batch_size):
            yield self.x[start : start + batch_size], self.z[start : start + batch_size], self.y[start : start + batch_size]


@dataclass
class PhaseConfig:
    """One training phase. Defaults are the paper's coarse phase.

    k / tau: gate settings (ignored by the DNN); optimizer: ``adam`` or ``sgd``; lr: learning rate;
    momentum: for SGD; weight_decay: L2 penalty (decoupled, AdamW-style, for Adam); max_epochs / patience:
    early stopping; monitor: what "improvement" means for early stopping, the kept epoch and lr decay,
    ``val_loss`` (lower, the default) or ``val_accuracy`` (higher; a tie goes to the lower loss; not for
    regression); batch_size; lr_decay_factor / lr_decay_patience: multiply lr by the factor after that many
    epochs without improvement (1.0 disables decay).
    """

    k: int = 10
    tau: float = 1.0
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    max_epochs: int = 20
    patience: int = 2
    batch_size: int = 128
    lr_decay_factor: float = 1.0
    lr_decay_patience: int = 1
    monitor: str = "val_loss"

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.max_epochs < 1 or self.patience < 1 or self.batch_size < 1:
            raise ConfigError(
                f"max_epochs, patience and batch_size must be >= 1, got "
                f"{self.max_epochs}, {self.patience}, {self.batch_size}"
            )
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 < self.lr_decay_factor <= 1:
            raise ConfigError(f"lr_decay_factor must be in (0, 1], got {self.lr_decay_factor}")
        if self.monitor not in MONITORS:
            raise ConfigError(f"monitor must be one of {MONITORS}, got {self.monitor!r}")


@dataclass
class PhaseResult:
    """What a phase produced: per-epoch ``history`` rows, the kept (best) epoch with its validation loss and
    accuracy (``-inf`` for regression), and the final learning rate."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf
    best_val_accuracy: float = -math.inf
    final_lr: float = 0.0
    device: str = "cpu"

    def keep(self, epoch: int, val: dict[str, float]) -> None:
        """Record ``epoch`` with its validation metrics ``val`` as the kept one."""
        self.best_epoch, self.best_val_loss = epoch, val["loss"]
        self.best_val_accuracy = val.get("accuracy", -math.inf)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def logits_of(output: NGSLLOutput | torch.Tensor) -> torch.Tensor:
    """(B, C) logits from either model's forward output."""
    return output.logits if isinstance(output, NGSLLOutput) else output


def task_loss(logits: torch.Tensor, targets: torch.Tensor, task: str) -> torch.Tensor:
    """Mean loss: logistic for binary, cross entropy for multi-class, squared error for regression."""
    if task == "binary":
        return nn.functional.binary_cross_entropy_with_logits(logits[:, 0], targets.float())
    if task == "multiclass":
        return nn.functional.cross_entropy(logits, targets.long())
    return nn.functional.mse_loss(logits[:, 0], targets.float())


def predict_labels(logits: torch.Tensor, task: str) -> torch.Tensor:
    """(B,) predicted class indices (or real predictions for regression) from (B, C) logits."""
    if task == "binary":
        return (logits[:, 0] > 0).long()
    if task == "multiclass":
        return logits.argmax(dim=-1)
    return logits[:, 0]


@torch.inference_mode()
def evaluate(
    model: NGSLL | DNNClassifier, data: TensorData, batch_size: int = 1024, context: DistributedContext | None = None,
) -> dict[str, float]:
    """Mean loss and accuracy (classification) or MSE (regression) in evaluation mode.

    Under DDP (``context`` with several ranks) each rank scores its :func:`ngsll.distributed.shard` and the
    sums are all-reduced, so every rank returns the same metrics over the whole of ``data``.
    """
    context = context or DistributedContext()
    was_training = model.training
    model.eval()
    task = model.args.task
    if context.is_distributed:
        data = TensorData(*data.batch(shard(len(data), context).to(data.y.device)))
    sums = torch.zeros(3, dtype=torch.float64, device=data.y.device)  # loss, correct (or squared error), count
    for x, z, y in data.batches(batch_size):
        logits = logits_of(model(x, z))  # (B, C)
        predictions = predict_labels(logits, task)  # (B,)
        hits = (predictions - y.float()).pow(2).sum() if task == "regression" else (predictions == y).sum()
        sums += torch.stack([task_loss(logits, y, task).double() * len(y), hits.double(),
                             torch.tensor(len(y), dtype=torch.float64, device=sums.device)])
    model.train(was_training)
    total_loss, total_hits, count = all_reduce_sum(sums, context).tolist()
    metrics = {"loss": total_loss / count}
    metrics["mse" if task == "regression" else "accuracy"] = total_hits / count
    return metrics


ACCURACY_NEEDS_CLASSES = "monitor 'val_accuracy' needs a classification task; use 'val_loss' for regression"


def improves(val: dict[str, float], best: PhaseResult, monitor: str) -> bool:
    """Whether an epoch's validation metrics ``val`` beat the kept epoch's under ``monitor`` (see PhaseConfig)."""
    if monitor == "val_loss":
        return val["loss"] < best.best_val_loss
    if "accuracy" not in val:
        raise ConfigError(ACCURACY_NEEDS_CLASSES)
    if val["accuracy"] != best.best_val_accuracy:
        return val["accuracy"] > best.best_val_accuracy
    return val["loss"] < best.best_val_loss


def kept_epoch(history: list[dict[str, float]], monitor: str = "val_loss") -> dict[str, float]:
    """The row of a :func:`train_phase` ``history`` whose weights the phase ended with under ``monitor``.

    Replays :func:`improves` over the rows, so it names the epoch ``train_phase`` kept (``best_epoch``).
    """
    if not history:
        raise InputError("an empty training history has no kept epoch")
    kept, best = history[0], PhaseResult()
    for row in history:
        val = {"loss": row["val_loss"], **({"accuracy": row["val_accuracy"]} if "val_accuracy" in row else {})}
        if improves(val, best, monitor):
            kept = row
            best.keep(int(row["epoch"]), val)
    return kept


def make_optimizer(model: nn.Module, config: PhaseConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def train_phase(
    model: NGSLL | DNNClassifier,
    train: TensorData,
    validation: TensorData,
    config: PhaseConfig,
    seed: int = 0,
    description: str = "train",
    progress: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    context: DistributedContext | None = None,
) -> PhaseResult:
    """Train until the monitored validation metric has not improved for ``config.patience`` epochs.

    The model ends with the weights of its best validation epoch (``config.monitor``: the lowest loss, or the
    highest accuracy with ties going to the lower loss). For NGSLL the gate is first set to
    ``config.k`` / ``config.tau``. Data must already sit on the model's device. ``on_epoch`` (e.g. an
    experiment tracker) receives each history row as soon as the epoch ends.

    Every epoch visits one seeded permutation of ``train`` in batches of ``config.batch_size``. Under
    DDP (``context`` from :func:`ngsll.distributed.init_distributed` with several ranks) the model is
    wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`, each rank takes its DistributedSampler
    share of every batch (``batch_size / world_size`` samples), gradients are averaged, validation sums are
    all-reduced and rank 0's early-stopping decision is broadcast, so every rank runs the same epochs and
    ends with the same weights. Progress bars are drawn by rank 0 only; the Gumbel noise and dropout of
    rank ``r`` are seeded with ``seed + r``.

    Returns:
        A :class:`PhaseResult` with one history row per epoch (``epoch, train_loss, val_loss,
        val_accuracy`` or ``val_mse``, ``lr, seconds``), identical on every rank.
    """
    if config.monitor == "val_accuracy" and model.args.task == "regression":
        raise ConfigError(ACCURACY_NEEDS_CLASSES)
    context = context or DistributedContext()
    if isinstance(model, NGSLL):
        model.set_gate(config.k, config.tau)
    seed_everything(seed + context.rank)
    device = train.y.device
    rank_batch_size = per_rank_batch_size(config.batch_size, context)
    trained = model
    if context.is_distributed:
        trained = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    optimizer = make_optimizer(model, config)
    result = PhaseResult(device=device_description(device))
    best_state = copy.deepcopy(model.state_dict())
    epochs_without_improvement = epochs_since_decay = 0
    show = progress and context.is_main
    for epoch in range(1, config.max_epochs + 1):
        started = time.perf_counter()
        model.train()
        order = epoch_indices(len(train), epoch, seed, context).to(device)  # (ceil(N / W),)
        batches = range(0, len(order), rank_batch_size)
        bar = tqdm(batches, desc=f"{description} epoch {epoch}", leave=False, disable=not show, unit="batch",
                   mininterval=_PROGRESS_INTERVAL)
        running = torch.zeros(1, dtype=torch.float64, device=device)  # summed batch losses, synchronised once
        for step, start in enumerate(bar, 1):
            x, z, y = train.batch(order[start : start + rank_batch_size])
            loss = task_loss(logits_of(trained(x, z)), y, model.args.task)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.detach()
            if show and step % 20 == 0:
                bar.set_postfix(loss=f"{running.item() / step:.4f}", refresh=False)  # redraw on tqdm's own clock
        train_loss = all_reduce_sum(running / len(batches), context).item() / context.world_size
        val = evaluate(model, validation, context=context)
        lr = optimizer.param_groups[0]["lr"]
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val["loss"], "lr": lr,
               "seconds": time.perf_counter() - started}
        row.update({f"val_{name}": value for name, value in val.items() if name != "loss"})
        result.history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if show:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch")
            tqdm.write(f"{description} epoch {epoch}: {shown}")
        improved = agree(improves(val, result, config.monitor), context, device)
        if improved:
            result.keep(epoch, val)
            best_state = copy.deepcopy(model.state_dict())
            epochs_without_improvement = epochs_since_decay = 0
        else:
            epochs_without_improvement += 1
            epochs_since_decay += 1
            if epochs_without_improvement >= config.patience:
                break
            if config.lr_decay_factor < 1 and epochs_since_decay >= config.lr_decay_patience:
                for group in optimizer.param_groups:
                    group["lr"] *= config.lr_decay_factor
                epochs_since_decay = 0
    model.load_state_dict(best_state)
    result.final_lr = optimizer.param_groups[0]["lr"]
    return result
