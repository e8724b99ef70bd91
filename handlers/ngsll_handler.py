"""TorchServe handler for NGSLL: every answer carries its top-K weights.

A thin adapter over :mod:`ngsll.serving`: :func:`~ngsll.serving.load_service` reads the plain-dict
checkpoint packaged as the archive's serialized file (``weights_only=True``), ``features.json`` (feature
and class names; for images the image spec requests are converted by: size, channels, grid) and, for text
models, ``encoder.json`` (the vocabularies); the checkpoint's
``model_args.input_kind`` decides between the image and the text service. Per batch the handler hands the
request bodies to the service and writes back JSON with per-request status codes, so a bad request gets a
400 (413 for a body over the size limit) while the rest of its batch is answered normally.
``/explanations/{model}`` and ``/v1/models/{model}:explain`` requests (header ``explain: True``) also get
every class's weight on the selected features and the weight map over the cells (images) or every token's weight
(text). The archive's model config may set ``handler.torch_threads`` (the package stage writes
``serve.threads_per_worker`` there).
"""

from __future__ import annotations

import json
import logging
import os
from http import HTTPStatus
from typing import Any

import torch
from ts.torch_handler.base_handler import BaseHandler

from ngsll.capture import CaptureSettings, CaptureSink
from ngsll.serving import RequestError, load_service

FORM_ENCODED = (
    "no body reached the model: TorchServe passes none on for Content-Type application/x-www-form-urlencoded "
    "(curl's default for -d/--data-binary); send it with Content-Type text/plain, "
    "application/json, image/png or image/jpeg (curl -H 'Content-Type: ...', or -T FILE)"
)


def request_body(row: dict[str, Any]) -> Any:
    """The raw body of one TorchServe request row, or a :class:`RequestError` for a form-encoded one."""
    body = row.get("data", row.get("body"))
    if not row:  # TorchServe hands a form-encoded body over as no field at all
        return RequestError(FORM_ENCODED)
    return body

logger = logging.getLogger(__name__)


class NGSLLHandler(BaseHandler):
    """Serve an NGSLL checkpoint; see the module docstring."""

    def initialize(self, context: Any) -> None:
        properties = context.system_properties
        model_dir = properties["model_dir"]
        serialized = context.manifest["model"]["serializedFile"]
        gpu = properties.get("gpu_id")
        self.device = torch.device(f"cuda:{gpu}" if torch.cuda.is_available() and gpu is not None else "cpu")
        handler_config = (getattr(context, "model_yaml_config", None) or {}).get("handler") or {}
        threads = handler_config.get("torch_threads")
        if threads:  # one worker per core instead of every worker on every core
            torch.set_num_threads(int(threads))
        self.service = load_service(
            os.path.join(model_dir, serialized), os.path.join(model_dir, "features.json"),
            os.path.join(model_dir, "encoder.json"), device=self.device,
        )
        self.capture = self._capture_sink(context, handler_config.get("capture") or {})
        self.service.capture = self.capture
        self.reported = (0, 0)  # captured, dropped counts already sent to the metrics endpoint
        self.initialized = True
        args = self.service.model.args
        logger.info("NGSLL (%s, K=%d, d=%d) loaded on %s, %d torch thread(s)", args.input_kind, args.k,
                    args.num_features, self.device, torch.get_num_threads())

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        self.context = context
        bodies = [request_body(row) for row in data]
        explain = [context.get_request_header(i, "explain") == "True" for i in range(len(data))]
        responses = self.service.respond(bodies, explain)
        if self.capture is not None:
            self._report_capture(context)
        for index, (status, _) in enumerate(responses):
            context.set_response_header(index, "Content-Type", "application/json")
            if status != 200:
                context.set_response_status(status, HTTPStatus(status).phrase, idx=index)
        return [json.dumps(payload) for _, payload in responses]

    @staticmethod
    def _capture_sink(context: Any, settings: dict[str, Any]) -> CaptureSink | None:
        """The capture sink the model config asks for, in ``NGSLL_CAPTURE_DIR``; None when capture is off."""
        if not settings.get("enabled"):
            return None
        folder = os.environ.get("NGSLL_CAPTURE_DIR")
        if not folder:
            logger.warning("handler.capture is enabled but NGSLL_CAPTURE_DIR is not set: nothing is captured")
            return None
        model = context.manifest["model"]
        sink = CaptureSink(CaptureSettings.from_dict(folder, settings), model.get("modelName", ""),
                           str(model.get("modelVersion", "")))
        logger.info("capturing every answered explanation into %s", folder)
        return sink

    def _report_capture(self, context: Any) -> None:
        """Add what the sink captured and dropped since the last batch to the two counters."""
        captured, dropped = self.capture.captured, self.capture.dropped
        metrics = getattr(context, "metrics", None)
        if metrics is None:
            return
        for name, now, before in (("NGSLLExplanationsCaptured", captured, self.reported[0]),
                                  ("NGSLLExplanationsDropped", dropped, self.reported[1])):
            if now > before:
                metrics.add_counter(name, now - before)
        self.reported = (captured, dropped)
