"""Weight generator networks (WGN): read the original input, emit dense weights.

* Images (paper section 4.1, MNIST): three blocks of convolution -> ReLU -> max pooling, then L fully
  connected layers of U units (ReLU) and a linear output layer.
* Text (section 4.2): the sentence CNN of Kim (2014) trained from scratch: word embedding, one 1-D
  convolution per filter width (3/4/5, 100 maps each), ReLU, max-over-time pooling, dropout, then the same
  L fully connected layers. Optional word dropout: in training, each word is read as the unknown word with
  a given probability, so the network cannot lean on a rare word it has memorised.

* Tables: each categorical code embedded (one table of vectors per column), concatenated with the row's
  numbers, dropout, then the same L fully connected layers.

The DNN baseline uses the same network with a different output size. :func:`build_generator` picks the
network a model's arguments describe.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ngsll.errors import ConfigError
from ngsll.text import PAD_ID, UNKNOWN_ID  # token ids of padding and of the unknown word in text inputs


class LowRankOutput(nn.Module):
    """A linear output layer to a (rows x columns) matrix whose weight is factorised through ``rank``.

    ``w[b, j, c] = sum_r A[j, r] * (B h_b)[r, c] + bias[j, c]``: each row j (a feature of z) has an
    r-vector ``A[j]`` instead of its own ``columns x in_features`` slice of a full layer's weight, so features
    seen in few training samples share what the others teach ``B``. It is still linear in ``h``, with a
    weight of rank at most ``rank * columns``; ``bias`` stays full (one weight per feature and column that
    does not depend on the input).

    Every ``A[j]`` starts at one common vector (``1/sqrt(rank)`` in each entry) plus a tenth of that in
    uniform noise: at the start the input-dependent part of every feature's weights is nearly the same, one
    prediction from the whole input, and each feature's ``A[j]`` moves away from it only as far as its
    training samples ask. A word seen in three training sentences thus keeps a sentence-level weight instead
    of a random one. ``bias`` starts as ``nn.Linear``'s does.

    Args:
        in_features: size of h.
        rows: d, the features of z.
        columns: C, the outputs per feature.
        rank: r, the size of each feature's vector.

    ``forward``: (B, in_features) -> (B, rows * columns), laid out as ``(B, rows, columns).flatten(1)``.
    """

    def __init__(self, in_features: int, rows: int, columns: int, rank: int) -> None:
        super().__init__()
        if rank < 1 or rows < 1 or columns < 1:
            raise ConfigError(f"output_rank, rows and columns must be >= 1, got {rank}, {rows}, {columns}")
        self.rows, self.columns, self.rank = rows, columns, rank
        self.project = nn.Linear(in_features, rank * columns, bias=False)  # B
        common = 1 / math.sqrt(rank)
        noise = torch.empty(rows, rank).uniform_(-0.1 * common, 0.1 * common)  # (rows, rank)
        self.row_vectors = nn.Parameter(common + noise)  # A: (rows, rank)
        bound = 1 / math.sqrt(in_features)  # as nn.Linear initialises its bias
        self.bias = nn.Parameter(torch.empty(rows, columns).uniform_(-bound, bound))  # (rows, columns)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        projected = self.project(hidden).view(-1, self.rank, self.columns)  # (B, r, C)
        weights = torch.einsum("jr,brc->bjc", self.row_vectors, projected) + self.bias  # (B, rows, C)
        return weights.flatten(1)  # (B, rows * C)


def mlp_head(in_features: int, hidden_layers: int, hidden_units: int, out_features: int,
             output_rank: int = 0, output_rows: int = 1) -> nn.Sequential:
    """L fully connected ReLU layers of U units followed by a linear layer to ``out_features``.

    ``output_rank`` > 0 makes that last layer a :class:`LowRankOutput` to ``output_rows`` x
    (``out_features`` / ``output_rows``) of that rank; 0 (default) a full ``nn.Linear``.
    """
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(hidden_layers):
        layers += [nn.Linear(width, hidden_units), nn.ReLU()]
        width = hidden_units
    if output_rank > 0:
        layers.append(LowRankOutput(width, output_rows, out_features // output_rows, output_rank))
    else:
        layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def output_factoring(args: Any) -> dict[str, int]:
    """``mlp_head``'s ``output_rank`` / ``output_rows`` for a model: NGSLL's d x C weights take the model's
    ``output_rank``; the DNN's C logits always get a full linear layer."""
    if args.kind == "ngsll" and args.output_rank > 0:
        return {"output_rank": args.output_rank, "output_rows": args.num_features}
    return {}


MAX_POOLED_SIDE = 4  # the conv features reach the MLP head as at most 4 x 4 maps, whatever the image size


class ImageWeightGenerator(nn.Module):
    """Three conv blocks and an MLP head: (B, C_in, H, W) images -> (B, out_features).

    Each block halves the map; when a side is still above :data:`MAX_POOLED_SIDE` after the three blocks
    (images larger than 39 pixels), an adaptive max pooling brings it down to that, so the head's size does
    not grow with the image. At 28 x 28 (3 x 3 maps) there is no such pooling: the paper's network exactly.

    Args:
        in_channels: image channels (1 for MNIST, 3 for RGB).
        image_size: height H of the input (28 for MNIST).
        conv_channels: output channels of the three conv blocks (3x3 kernels, padding 1, 2x2 pooling).
        hidden_layers: L, number of hidden fully connected layers.
        hidden_units: U, their width.
        out_features: d * C for NGSLL, C for the DNN baseline.
        image_width: width W of the input (default: H, a square image).
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        conv_channels: Sequence[int],
        hidden_layers: int,
        hidden_units: int,
        out_features: int,
        image_width: int | None = None,
        output_rank: int = 0,
        output_rows: int = 1,
    ) -> None:
        super().__init__()
        if len(conv_channels) != 3:
            raise ConfigError(f"conv_channels must list 3 channel counts (one per block), got {list(conv_channels)}")
        blocks: list[nn.Module] = []
        channels, height, width = in_channels, image_size, image_width or image_size
        for out_channels in conv_channels:
            blocks += [nn.Conv2d(channels, out_channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            channels, height, width = out_channels, height // 2, width // 2
        if min(height, width) < 1:
            raise ConfigError(f"an image of {image_size}x{image_width or image_size} pixels is too small for three "
                              "2x2 poolings; use a size of at least 8x8")
        if max(height, width) > MAX_POOLED_SIDE:
            height, width = min(height, MAX_POOLED_SIDE), min(width, MAX_POOLED_SIDE)
            blocks.append(nn.AdaptiveMaxPool2d((height, width)))
        self.features = nn.Sequential(*blocks, nn.Flatten())
        self.head = mlp_head(channels * height * width, hidden_layers, hidden_units, out_features, output_rank,
                             output_rows)

    @classmethod
    def for_model(cls, args: Any, out_features: int) -> ImageWeightGenerator:
        """The generator described by a model's :class:`ngsll.model.ModelArgs`, with ``out_features`` outputs."""
        return cls(
            in_channels=args.in_channels,
            image_size=args.image_size,
            image_width=args.image_width or args.image_size,
            conv_channels=args.conv_channels,
            hidden_layers=args.hidden_layers,
            hidden_units=args.hidden_units,
            out_features=out_features,
            **output_factoring(args),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, out_features)


class SentenceCNNGenerator(nn.Module):
    """Kim's sentence CNN and an MLP head: (B, T) int64 token ids -> (B, out_features).

    Args:
        vocab_size: token ids in [0, vocab_size); id 0 is padding (a zero embedding).
        embedding_dim: word vector size (300 in Kim 2014).
        filter_widths: convolution widths in tokens (3, 4, 5).
        filter_maps: feature maps per width (100).
        dropout: dropout rate on the pooled features (0.5).
        hidden_layers / hidden_units / out_features: as in :class:`ImageWeightGenerator`.
        word_dropout: in training mode, the probability that a (non-padding) token is replaced by the unknown
            word before the embedding (default 0: off); evaluation never drops words.

    Sentences shorter than the widest filter are padded on the fly, so any T >= 1 is accepted.
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        filter_widths: Sequence[int],
        filter_maps: int,
        dropout: float,
        hidden_layers: int,
        hidden_units: int,
        out_features: int,
        word_dropout: float = 0.0,
        output_rank: int = 0,
        output_rows: int = 1,
    ) -> None:
        super().__init__()
        if not filter_widths or min(filter_widths) < 1 or filter_maps < 1 or embedding_dim < 1:
            raise ConfigError(
                f"filter_widths must list widths >= 1 and filter_maps, embedding_dim must be >= 1, got "
                f"{list(filter_widths)}, {filter_maps}, {embedding_dim}"
            )
        if not 0 <= dropout < 1 or not 0 <= word_dropout < 1:
            raise ConfigError(f"dropout and word_dropout must lie in [0, 1), got {dropout} and {word_dropout}")
        self.word_dropout = word_dropout
        self.min_length = max(filter_widths)
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD_ID)
        self.convolutions = nn.ModuleList(nn.Conv1d(embedding_dim, filter_maps, width) for width in filter_widths)
        self.dropout = nn.Dropout(dropout)
        self.head = mlp_head(filter_maps * len(filter_widths), hidden_layers, hidden_units, out_features,
                             output_rank, output_rows)

    @classmethod
    def for_model(cls, args: Any, out_features: int) -> SentenceCNNGenerator:
        """The generator described by a text model's :class:`ngsll.model.ModelArgs`, with ``out_features`` outputs."""
        return cls(
            vocab_size=args.vocab_size,
            embedding_dim=args.embedding_dim,
            filter_widths=args.filter_widths,
            filter_maps=args.filter_maps,
            dropout=args.dropout,
            hidden_layers=args.hidden_layers,
            hidden_units=args.hidden_units,
            out_features=out_features,
            word_dropout=args.word_dropout,
            **output_factoring(args),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.training and self.word_dropout > 0:
            dropped = (torch.rand(tokens.shape, device=tokens.device) < self.word_dropout) & (tokens != PAD_ID)
            tokens = tokens.masked_fill(dropped, UNKNOWN_ID)  # (B, T)
        if tokens.shape[1] < self.min_length:
            tokens = nn.functional.pad(tokens, (0, self.min_length - tokens.shape[1]), value=PAD_ID)  # (B, T')
        embedded = self.embedding(tokens).transpose(1, 2)  # (B, E, T)
        pooled = [torch.relu(conv(embedded)).amax(dim=-1) for conv in self.convolutions]  # widths x (B, maps)
        return self.head(self.dropout(torch.cat(pooled, dim=-1)))  # (B, out_features)


class TableWeightGenerator(nn.Module):
    """Embedded categories and numbers into an MLP head: (B, numeric_inputs + categorical) -> (B, out_features).

    Args:
        numeric_inputs: leading columns of x taken as numbers.
        category_sizes: codes of each following categorical column (code 0: missing or unknown); all columns'
            codes share one embedding table, each column at its own offset.
        embedding_dim: vector size per category.
        dropout: dropout rate on the concatenated row.
        hidden_layers / hidden_units / out_features: as in :class:`ImageWeightGenerator`.
    """

    def __init__(self, numeric_inputs: int, category_sizes: Sequence[int], embedding_dim: int, dropout: float,
                 hidden_layers: int, hidden_units: int, out_features: int, output_rank: int = 0,
                 output_rows: int = 1) -> None:
        super().__init__()
        if embedding_dim < 1 or not 0 <= dropout < 1:
            raise ConfigError(f"embedding_dim must be >= 1 and dropout in [0, 1), got {embedding_dim}, {dropout}")
        self.numeric_inputs = numeric_inputs
        offsets = torch.tensor([0, *list(category_sizes)[:-1]], dtype=torch.long).cumsum(0)[: len(category_sizes)]
        self.register_buffer("offsets", offsets, persistent=False)  # (categorical,)
        self.embedding = nn.Embedding(max(1, sum(category_sizes)), embedding_dim)
        self.dropout = nn.Dropout(dropout)
        self.head = mlp_head(numeric_inputs + embedding_dim * len(category_sizes), hidden_layers, hidden_units,
                             out_features, output_rank, output_rows)

    @classmethod
    def for_model(cls, args: Any, out_features: int) -> TableWeightGenerator:
        """The generator described by a table model's :class:`ngsll.model.ModelArgs`."""
        return cls(args.numeric_inputs, args.category_sizes, args.embedding_dim, args.dropout, args.hidden_layers,
                   args.hidden_units, out_features, **output_factoring(args))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        numbers = x[:, : self.numeric_inputs]  # (B, numeric_inputs)
        codes = x[:, self.numeric_inputs:].long() + self.offsets  # (B, categorical) rows of the shared table
        embedded = self.embedding(codes).flatten(1)  # (B, categorical * E)
        return self.head(self.dropout(torch.cat([numbers, embedded], dim=1)))  # (B, out_features)


def build_generator(args: Any, out_features: int) -> ImageWeightGenerator | SentenceCNNGenerator | TableWeightGenerator:
    """The generator a model's :class:`ngsll.model.ModelArgs` describe, with ``out_features`` outputs."""
    if args.input_kind == "table":
        return TableWeightGenerator.for_model(args, out_features)
    if args.input_kind == "text":
        return SentenceCNNGenerator.for_model(args, out_features)
    return ImageWeightGenerator.for_model(args, out_features)
