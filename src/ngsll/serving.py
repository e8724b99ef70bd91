"""Framework-free serving logic: decode requests, run one batched forward pass, encode answers.

A server adapter (the TorchServe handler in ``handlers/``, the MLflow pyfunc, or any other) only moves
bytes: it hands the request bodies of a whole batch to :meth:`Service.respond` and writes back what comes
out, one ``(status, payload)`` per request. Bad requests raise :class:`RequestError` inside, whose
``payload()`` is the 400 body ``{"error": ..., "accepted": ...}``; they never affect the rest of the batch.
:func:`load_service` picks the service a checkpoint needs (the model archive says which through its
``model_args.input_kind``).

Accepted request bodies for image models (:class:`ImageService`):
    * raw PNG/JPEG bytes of any size up to ``max_pixels`` (read from the image header before anything is
      decoded, so a decompression bomb costs nothing): converted as training converted the dataset's images
      (the archive's image spec: grayscale or RGB, resized to its height x width) and, for MNIST-like
      datasets, inverted when the background is light (mean above mid-grey) so ink is bright;
    * JSON ``{"image": H x W (grayscale) or H x W x 3 (RGB) nested list}`` with values in 0-1 or 0-255;
    * the KServe v1 envelope ``{"instances": [...]}`` whose items are either of the two above
      (a PNG/JPEG as ``{"b64": "..."}``) or a bare list; it is answered as ``{"predictions": [...]}``.

Accepted request bodies for text models (:class:`TextService`):
    * a raw UTF-8 body: the sentence itself (a body starting with ``{`` or ``[`` is read as JSON);
    * JSON ``{"text": "..."}``;
    * the KServe v1 envelope ``{"instances": [...]}`` of ``{"text": ...}`` objects or bare strings.
    A sentence without any non-space character is a bad request; a sentence whose words are all
    stopwords or unknown is answered from zero evidence with an empty weight list.

Accepted request bodies for table models (:class:`TableService`):
    * a JSON record ``{"age": 35, "housing": "own", ...}`` holding every input column and no other (the
      label column may be sent; it is ignored), numbers as JSON numbers, categories as strings, ``null``
      for a missing value where the dataset's missing-value policy imputes;
    * the KServe v1 envelope ``{"instances": [...]}`` of such records.
    A record with a missing or unknown column, a wrong type or a category not seen in training is a bad
    request whose message names the column.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ngsll.capture import CaptureSink
from ngsll.checkpoint import model_from_checkpoint
from ngsll.errors import ConfigError, NGSLLError
from ngsll.explain import (
    SparseExplanation, answers_from_output, class_probabilities, predict_labels, sparse_explanation,
)
from ngsll.model import NGSLL, NGSLLOutput
from ngsll.numpy_table import NumpyTableModel
from ngsll.simplify import image_inputs
from ngsll.table import RecordError, TableEncoder
from ngsll.target import TargetScale
from ngsll.text import TextEncoder, tokenize

ACCEPTED_IMAGE = (
    "PNG or JPEG bytes (at most {max_pixels} pixels); JSON {{\"image\": {shape} nested list of numbers in 0-1 or "
    "0-255}}; or the KServe v1 envelope {{\"instances\": [...]}} of such images (PNG/JPEG as {{\"b64\": ...}})"
)
ACCEPTED_TEXT = (
    "a UTF-8 sentence as the raw body; JSON {\"text\": \"...\"}; or the KServe v1 envelope "
    "{\"instances\": [...]} of {\"text\": ...} objects or strings"
)
DEFAULT_MAX_BYTES = 1 << 20
DEFAULT_MAX_INSTANCES = 256
# 16.8 megapixels (a 4096 x 4096 photo): the largest image decoded. A larger one is refused from its header.
DEFAULT_MAX_PIXELS = 4096 * 4096


EXPLANATION_FIELDS = ("class_weights", "weight_map", "token_weights")
# Open Inference Protocol outputs of :meth:`Service.tensors`: (name, datatype, one entry per explained feature)
OUTPUT_TENSORS = (
    ("label", "BYTES", False), ("probabilities", "FP32", False), ("logit", "FP32", False),
    ("feature_index", "INT64", True), ("feature_name", "BYTES", True), ("weight", "FP32", True),
    ("value", "FP32", True), ("contribution", "FP32", True),
)


class RequestError(NGSLLError, ValueError):
    """A request the service cannot answer; maps to HTTP ``status`` (400, or 413 for a body over the size
    limit) with :meth:`payload` as the body.

    ``accepted`` (what the service takes) is filled in by the service that raised it when not given.
    """

    def __init__(self, error: str, accepted: str | None = None, status: int = 400) -> None:
        super().__init__(error)
        self.error, self.accepted, self.status = error, accepted, status

    def payload(self) -> dict[str, str]:
        return {"error": self.error, "accepted": self.accepted or ""}


@dataclass
class DecodedRequest:
    """The samples of one request and whether it came as a KServe envelope.

    inputs: (n, 28, 28) float32 images in [0, 1] (image models) or n sentences (text models).
    """

    inputs: np.ndarray | list[str]
    envelope: bool

    def __len__(self) -> int:
        return len(self.inputs)


class Service(ABC):
    """What every NGSLL service shares: body checks, JSON and the KServe envelope, batched answers.

    A subclass says how a raw (non-JSON) body and one JSON instance become a sample (``_raw``,
    ``_instance``), how samples of several requests join (``_join``) and how a batch of samples is
    answered (:meth:`answer`).

    Args:
        model: a trained :class:`NGSLL` (put in evaluation mode here).
        feature_names: d names of the simplified features (``r3c4`` cells, words).
        class_names: class names (``["0-4", "5-9"]``).
        max_bytes: largest request body accepted (default 1 MiB).
    """

    accepted = ""

    def __init__(
        self, model: NGSLL, feature_names: list[str], class_names: list[str], max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        if not isinstance(model, NGSLL):
            raise TypeError(f"{type(self).__name__} serves NGSLL models, got {type(model).__name__}")
        if len(feature_names) != model.args.num_features:
            raise ConfigError(f"the model has {model.args.num_features} features but {len(feature_names)} names")
        self.model = model.eval()
        self.feature_names, self.class_names = list(feature_names), list(class_names)
        self.max_bytes = max_bytes
        self.target: TargetScale | None = None  # a regression model's target scale (load_service sets it)
        self.device = next(model.parameters()).device
        self.capture: CaptureSink | None = None  # set by a server: every answered batch is offered to it

    def decode(self, body: bytes | bytearray | str | dict | list | None) -> DecodedRequest:
        """Turn one request body (bytes, text or already-parsed JSON) into samples; raise :class:`RequestError`."""
        try:
            return self._decode(body)
        except RequestError as error:
            error.accepted = error.accepted or self.accepted
            raise

    def _decode(self, body: Any) -> DecodedRequest:
        if body is None or (isinstance(body, (bytes, bytearray, str)) and len(body) == 0):
            raise RequestError("the request body is empty")
        if isinstance(body, (bytes, bytearray, str)) and len(body) > self.max_bytes:
            raise RequestError(f"the request body has {len(body)} bytes; the limit is {self.max_bytes}", status=413)
        if isinstance(body, (bytes, bytearray, str)):
            raw = body.encode() if isinstance(body, str) else bytes(body)
            if raw.lstrip()[:1] not in (b"{", b"["):
                return DecodedRequest(self._join([self._raw(raw)]), envelope=False)
            body = _parse_json(raw)
        if isinstance(body, dict) and "instances" in body:
            instances = body["instances"]
            if not isinstance(instances, list) or not instances:
                raise RequestError("\"instances\" must be a non-empty list")
            if len(instances) > DEFAULT_MAX_INSTANCES:
                raise RequestError(f"at most {DEFAULT_MAX_INSTANCES} instances per request, got {len(instances)}")
            return DecodedRequest(self._join([self._instance(item) for item in instances]), envelope=True)
        return DecodedRequest(self._join([self._instance(body)]), envelope=False)

    @abstractmethod
    def _raw(self, body: bytes) -> Any:
        """One sample from a body that is not JSON."""

    @abstractmethod
    def _instance(self, item: Any) -> Any:
        """One sample from a parsed JSON request or envelope item."""

    @abstractmethod
    def _join(self, samples: list[Any]) -> np.ndarray | list[str]:
        """Samples (single ones or whole requests' inputs) as one batch."""

    @abstractmethod
    def answer(self, inputs: Any, explain: bool = False) -> list[dict[str, Any]]:
        """One answer per sample of a batch, from one forward pass."""

    @abstractmethod
    def simplified(self, inputs: Any) -> tuple[np.ndarray, np.ndarray]:
        """(n, ...) model inputs x and (n, d) simplified inputs z of a batch of samples."""

    @abstractmethod
    def from_tensor(self, datatype: str, shape: list[int], values: np.ndarray) -> np.ndarray | list[str]:
        """The samples of one Open Inference Protocol input tensor; raise :class:`RequestError`."""

    @abstractmethod
    def input_tensors(self) -> list[dict[str, Any]]:
        """The Open Inference Protocol input tensors this service takes (``name``, ``datatype``, ``shape``)."""

    def output_tensors(self) -> list[dict[str, Any]]:
        """The Open Inference Protocol output tensors :meth:`tensors` answers with (``name``, ``datatype``,
        ``shape``; -1 is the batch dimension)."""
        k, classes = self.model.args.k, len(self.class_names) if self.model.args.task != "regression" else 0
        return [{"name": name, "datatype": datatype, "shape": [-1, *([classes] if name == "probabilities" else
                                                                     [k] if per_feature else [])]}
                for name, datatype, per_feature in OUTPUT_TENSORS]

    def decode_tensor(self, datatype: str, shape: list[int], values: np.ndarray) -> np.ndarray | list[str]:
        """The samples of one Open Inference Protocol input tensor (see the subclass's ``from_tensor``),
        at most :data:`DEFAULT_MAX_INSTANCES` of them; raise :class:`RequestError` saying what is accepted."""
        try:
            if not shape or shape[0] < 1:
                raise RequestError(f"an input tensor needs a batch dimension of at least 1, got shape {shape}")
            if shape[0] > DEFAULT_MAX_INSTANCES:
                raise RequestError(f"at most {DEFAULT_MAX_INSTANCES} samples per request, got {shape[0]}")
            return self.from_tensor(datatype, shape, values)
        except RequestError as error:
            error.accepted = error.accepted or self.accepted_tensors
            raise

    @property
    def accepted_tensors(self) -> str:
        """What :meth:`decode_tensor` takes, as a 400 body's ``accepted``."""
        return "one input tensor: " + "; or ".join(f"{t['name']} {t['datatype']} {t['shape']}"
                                                   for t in self.input_tensors())

    def respond_tensors(self, requests: list[Any]) -> list[dict[str, np.ndarray]]:
        """:meth:`tensors` for the decoded inputs of several requests in one forward pass, split per request."""
        ends = np.cumsum([len(inputs) for inputs in requests])[:-1]
        arrays = self.tensors(self._join(requests))
        if self.capture is not None:
            self.capture.offer_tensors(arrays)
        parts = {name: np.split(array, ends) for name, array in arrays.items()}
        return [{name: part[i] for name, part in parts.items()} for i in range(len(requests))]

    def tensors(self, inputs: Any) -> dict[str, np.ndarray]:
        """The answers of a batch of n samples as arrays, from one forward pass (no loop per sample).

        ``label`` (n,) object (class name, or the value for regression), ``probabilities`` (n, C) float32
        (C = 0 for regression), ``logit`` (n,) float32 (the answered class's logit, see
        :func:`ngsll.explain.answered_class`), and the explanation sorted by |contribution|:
        ``feature_index`` (n, K) int64, ``feature_name`` (n, K) object, ``weight``, ``value`` and
        ``contribution`` (n, K) float32, padded with -1 / "" / 0 where a sample has fewer than K features.
        Also ``class_index`` (n,) int64, the predicted class (for capture; not an Open Inference output).
        """
        output, z_t, explanation = self._explained(*self.simplified(inputs))  # explanation: (n, K) fields
        args = self.model.args
        valid = explanation.valid.cpu().numpy()  # (n, K)
        index = np.where(valid, explanation.indices.cpu().numpy(), -1)  # (n, K)
        names = np.asarray([*self.feature_names, ""], dtype=object)  # index -1 picks ""
        answered_logit = output.logits.gather(1, explanation.class_index[:, None])[:, 0]  # (n,)
        probabilities = class_probabilities(output.logits, args.task)  # (n, C) or None
        if args.task == "regression":
            values = answered_logit.cpu().numpy().astype(np.float64)  # (n,) standardised
            values = self.target.restore(values) if self.target is not None else values
            labels = np.asarray([str(v) for v in values.tolist()], dtype=object)
            probabilities = torch.zeros(len(z_t), 0)
            predicted = np.zeros(len(z_t), dtype=np.int64)
        else:
            predicted = predict_labels(output.logits, args.task).cpu().numpy().astype(np.int64)  # (n,)
            labels = np.asarray(self.class_names, dtype=object)[predicted]
        padded = {name: np.where(valid, getattr(explanation, field).cpu().numpy(), 0).astype(np.float32)
                  for name, field in (("weight", "weights"), ("value", "values"), ("contribution", "contributions"))}
        return {"label": labels, "class_index": predicted, "probabilities": probabilities.cpu().numpy().astype(np.float32),
                "logit": answered_logit.cpu().numpy().astype(np.float32), "feature_index": index.astype(np.int64),
                "feature_name": names[index], **padded}

    def respond(self, bodies: list[Any], explain: list[bool] | None = None) -> list[tuple[int, Any]]:
        """Answer a batch of requests: one forward pass for all good ones; ``(status, payload)`` each.

        A body may be a :class:`RequestError` the server adapter raised for it already (answered as such).
        ``explain[i]`` asks for the explanation fields on request i (default: none). A bad request gets
        ``(400, {"error", "accepted"})`` (413 for a body over ``max_bytes``) and never affects the others.
        """
        explain = explain or [False] * len(bodies)
        decoded: list[DecodedRequest | RequestError] = []
        for body in bodies:
            try:
                if isinstance(body, RequestError):  # the server adapter already refused it (transport level)
                    raise body
                decoded.append(self.decode(body))
            except RequestError as error:
                error.accepted = error.accepted or self.accepted
                decoded.append(error)
        good = [d for d in decoded if isinstance(d, DecodedRequest)]
        answered = self.answer(self._join([d.inputs for d in good]), explain=any(explain)) if good else []
        if self.capture is not None:
            self.capture.offer(answered)  # one queue put per batch; the sink's thread writes the records
        answers = iter(answered)
        responses: list[tuple[int, Any]] = []
        for item, wants_explanation in zip(decoded, explain):
            if isinstance(item, RequestError):
                responses.append((item.status, item.payload()))
                continue
            mine = [next(answers) for _ in range(len(item))]
            if not wants_explanation:
                mine = [{k: v for k, v in a.items() if k not in EXPLANATION_FIELDS} for a in mine]
            if item.envelope:  # KServe v1: {"predictions": [...]}, or {"explanations": [...]} on :explain
                responses.append((200, {"explanations" if wants_explanation else "predictions": mine}))
            else:
                responses.append((200, mine[0]))
        return responses

    def _on_device(self, x: torch.Tensor) -> torch.Tensor:
        """The model input on the service's device, in the memory layout the model runs fastest in."""
        return x.to(self.device)

    def _explained(self, x: np.ndarray, z: np.ndarray) -> tuple[NGSLLOutput, torch.Tensor, SparseExplanation]:
        """One evaluation-mode forward pass of (n, ...) inputs x and (n, d) z: the output, z on the device and
        the top-K explanation of each answer."""
        x_t = self._on_device(torch.from_numpy(x))  # (n, ...) images or token ids
        z_t = torch.from_numpy(z).to(self.device)  # (n, d)
        with torch.inference_mode():
            output = self.model(x_t, z_t)
            return output, z_t, sparse_explanation(output, z_t, self.model.args.k, self.model.args.task)

    def _forward(self, x: np.ndarray, z: np.ndarray, explain: bool) -> tuple[list[dict[str, Any]], np.ndarray | None]:
        """Answers for one batch and, with ``explain``, (n, d) the answered class's gated weights (else None)."""
        output, z_t, explanation = self._explained(x, z)
        args = self.model.args
        answers = answers_from_output(output, z_t, args.k, args.task, self.feature_names, self.class_names,
                                      self.target, explanation)
        if not explain:
            return answers, None
        weights = output.weights.cpu().numpy()  # (n, d, C)
        multi = weights.shape[2] > 1
        output_name = self.class_names[-1] if self.class_names else self.target.name if self.target else "target"
        names = self.class_names if multi else [f"logit({output_name})"]
        for answer, sample_weights in zip(answers, weights):
            answer["class_weights"] = {
                entry["feature"]: dict(zip(names, sample_weights[entry["index"]].tolist()))
                for entry in answer["weights"]
            }
        columns = [answer["class_index"] if multi else 0 for answer in answers]  # the answered class's column
        return answers, weights[np.arange(len(answers)), :, columns]  # (n, d)


MNIST_SPEC = {"height": 28, "width": 28, "channels": 1, "grid": [7, 7], "cell_values": "luminance",
              "invert_light_background": True}  # archives made before features.json carried an image spec


class ImageService(Service):
    """Serve an image NGSLL model: every answer carries its top-K weights over the image's cells.

    Takes the arguments of :class:`Service`; ``feature_names`` are the cell names (``r3c4``, or
    ``r3c4:red`` for per-channel cells); ``spec`` is the prepared data's image spec (``height``, ``width``,
    ``channels``, ``grid``, ``cell_values``, ``invert_light_background``; default MNIST's), and
    ``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS`) is the largest PNG/JPEG (width x height) decoded.
    A PNG/JPEG of any size and mode is converted as training converted its images: to grayscale or RGB
    (the model's channels), resized to height x width, scaled to [0, 1], and (where the spec says so)
    inverted when its background is light.
    """

    def __init__(
        self, model: NGSLL, feature_names: list[str], class_names: list[str], max_bytes: int = DEFAULT_MAX_BYTES,
        max_pixels: int = DEFAULT_MAX_PIXELS, spec: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(model, feature_names, class_names, max_bytes)
        if model.args.input_kind != "image":
            raise ConfigError(f"ImageService serves image models; this one reads {model.args.input_kind}")
        self.spec = dict(spec or MNIST_SPEC)
        if (self.spec["channels"], self.spec["height"], self.spec["width"]) != model.args.image_shape:
            raise ConfigError(f"the image spec {self.spec} does not match the model's input {model.args.image_shape}")
        self.channels, self.height, self.width = model.args.image_shape
        self.grid = [int(v) for v in self.spec["grid"]]
        self.max_pixels = max_pixels
        self.accepted = ACCEPTED_IMAGE.format(max_pixels=max_pixels, shape=self.list_shape)
        # channels_last: about 1.6x less CNN time per batch on CPU (benchmarks/explain_profile.py), same answers
        self.model = self.model.to(memory_format=torch.channels_last)

    @property
    def list_shape(self) -> str:
        """The nested-list shape JSON images take: HxW (grayscale) or HxWx3 (RGB)."""
        return f"{self.height}x{self.width}" + ("x3" if self.channels == 3 else "")

    def pixels_from_array(self, values: Any) -> np.ndarray:
        """(n, C, H, W) float32 from an array of n images in [0, 1]: (n, H, W) or (n, H*W) grayscale,
        (n, H, W, 3) or (n, 3, H, W) RGB. Raises :class:`RequestError` for any other size."""
        pixels = np.asarray(values, dtype=np.float32)
        count = pixels.shape[0] if pixels.ndim else 0
        if pixels.ndim == 4 and pixels.shape[-1] == self.channels and pixels.shape[1:3] == (self.height, self.width):
            pixels = pixels.transpose(0, 3, 1, 2)  # channels last -> (n, C, H, W)
        if pixels.size != count * self.channels * self.height * self.width:
            raise RequestError(f"images must be {self.list_shape} (or flattened), got an array of shape {list(pixels.shape)}")
        return pixels.reshape(count, self.channels, self.height, self.width)

    def _on_device(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device).contiguous(memory_format=torch.channels_last)  # (n, C, H, W)

    def simplified(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return image_inputs(inputs, self.grid, self.spec["cell_values"])  # (n, C, H, W), (n, d)

    def input_tensors(self) -> list[dict[str, Any]]:
        pixels = [self.height, self.width] + ([3] if self.channels == 3 else [])
        return [{"name": "image", "datatype": "FP32", "shape": [-1, *pixels]},
                {"name": "image", "datatype": "BYTES", "shape": [-1]}]

    def from_tensor(self, datatype: str, shape: list[int], values: np.ndarray) -> np.ndarray:
        """(n, C, H, W) pixels of an input tensor: FP32/FP64 ``[n, H, W]`` (``[n, H, W, 3]`` or
        ``[n, 3, H, W]`` for RGB) in [0, 1], UINT8 of that shape in 0-255, or BYTES ``[n]`` of PNG/JPEG files
        (raw, or base64 text as JSON carries them)."""
        if datatype == "BYTES":
            return self._join([_image_from_bytes(_file_bytes(item), self.spec, self.max_pixels)
                               for item in values.reshape(-1)])
        if datatype not in ("FP32", "FP64", "UINT8"):
            raise RequestError(f"image tensors must be FP32, FP64, UINT8 or BYTES (PNG/JPEG), got {datatype}")
        pixels = values.astype(np.float32) / (255.0 if datatype == "UINT8" else 1.0)
        if not np.isfinite(pixels).all() or pixels.min(initial=0) < 0 or pixels.max(initial=0) > 1:
            raise RequestError("FP32/FP64 pixel values must be finite and lie in [0, 1]")
        return self.pixels_from_array(pixels)

    def _raw(self, body: bytes) -> np.ndarray:
        return _image_from_bytes(body, self.spec, self.max_pixels)

    def _instance(self, item: Any) -> np.ndarray:
        if isinstance(item, dict) and "image" in item:
            return self._from_list(item["image"])
        if isinstance(item, dict) and "b64" in item:
            try:
                raw = base64.b64decode(item["b64"], validate=True)
            except (binascii.Error, TypeError, ValueError) as error:
                raise RequestError(f"\"b64\" is not valid base64 ({error})") from error
            return _image_from_bytes(raw, self.spec, self.max_pixels)
        if isinstance(item, list):
            return self._from_list(item)
        raise RequestError("a JSON request must be {\"image\": [[...]]}, {\"b64\": ...} or {\"instances\": [...]}")

    def _from_list(self, values: Any) -> np.ndarray:
        pixels = _image_from_list(values, self.height, self.width, self.channels)  # (H, W) or (H, W, 3)
        return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # (C, H, W)

    def _join(self, samples: list[np.ndarray]) -> np.ndarray:
        shape = (-1, self.channels, self.height, self.width)
        return np.concatenate([np.asarray(s, dtype=np.float32).reshape(shape) for s in samples])  # (n, C, H, W)

    def answer(self, inputs: np.ndarray, explain: bool = False) -> list[dict[str, Any]]:
        """Answers for (n, C, H, W) images (or (n, H, W) grayscale) in [0, 1] from one batched forward pass
        (see :func:`answers_from_output`).

        With ``explain`` each answer also has ``class_weights`` (every class's weight on each selected
        feature) and ``weight_map``: the answered class's sparse weights as a rows x cols grid (one grid per
        channel, ``[C][rows][cols]``, when z holds a value per channel).
        """
        x, z = self.simplified(inputs)  # (n, C, H, W), (n, d)
        answers, class_weights = self._forward(x, z, explain)
        if explain:
            rows, cols = self.grid
            per_channel = class_weights.shape[1] // (rows * cols)
            maps = class_weights.reshape(-1, per_channel, rows, cols)  # (n, values, rows, cols)
            for answer, weight_map in zip(answers, maps.tolist()):
                answer["weight_map"] = weight_map[0] if per_channel == 1 else weight_map
        return answers


class TextService(Service):
    """Serve a text NGSLL model: every answer carries its top-K weights, named by the words themselves.

    Args:
        model: a trained text :class:`NGSLL` (``input_kind="text"``).
        encoder: the training split's :class:`TextEncoder` (``encoder.json`` of the prepared data); its
            vocabulary words are the feature names.
        class_names: class names.
        max_bytes: largest request body accepted (default 1 MiB).
    """

    accepted = ACCEPTED_TEXT

    def __init__(
        self, model: NGSLL, encoder: TextEncoder, class_names: list[str], max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        super().__init__(model, encoder.vocabulary.words, class_names, max_bytes)
        if model.args.input_kind != "text":
            raise ConfigError(f"TextService serves text models; this one reads {model.args.input_kind}")
        if len(encoder.sequences) > model.args.vocab_size:
            raise ConfigError(f"the encoder has {len(encoder.sequences)} token ids; the model embeds {model.args.vocab_size}")
        self.encoder = encoder

    def _raw(self, body: bytes) -> str:
        try:
            return _sentence(body.decode("utf-8"))
        except UnicodeDecodeError as error:
            raise RequestError(f"the body is not UTF-8 text ({error})") from error

    def _instance(self, item: Any) -> str:
        if isinstance(item, dict) and "text" in item:
            return _sentence(item["text"])
        if isinstance(item, str):
            return _sentence(item)
        raise RequestError("a JSON request must be {\"text\": \"...\"} or {\"instances\": [...]}")

    def _join(self, samples: list[Any]) -> list[str]:
        return [text for sample in samples for text in ([sample] if isinstance(sample, str) else sample)]

    def simplified(self, inputs: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.encoder.encode(inputs)  # (n, T) token ids, (n, d) bag of words

    def input_tensors(self) -> list[dict[str, Any]]:
        return [{"name": "text", "datatype": "BYTES", "shape": [-1]}]

    def from_tensor(self, datatype: str, shape: list[int], values: np.ndarray) -> list[str]:
        """The sentences of a BYTES ``[n]`` tensor (UTF-8)."""
        if datatype != "BYTES":
            raise RequestError(f"text tensors must be BYTES (UTF-8 sentences), got {datatype}")
        sentences = []
        for item in values.reshape(-1):
            try:
                sentences.append(_sentence(item.decode("utf-8") if isinstance(item, bytes) else item))
            except UnicodeDecodeError as error:
                raise RequestError(f"a sentence is not UTF-8 text ({error})") from error
        return sentences

    def answer(self, inputs: list[str], explain: bool = False) -> list[dict[str, Any]]:
        """Answers for n sentences from one batched forward pass (see :func:`answers_from_output`).

        With ``explain`` each answer also has ``class_weights`` (every class's weight on each selected
        word) and ``token_weights``: the sentence's tokens in order as ``{token, weight}``, ``weight`` the
        answered class's gated weight (0 where the gate did not choose the word) or None for a token that
        is not a feature (a stopword, a rare or unknown word).
        """
        x, z = self.simplified(inputs)  # (n, T) token ids, (n, d) bag of words
        answers, class_weights = self._forward(x, z, explain)
        if explain:
            index = self.encoder.vocabulary.index
            for answer, text, weights in zip(answers, inputs, class_weights.tolist()):
                answer["token_weights"] = [
                    {"token": token, "weight": weights[index[token]] if token in index else None}
                    for token in tokenize(text)
                ]
        return answers


class TableService(Service):
    """Serve a table NGSLL model: every answer carries its top-K weights over named features (``age``,
    ``housing=own``), their values in z (standardised numbers, 0/1 indicators) and contributions.

    Args:
        model: a trained table :class:`NGSLL` (``input_kind="table"``).
        encoder: the training split's :class:`TableEncoder` (``encoder.json`` of the prepared data).
        class_names: class names.
        max_bytes: largest request body accepted (default 1 MiB).
    """

    def __init__(
        self, model: NGSLL, encoder: TableEncoder, class_names: list[str], max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        super().__init__(model, encoder.feature_names, class_names, max_bytes)
        args = model.args
        if args.input_kind != "table":
            raise ConfigError(f"TableService serves table models; this one reads {args.input_kind}")
        if (args.numeric_inputs, list(args.category_sizes)) != (encoder.numeric_inputs, encoder.category_sizes):
            raise ConfigError(f"the encoder gives {encoder.numeric_inputs} numbers and categories "
                              f"{encoder.category_sizes}; the model reads {args.numeric_inputs} and {args.category_sizes}")
        self.encoder = encoder
        # On the CPU rows are answered by the numpy copy of the forward pass (a quarter of torch's cost for one row).
        self.numpy_model = NumpyTableModel(model) if self.device.type == "cpu" else None
        self.accepted = (f"a JSON record of the columns {encoder.columns} (numbers for {list(encoder.numeric)}, "
                         f"strings for {list(encoder.categories)}); or the KServe v1 envelope "
                         "{\"instances\": [...]} of such records")

    def _raw(self, body: bytes) -> dict[str, Any]:
        raise RequestError("a table model takes a JSON record, not a raw body")

    def _instance(self, item: Any) -> dict[str, Any]:
        try:
            return self.encoder.check_record(item)
        except RecordError as error:
            raise RequestError(str(error)) from error

    def _join(self, samples: list[Any]) -> list[dict[str, Any]]:
        return [record for sample in samples for record in ([sample] if isinstance(sample, dict) else sample)]

    def simplified(self, inputs: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        return self.encoder.encode(inputs)  # (n, numbers + categorical) x, (n, d) z

    def _explained(self, x: np.ndarray, z: np.ndarray) -> tuple[NGSLLOutput, torch.Tensor, SparseExplanation]:
        if self.numpy_model is None:
            return super()._explained(x, z)
        z = z.astype(np.float32, copy=False)  # (n, d)
        output, explanation = self.numpy_model.explain(x, z)  # the torch model's, computed in numpy
        return output, torch.from_numpy(z), explanation

    def input_tensors(self) -> list[dict[str, Any]]:
        return [{"name": "record", "datatype": "BYTES", "shape": [-1]}]

    def from_tensor(self, datatype: str, shape: list[int], values: np.ndarray) -> list[dict[str, Any]]:
        """The records of a BYTES ``[n]`` tensor, each element one JSON object."""
        if datatype != "BYTES":
            raise RequestError(f"table tensors must be BYTES (one JSON record per element), got {datatype}")
        records = []
        for item in values.reshape(-1):
            try:
                records.append(self._instance(json.loads(item)))
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise RequestError(f"a record element is not JSON ({error})") from error
        return records

    def answer(self, inputs: list[dict[str, Any]], explain: bool = False) -> list[dict[str, Any]]:
        """Answers for n checked records from one batched forward pass (see :func:`answers_from_output`);
        with ``explain`` each also has ``class_weights`` (every class's weight on each selected feature)."""
        x, z = self.simplified(inputs)
        return self._forward(x, z, explain)[0]


def load_service(
    checkpoint_path: str | Path, features_path: str | Path, encoder_path: str | Path | None = None,
    device: torch.device | str = "cpu", max_bytes: int = DEFAULT_MAX_BYTES,
) -> ImageService | TextService | TableService:
    """The service of a fine checkpoint: :class:`ImageService`, or for ``input_kind="text"`` / ``"table"``
    :class:`TextService` / :class:`TableService`.

    ``features_path`` is the prepared data's ``features.json`` (``feature_names``, ``class_names``);
    text and table models also need ``encoder_path``, its ``encoder.json``. The checkpoint is loaded with
    ``weights_only=True``.
    """
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    features = json.loads(Path(features_path).read_text())
    model = model_from_checkpoint(checkpoint).to(device)
    if not isinstance(model, NGSLL):
        raise ConfigError(f"{checkpoint_path} holds a {model.args.kind} model; only NGSLL models are served")
    service = _service(model, features, checkpoint_path, encoder_path, max_bytes)
    if model.args.task == "regression":
        if "target" not in features:
            raise ConfigError(f"{features_path} lacks the target's scale (target: name, mean, std) that a regression "
                              "model's answers are restored with")
        service.target = TargetScale.from_dict(features["target"])
    return service


def _service(model: NGSLL, features: dict[str, Any], checkpoint_path: str | Path, encoder_path: str | Path | None,
             max_bytes: int) -> ImageService | TextService | TableService:
    if model.args.input_kind == "image":
        return ImageService(model, features["feature_names"], features["class_names"], max_bytes,
                            spec=features.get("image"))
    if encoder_path is None or not Path(encoder_path).exists():
        raise ConfigError(f"{checkpoint_path} is a {model.args.input_kind} model: it needs the prepared data's "
                          f"encoder.json (got {encoder_path})")
    stored = json.loads(Path(encoder_path).read_text())
    if model.args.input_kind == "table":
        return TableService(model, TableEncoder.from_dict(stored), features["class_names"], max_bytes)
    return TextService(model, TextEncoder.from_dict(stored), features["class_names"], max_bytes)


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RequestError(f"the body is not valid JSON ({error.__class__.__name__}: {error})") from error


def _file_bytes(item: Any) -> bytes:
    """The PNG/JPEG file of one BYTES element: raw bytes (binary tensor data) or base64 (JSON text)."""
    raw = item.encode() if isinstance(item, str) else bytes(item) if isinstance(item, (bytes, bytearray)) else None
    if raw is None:
        raise RequestError(f"BYTES elements must be PNG/JPEG files, got {type(item).__name__}")
    if raw[:8] == b"\x89PNG\r\n\x1a\n" or raw[:2] == b"\xff\xd8":
        return raw
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as error:
        raise RequestError(f"a BYTES image is neither a PNG/JPEG file nor its base64 ({error})") from error


def _sentence(text: Any) -> str:
    if not isinstance(text, str):
        raise RequestError(f"\"text\" must be a string, got {type(text).__name__}")
    if not text.strip():
        raise RequestError("the text is empty")
    return text


def _image_from_bytes(body: bytes, spec: dict[str, Any], max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """(C, H, W) pixels in [0, 1] of a PNG/JPEG converted as the spec says (see :class:`ImageService`)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(body)) as picture:  # reads the header only; pixels are decoded by convert()
            if picture.format not in ("PNG", "JPEG"):
                raise RequestError(f"images must be PNG or JPEG, got {picture.format}")
            width, height = picture.size
            if width * height > max_pixels:
                raise RequestError(f"the image is {width}x{height} = {width * height} pixels; the limit is "
                                   f"{max_pixels} pixels")
            converted = picture.convert("RGB" if spec["channels"] == 3 else "L")
            resized = converted.resize((spec["width"], spec["height"]), Image.Resampling.BILINEAR)
            pixels = np.asarray(resized, dtype=np.float32).reshape(spec["height"], spec["width"], -1) / 255.0
    except RequestError:
        raise
    except Image.DecompressionBombError as error:  # PIL's own guard fires in open() beyond ~179 megapixels
        raise RequestError(f"the image is a decompression bomb ({error}); the limit is {max_pixels} pixels") from error
    except UnidentifiedImageError as error:  # its message names a memory address: say it without one
        raise RequestError("the body is not a readable PNG/JPEG image (no image format recognised)") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise RequestError(f"the body is not a readable PNG/JPEG image ({error})") from error
    if spec.get("invert_light_background") and pixels.mean() > 0.5:  # dark ink on light paper: MNIST's is bright
        pixels = 1.0 - pixels
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))  # (C, H, W)


def _image_from_list(values: Any, height: int, width: int, channels: int = 1) -> np.ndarray:
    """(H, W) or (H, W, 3) pixels in [0, 1] of a nested list in 0-1 or 0-255."""
    shape = (height, width) if channels == 1 else (height, width, channels)
    described = "x".join(map(str, shape))
    try:
        pixels = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise RequestError(f"\"image\" must be a {described} nested list of numbers ({error})") from error
    if pixels.shape != shape:
        raise RequestError(f"\"image\" must be a {described} nested list, got shape {list(pixels.shape)}")
    if not np.isfinite(pixels).all():
        raise RequestError("\"image\" contains NaN or infinite values")
    if pixels.min() < 0 or pixels.max() > 255:
        raise RequestError(f"pixel values must lie in 0-1 or 0-255, got {pixels.min()}..{pixels.max()}")
    if pixels.max() > 1.0:
        pixels = pixels / 255.0
    return pixels.astype(np.float32)
