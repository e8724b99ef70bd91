"""Framework-free serving logic: decode requests, run one batched forward pass, encode answers.

A server adapter (the TorchServe handler in ``handlers/``, or any other) only moves bytes: it hands each
request body to :meth:`ImageService.decode`, passes the decoded samples of a whole batch to
:meth:`ImageService.answer` in one call, and writes back what comes out. Bad requests raise
:class:`RequestError`, whose ``payload()`` is the 400 body ``{"error": ..., "accepted": ...}``.

Accepted request bodies for image models:
    * raw PNG/JPEG bytes of any size: converted to 8-bit grayscale, resized to 28x28 and, when the
      background is light (mean above mid-grey), inverted so ink is bright as in MNIST;
    * JSON ``{"image": 28x28 nested list}`` with values in 0-1 or 0-255;
    * the KServe v1 envelope ``{"instances": [...]}`` whose items are either of the two above
      (a PNG/JPEG as ``{"b64": "..."}``) or a bare 28x28 list; it is answered as ``{"predictions": [...]}``.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ngsll.errors import NGSLLError
from ngsll.explain import answers_from_output
from ngsll.model import NGSLL
from ngsll.simplify import image_inputs

ACCEPTED_IMAGE = (
    "PNG or JPEG bytes; JSON {\"image\": 28x28 nested list of numbers in 0-1 or 0-255}; or the KServe v1 "
    "envelope {\"instances\": [...]} of such images (PNG/JPEG as {\"b64\": ...})"
)
DEFAULT_MAX_BYTES = 1 << 20
DEFAULT_MAX_INSTANCES = 256


EXPLANATION_FIELDS = ("class_weights", "weight_map")


class RequestError(NGSLLError, ValueError):
    """A request the service cannot answer; maps to HTTP 400 with :meth:`payload` as the body."""

    def __init__(self, error: str, accepted: str = ACCEPTED_IMAGE) -> None:
        super().__init__(error)
        self.error, self.accepted = error, accepted

    def payload(self) -> dict[str, str]:
        return {"error": self.error, "accepted": self.accepted}


@dataclass
class DecodedRequest:
    """The images of one request, (n, 28, 28) float32 in [0, 1], and whether it came as a KServe envelope."""

    images: np.ndarray
    envelope: bool


def _image_from_bytes(body: bytes, side: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(body)) as picture:
            if picture.format not in ("PNG", "JPEG"):
                raise RequestError(f"images must be PNG or JPEG, got {picture.format}")
            gray = picture.convert("L").resize((side, side), Image.Resampling.BILINEAR)
            pixels = np.asarray(gray, dtype=np.float32) / 255.0  # (side, side)
    except RequestError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise RequestError(f"the body is not a readable PNG/JPEG image ({error})") from error
    if pixels.mean() > 0.5:  # dark ink on a light background: MNIST has bright ink on black
        pixels = 1.0 - pixels
    return pixels


def _image_from_list(values: Any, side: int) -> np.ndarray:
    try:
        pixels = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise RequestError(f"\"image\" must be a {side}x{side} nested list of numbers ({error})") from error
    if pixels.shape != (side, side):
        raise RequestError(f"\"image\" must be a {side}x{side} nested list, got shape {list(pixels.shape)}")
    if not np.isfinite(pixels).all():
        raise RequestError("\"image\" contains NaN or infinite values")
    if pixels.min() < 0 or pixels.max() > 255:
        raise RequestError(f"pixel values must lie in 0-1 or 0-255, got {pixels.min()}..{pixels.max()}")
    if pixels.max() > 1.0:
        pixels = pixels / 255.0
    return pixels.astype(np.float32)


class ImageService:
    """Serve an image NGSLL model: every answer carries its top-K weights.

    Args:
        model: a trained :class:`NGSLL` (put in evaluation mode here).
        feature_names: d names, e.g. ``r3c4``.
        class_names: class names (``["0-4", "5-9"]``).
        max_bytes: largest request body accepted (default 1 MiB).
    """

    def __init__(
        self, model: NGSLL, feature_names: list[str], class_names: list[str], max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        if not isinstance(model, NGSLL):
            raise TypeError(f"ImageService serves NGSLL models, got {type(model).__name__}")
        self.model = model.eval()
        self.feature_names, self.class_names = list(feature_names), list(class_names)
        self.side = model.args.image_size
        self.cells = int(round(len(self.feature_names) ** 0.5))
        self.max_bytes = max_bytes
        self.device = next(model.parameters()).device

    def decode(self, body: bytes | bytearray | str | dict | list | None) -> DecodedRequest:
        """Turn one request body (bytes, text or already-parsed JSON) into images; raise :class:`RequestError`."""
        if body is None or (isinstance(body, (bytes, bytearray, str)) and len(body) == 0):
            raise RequestError("the request body is empty")
        if isinstance(body, (bytes, bytearray, str)) and len(body) > self.max_bytes:
            raise RequestError(f"the request body has {len(body)} bytes; the limit is {self.max_bytes}")
        if isinstance(body, (bytes, bytearray)):
            stripped = bytes(body).lstrip()
            if stripped[:1] in (b"{", b"["):
                body = self._parse_json(stripped)
            else:
                return DecodedRequest(_image_from_bytes(bytes(body), self.side)[None], envelope=False)
        elif isinstance(body, str):
            body = self._parse_json(body.encode())
        if isinstance(body, dict) and "instances" in body:
            instances = body["instances"]
            if not isinstance(instances, list) or not instances:
                raise RequestError("\"instances\" must be a non-empty list")
            if len(instances) > DEFAULT_MAX_INSTANCES:
                raise RequestError(f"at most {DEFAULT_MAX_INSTANCES} instances per request, got {len(instances)}")
            return DecodedRequest(np.stack([self._instance(item) for item in instances]), envelope=True)
        return DecodedRequest(self._instance(body)[None], envelope=False)

    def _parse_json(self, raw: bytes) -> Any:
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RequestError(f"the body is not valid JSON ({error.__class__.__name__}: {error})") from error

    def _instance(self, item: Any) -> np.ndarray:
        if isinstance(item, dict) and "image" in item:
            return _image_from_list(item["image"], self.side)
        if isinstance(item, dict) and "b64" in item:
            try:
                raw = base64.b64decode(item["b64"], validate=True)
            except (binascii.Error, TypeError, ValueError) as error:
                raise RequestError(f"\"b64\" is not valid base64 ({error})") from error
            return _image_from_bytes(raw, self.side)
        if isinstance(item, list):
            return _image_from_list(item, self.side)
        raise RequestError("a JSON request must be {\"image\": [[...]]}, {\"b64\": ...} or {\"instances\": [...]}")

    def answer(self, images: np.ndarray, explain: bool = False) -> list[dict[str, Any]]:
        """Answers for (n, 28, 28) images from one batched forward pass (see :func:`predict_explain`).

        With ``explain`` each answer also has ``class_weights`` (every class's weight on each selected
        feature) and ``weight_map`` (the cells x cells map of the answered class's sparse weights).
        """
        x, z = image_inputs(images, self.cells)
        x_t = torch.from_numpy(x).to(self.device)  # (n, 1, 28, 28)
        z_t = torch.from_numpy(z).to(self.device)  # (n, d)
        with torch.inference_mode():
            output = self.model(x_t, z_t)
        args = self.model.args
        answers = answers_from_output(output, z_t, args.k, args.task, self.feature_names, self.class_names)
        if not explain:
            return answers
        weights = output.weights.cpu().numpy()  # (n, d, C)
        for answer, sample_weights in zip(answers, weights):
            column = answer["class_index"] if sample_weights.shape[1] > 1 else 0
            names = self.class_names if sample_weights.shape[1] > 1 else [f"logit({self.class_names[-1]})"]
            answer["class_weights"] = {
                entry["feature"]: dict(zip(names, sample_weights[entry["index"]].tolist()))
                for entry in answer["weights"]
            }
            answer["weight_map"] = sample_weights[:, column].reshape(self.cells, self.cells).tolist()
        return answers

    def respond(self, bodies: list[Any], explain: list[bool] | None = None) -> list[tuple[int, Any]]:
        """Answer a batch of requests: one forward pass for all good ones; ``(status, payload)`` each.

        ``explain[i]`` asks for the explanation fields on request i (default: none). A bad request gets
        ``(400, {"error", "accepted"})`` and never affects the others.
        """
        explain = explain or [False] * len(bodies)
        decoded: list[DecodedRequest | RequestError] = []
        for body in bodies:
            try:
                decoded.append(self.decode(body))
            except RequestError as error:
                decoded.append(error)
        good = [d for d in decoded if isinstance(d, DecodedRequest)]
        images = np.concatenate([d.images for d in good]) if good else None
        answers = iter(self.answer(images, explain=any(explain)) if good else [])
        responses: list[tuple[int, Any]] = []
        for item, wants_explanation in zip(decoded, explain):
            if isinstance(item, RequestError):
                responses.append((400, item.payload()))
                continue
            mine = [next(answers) for _ in range(len(item.images))]
            if not wants_explanation:
                mine = [{k: v for k, v in a.items() if k not in EXPLANATION_FIELDS} for a in mine]
            if item.envelope:  # KServe v1: {"predictions": [...]}, or {"explanations": [...]} on :explain
                responses.append((200, {"explanations" if wants_explanation else "predictions": mine}))
            else:
                responses.append((200, mine[0]))
        return responses
