"""NGSLL and its DNN baseline (paper section 3, Figure 1).

``NGSLL.forward(x, z)`` reads the original input ``x`` (an image, or a sentence as token ids) with a
weight generator network (WGN), gates
the generated weights with the K-HGM and predicts ``logits_c = z^T (g * w_c)``. It returns the logits
**and** the sparse weights, so every prediction carries its explanation.

Tasks:
    * ``binary``: one output (C = 1), logistic loss on the logit.
    * ``multiclass``: the WGN emits a d x C matrix; the gate ranks features by sum_c w_c^2.
    * ``regression``: one real output (C = 1), squared loss.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, NamedTuple

import torch
from torch import nn

from ngsll.errors import ConfigError, InputError
from ngsll.gate import KHotGate, validate_k, validate_tau
from ngsll.generators import build_generator

TASKS = ("binary", "multiclass", "regression")
MODEL_KINDS = ("ngsll", "dnn")
INPUT_KINDS = ("image", "text", "table")


@dataclass
class ModelArgs:
    """Everything needed to rebuild a model; stored in checkpoints as a plain dict.

    Defaults follow the paper's MNIST setting; ``input_kind="text"`` switches the WGN to the sentence CNN
    (``vocab_size`` token ids, ``embedding_dim``, ``filter_widths`` x ``filter_maps``, ``dropout``), and the
    image fields are then unused; ``input_kind="table"`` to an MLP over a row's ``numeric_inputs`` numbers
    and its categorical codes (``category_sizes``), each embedded in ``embedding_dim`` dimensions.
    """

    kind: str = "ngsll"  # "ngsll" or "dnn" (the non-interpretable baseline)
    task: str = "binary"  # "binary", "multiclass" or "regression"
    num_classes: int = 2  # classes for classification; 1 for regression
    num_features: int = 49  # d, size of the simplified input z
    image_size: int = 28  # height H of the original image x (its side when image_width is 0)
    image_width: int = 0  # width W of x; 0: square (W = H)
    in_channels: int = 1  # 1 (grayscale) or 3 (RGB)
    conv_channels: list[int] = field(default_factory=lambda: [32, 32, 64])  # three conv blocks
    hidden_layers: int = 1  # L fully connected layers of U units before the output layer
    hidden_units: int = 256  # U
    output_rank: int = 0  # NGSLL: 0 = the paper's full linear output layer; r > 0 = factorised through r per feature
    k: int = 10  # features kept by the gate
    tau: float = 1.0  # Gumbel-softmax temperature in training
    use_gate: bool = True  # False: the "NGSLL without K-HGM" ablation (dense in training)
    mask_zero_features: bool = True  # mask m_j = 1 where z_j == 0
    input_kind: str = "image"  # "image" (x: (B, C_in, H, W) floats) or "text" (x: (B, T) token ids)
    vocab_size: int = 0  # text: token ids in [0, vocab_size), 0 = padding, 1 = unknown word
    embedding_dim: int = 300  # text: word vector size
    filter_widths: list[int] = field(default_factory=lambda: [3, 4, 5])  # text: convolution widths
    filter_maps: int = 100  # text: feature maps per width
    dropout: float = 0.5  # text: dropout on the pooled sentence features; table: on the embedded row
    word_dropout: float = 0.0  # text: probability a word is read as the unknown word in training
    numeric_inputs: int = 0  # table: leading x columns that are numbers (standardised values, missing flags)
    category_sizes: list[int] = field(default_factory=list)  # table: codes per categorical column (0: missing)

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ConfigError(f"model kind must be one of {MODEL_KINDS}, got {self.kind!r}")
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.task == "multiclass" and self.num_classes < 3:
            raise ConfigError(f"multiclass needs num_classes >= 3, got {self.num_classes}; use task='binary'")
        if self.task == "binary" and self.num_classes != 2:
            raise ConfigError(f"binary needs num_classes == 2, got {self.num_classes}")
        if self.num_features < 1:
            raise ConfigError(f"num_features must be >= 1, got {self.num_features}")
        if self.output_rank < 0:
            raise ConfigError(f"output_rank must be 0 (a full output layer) or a rank >= 1, got {self.output_rank}")
        if self.hidden_layers not in (0, 1, 2, 3):
            raise ConfigError(f"hidden_layers (L) must be in 0..3, got {self.hidden_layers}")
        if self.input_kind not in INPUT_KINDS:
            raise ConfigError(f"input_kind must be one of {INPUT_KINDS}, got {self.input_kind!r}")
        if self.input_kind == "text" and self.vocab_size < 3:
            raise ConfigError(f"text models need vocab_size >= 3 (padding, unknown, words), got {self.vocab_size}")
        if self.input_kind == "table" and (self.numeric_inputs < 0 or any(size < 2 for size in self.category_sizes)
                                           or self.numeric_inputs + len(self.category_sizes) < 1):
            raise ConfigError(f"table models need numeric_inputs >= 0 and category sizes >= 2 (code 0 and at least "
                              f"one category), at least one column; got {self.numeric_inputs}, {self.category_sizes}")
        validate_k(self.k, self.num_features)
        validate_tau(self.tau)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C_in, H, W) of an image model's original input x."""
        return self.in_channels, self.image_size, self.image_width or self.image_size

    @property
    def table_width(self) -> int:
        """Columns of a table model's x: the numbers, then one code per categorical column."""
        return self.numeric_inputs + len(self.category_sizes)

    @property
    def num_outputs(self) -> int:
        """C: 1 for binary and regression, the class count for multi-class."""
        return self.num_classes if self.task == "multiclass" else 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelArgs:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown model arguments {sorted(unknown)}; accepted: {sorted(known)}")
        return cls(**values)


class NGSLLOutput(NamedTuple):
    """What an NGSLL forward pass returns.

    logits: (B, C) prediction, ``z^T w'`` per output.
    weights: (B, d, C) sparse gated weights w' = g * w (the explanation).
    gate: (B, d) gate g (0/1 in evaluation).
    dense_weights: (B, d, C) weights w before gating.
    """

    logits: torch.Tensor
    weights: torch.Tensor
    gate: torch.Tensor
    dense_weights: torch.Tensor


def check_inputs(x: torch.Tensor, z: torch.Tensor, args: ModelArgs) -> None:
    """Raise :class:`InputError` unless ``z`` is finite (B, d) and ``x`` is (B, C_in, H, W) finite pixels
    (images), (B, T) integer token ids in [0, vocab_size) (text) or (B, numbers + categorical) finite values
    whose categorical part holds integer codes below each column's size (tables)."""
    if args.input_kind == "table":
        check_table_inputs(x, args)
    elif args.input_kind == "text":
        if x.dim() != 2 or x.shape[1] < 1 or x.dtype not in (torch.int64, torch.int32):
            raise InputError(f"x must be (B, T) integer token ids with T >= 1, got {tuple(x.shape)} {x.dtype}")
        if x.numel() and (x.min() < 0 or x.max() >= args.vocab_size):
            raise InputError(f"token ids must lie in [0, {args.vocab_size}), got {x.min().item()}..{x.max().item()}")
    else:
        expected_x = args.image_shape
        if x.dim() != 4 or tuple(x.shape[1:]) != expected_x:
            raise InputError(f"x must have shape (B, {', '.join(map(str, expected_x))}), got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise InputError("x contains NaN or infinite values; pixels must be finite numbers in [0, 1]")
    if z.dim() != 2 or z.shape[1] != args.num_features:
        raise InputError(f"z must have shape (B, {args.num_features}), got {tuple(z.shape)}")
    if x.shape[0] != z.shape[0]:
        raise InputError(f"x and z must hold the same number of samples, got {x.shape[0]} and {z.shape[0]}")
    if not torch.isfinite(z).all():
        raise InputError("z contains NaN or infinite values; the simplified input must be finite")


def check_table_inputs(x: torch.Tensor, args: ModelArgs) -> None:
    """Raise :class:`InputError` unless ``x`` is (B, numeric_inputs + categorical) finite floats with codes
    in [0, size) of each categorical column."""
    if x.dim() != 2 or x.shape[1] != args.table_width or not x.is_floating_point():
        raise InputError(f"x must be (B, {args.table_width}) floats (numbers, then category codes), "
                         f"got {tuple(x.shape)} {x.dtype}")
    if not torch.isfinite(x).all():
        raise InputError("x contains NaN or infinite values; missing values are imputed before x is built")
    codes = x[:, args.numeric_inputs:]  # (B, categorical)
    sizes = torch.as_tensor(args.category_sizes, dtype=x.dtype, device=x.device)  # (categorical,)
    if codes.numel() and ((codes != codes.round()).any() or (codes < 0).any() or (codes >= sizes).any()):
        raise InputError(f"the category codes of x must be integers in [0, size) for sizes {args.category_sizes}")


class NGSLL(nn.Module):
    """Neural generator of sparse local linear models.

    Args:
        args: a :class:`ModelArgs` with ``kind == "ngsll"``.
    """

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.generator = build_generator(args, out_features=args.num_features * args.num_outputs)
        self.gate = KHotGate(args.k, args.tau)

    def set_gate(self, k: int, tau: float) -> None:
        """Switch K and tau (the coarse-to-fine step) and record them in ``args``."""
        validate_k(k, self.args.num_features)
        self.gate.k, self.gate.tau = k, validate_tau(tau)
        self.args.k, self.args.tau = k, self.gate.tau

    def feature_mask(self, z: torch.Tensor) -> torch.Tensor:
        """(B, d) bool mask m: True where z_j == 0 (if configured), i.e. the feature carries no evidence."""
        if self.args.mask_zero_features:
            return z == 0
        return torch.zeros_like(z, dtype=torch.bool)

    def forward(self, x: torch.Tensor, z: torch.Tensor, mask: torch.Tensor | None = None) -> NGSLLOutput:
        """Predict and explain.

        Args:
            x: (B, C_in, H, W) original images scaled to [0, 1], (B, T) token ids for text, or (B, numbers +
                categorical) rows for tables.
            z: (B, d) simplified inputs.
            mask: optional (B, d) bool; defaults to :meth:`feature_mask`.
        """
        check_inputs(x, z, self.args)
        if mask is None:
            mask = self.feature_mask(z)  # (B, d)
        elif mask.shape != z.shape:
            raise InputError(f"mask must have the shape of z {tuple(z.shape)}, got {tuple(mask.shape)}")
        batch = z.shape[0]
        dense = self.generator(x).view(batch, self.args.num_features, self.args.num_outputs)  # (B, d, C)
        if self.training and not self.args.use_gate:
            gate = torch.ones_like(z)  # (B, d) the ablation trains dense weights
        else:
            gate = self.gate(dense, mask.bool())  # (B, d)
        weights = dense * gate.unsqueeze(-1)  # (B, d, C) w' = g * w
        logits = torch.einsum("bd,bdc->bc", z, weights)  # (B, C) z^T w'
        return NGSLLOutput(logits=logits, weights=weights, gate=gate, dense_weights=dense)


class DNNClassifier(nn.Module):
    """The non-interpretable baseline: the same CNN, whose last layer outputs the C logits directly.

    ``forward(x, z)`` accepts and ignores ``z`` so every model shares one call signature.
    """

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.generator = build_generator(args, out_features=args.num_outputs)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Return (B, C) logits for (B, C_in, H, W) images or (B, T) token ids."""
        if z is None:
            z = torch.zeros(x.shape[0], self.args.num_features, device=x.device)
        check_inputs(x, z, self.args)
        return self.generator(x)  # (B, C)


def build_model(model_args: ModelArgs | dict[str, Any]) -> NGSLL | DNNClassifier:
    """Build an untrained model from :class:`ModelArgs` or its dict form (as stored in checkpoints)."""
    args = model_args if isinstance(model_args, ModelArgs) else ModelArgs.from_dict(dict(model_args))
    return NGSLL(args) if args.kind == "ngsll" else DNNClassifier(args)
