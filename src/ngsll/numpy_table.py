"""A trained table NGSLL's evaluation-mode forward pass in numpy, for answering one row or a few.

A table model is small (embeddings, an MLP of L x U units, a top-K gate), so for one row torch's
per-operation dispatch costs several times the arithmetic: 0.23-0.30 ms a row with its top-K explanation
in torch against about 0.07 ms in numpy (0.04 ms the forward pass, the rest the selection) on this
project's 2-core machine (``benchmarks/table_cost.py``). The serving path of table models on the CPU runs
this copy of the forward pass and selection; training and evaluation stay in torch. It computes exactly
what :meth:`ngsll.model.NGSLL.forward` computes in evaluation mode (the same float32 arithmetic, so equal up
to rounding, and the same top-K up to exact ties), a property ``tests/test_table.py`` checks on every output
against the torch model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ngsll.errors import ConfigError, InputError
from ngsll.explain import SparseExplanation
from ngsll.generators import LowRankOutput
from ngsll.model import NGSLL, NGSLLOutput


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A float32 numpy copy of a torch parameter or buffer."""
    return tensor.detach().cpu().numpy().astype(np.float32)


class NumpyTableModel:
    """Evaluation-mode forward of a table :class:`NGSLL`, in numpy; the weights are copied once.

    Args:
        model: a trained NGSLL with ``input_kind == "table"`` (its current weights are copied; a later change
            to the torch model is not seen).
    """

    def __init__(self, model: NGSLL) -> None:
        args = model.args
        if args.input_kind != "table" or not isinstance(model, NGSLL):
            raise ConfigError(f"NumpyTableModel runs table NGSLL models; this one reads {args.input_kind}")
        generator = model.generator
        *hidden, output = generator.head
        linears = [layer for layer in hidden if isinstance(layer, nn.Linear)]
        if len(linears) != len(hidden) // 2 or not isinstance(output, (nn.Linear, LowRankOutput)):
            raise ConfigError(f"unexpected table head {generator.head}; expected (Linear, ReLU) x L and a Linear "
                              "or LowRankOutput")
        self.args = args
        self.embedding = as_numpy(generator.embedding.weight)  # (sum of category sizes, E)
        self.offsets = generator.offsets.cpu().numpy()  # (categorical,) first row of each column's codes
        self.sizes = np.asarray(args.category_sizes, dtype=np.float32)  # (categorical,)
        # each hidden layer as (in, out) weights and (out,) bias
        self.layers = [(as_numpy(layer.weight).T.copy(), as_numpy(layer.bias)) for layer in linears]
        self.output_layer = NumpyOutputLayer(output, self.args.num_features, self.args.num_outputs)

    def check(self, x: np.ndarray, z: np.ndarray) -> None:
        """Raise :class:`InputError` unless x is (B, numbers + categorical) finite floats whose codes are integers in
        [0, size) of their column and z is (B, d) finite, as :func:`ngsll.model.check_inputs` does for torch."""
        args = self.args
        if x.ndim != 2 or x.shape[1] != args.table_width or not np.issubdtype(x.dtype, np.floating):
            raise InputError(f"x must be (B, {args.table_width}) floats (numbers, then category codes), "
                             f"got {x.shape} {x.dtype}")
        if z.ndim != 2 or z.shape != (x.shape[0], args.num_features):
            raise InputError(f"z must have shape ({x.shape[0]}, {args.num_features}), got {z.shape}")
        if not (np.isfinite(x).all() and np.isfinite(z).all()):
            raise InputError("x and z must be finite; missing values are imputed before x is built")
        codes = x[:, args.numeric_inputs:]  # (B, categorical)
        if codes.size and ((codes != np.floor(codes)) | (codes < 0) | (codes >= self.sizes)).any():
            raise InputError(f"the category codes of x must be integers in [0, size) for sizes {args.category_sizes}")

    def __call__(self, x: np.ndarray, z: np.ndarray) -> NGSLLOutput:
        """Predict and explain B rows: the :class:`NGSLLOutput` of the torch model in evaluation mode, as CPU
        tensors over numpy arrays (no copy).

        Args:
            x: (B, numeric_inputs + categorical) float32 rows: standardised numbers, then category codes.
            z: (B, d) float32 simplified rows.
        """
        args = self.args
        x, z = x.astype(np.float32, copy=False), z.astype(np.float32, copy=False)
        self.check(x, z)
        batch, numeric = x.shape[0], args.numeric_inputs
        codes = x[:, numeric:].astype(np.int64) + self.offsets  # (B, categorical) rows of the shared table
        hidden = np.concatenate([x[:, :numeric], self.embedding[codes].reshape(batch, -1)], axis=1)  # (B, in)
        for weight, bias in self.layers:
            hidden = np.maximum(hidden @ weight + bias, 0.0)  # (B, U) Linear + ReLU
        dense = self.output_layer(hidden)  # (B, d, C)
        scores = np.square(dense).sum(axis=-1)  # (B, d) the gate's ranking, as KHotGate
        blocked = z == 0 if args.mask_zero_features else np.zeros_like(z, dtype=bool)  # (B, d)
        scores[blocked] = -np.inf
        k = min(args.k, args.num_features)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (B, k) the k largest, unordered
        gate = np.zeros_like(z)  # (B, d)
        gate[np.arange(batch)[:, None], top] = 1.0  # fancy indexing: cheaper than put_along_axis for one row
        gate[blocked] = 0.0  # rows with fewer than k open features keep only those
        weights = dense * gate[:, :, None]  # (B, d, C) w' = g * w
        logits = (z[:, :, None] * weights).sum(axis=1)  # (B, C) z^T w' (einsum costs more for small shapes)
        return NGSLLOutput(logits=torch.from_numpy(logits), weights=torch.from_numpy(weights),
                           gate=torch.from_numpy(gate), dense_weights=torch.from_numpy(dense))

    def explain(self, x: np.ndarray, z: np.ndarray) -> tuple[NGSLLOutput, SparseExplanation]:
        """The forward output and :func:`ngsll.explain.sparse_explanation` of it, both in numpy: per row the
        answered class (the predicted one for multi-class, else 0) and its at most K open features sorted by
        |z_j w'_j|, open-but-zero ones before closed ones. Shapes as there: (B,) and (B, K) fields."""
        output = self(x, z)
        logits, weights, gate = output.logits.numpy(), output.weights.numpy(), output.gate.numpy()
        z = z.astype(np.float32, copy=False)
        rows = np.arange(len(z))
        answered = logits.argmax(axis=1) if self.args.task == "multiclass" else np.zeros(len(z), dtype=np.int64)
        class_weights = weights[rows, :, answered]  # (B, d)
        contributions = z * class_weights  # (B, d)
        open_gate = gate > 0  # (B, d)
        ranking = np.where(open_gate, np.abs(contributions), -1.0)  # (B, d)
        order = np.argsort(-ranking, axis=1, kind="stable")[:, : min(self.args.k, z.shape[1])]  # (B, K)

        picked = np.stack((class_weights, z, contributions))[:, rows[:, None], order]  # (3, B, K) in one gather
        explanation = SparseExplanation(
            class_index=torch.from_numpy(answered.astype(np.int64)), indices=torch.from_numpy(order),
            weights=torch.from_numpy(picked[0]), values=torch.from_numpy(picked[1]),
            contributions=torch.from_numpy(picked[2]), valid=torch.from_numpy(open_gate[rows[:, None], order]))
        return output, explanation


class NumpyOutputLayer:
    """A generator's last layer in numpy: (B, U) hidden units -> (B, d, C) dense weights.

    Args:
        layer: the torch ``nn.Linear`` to d * C outputs (the paper's layer), or a :class:`LowRankOutput`.
        rows: d, the features of z. columns: C, the outputs per feature.
    """

    def __init__(self, layer: nn.Module, rows: int, columns: int) -> None:
        self.shape = (rows, columns)
        self.bias = as_numpy(layer.bias).reshape(rows, columns)  # (d, C)
        if isinstance(layer, LowRankOutput):
            self.project = as_numpy(layer.project.weight).T.copy()  # (U, r * C) B
            self.row_vectors: np.ndarray | None = as_numpy(layer.row_vectors)  # (d, r) A
        else:
            self.project = as_numpy(layer.weight).T.copy()  # (U, d * C)
            self.row_vectors = None

    def __call__(self, hidden: np.ndarray) -> np.ndarray:
        projected = hidden @ self.project  # (B, r * C) or (B, d * C)
        if self.row_vectors is None:
            return projected.reshape(-1, *self.shape) + self.bias  # (B, d, C)
        projected = projected.reshape(len(hidden), self.row_vectors.shape[1], self.shape[1])  # (B, r, C)
        return np.einsum("jr,brc->bjc", self.row_vectors, projected) + self.bias  # (B, d, C) A[j] . (B h) + bias
