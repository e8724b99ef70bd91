"""TorchServe handler for NGSLL: every answer carries its top-K weights.

A thin adapter over :class:`ngsll.serving.ImageService`: it loads the plain-dict checkpoint packaged as
the archive's serialized file (``weights_only=True``) and ``features.json`` (feature and class names),
then per batch hands the request bodies to the service and writes back JSON with per-request status
codes, so a bad request gets a 400 while the rest of its batch is answered normally.
``/explanations/{model}`` and ``/v1/models/{model}:explain`` requests (header ``explain: True``) also
get every class's weight on the selected features and the 7x7 weight map.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch
from ts.torch_handler.base_handler import BaseHandler

from ngsll.checkpoint import model_from_checkpoint
from ngsll.serving import ImageService

logger = logging.getLogger(__name__)


class NGSLLHandler(BaseHandler):
    """Serve an NGSLL checkpoint; see the module docstring."""

    def initialize(self, context: Any) -> None:
        properties = context.system_properties
        model_dir = properties["model_dir"]
        serialized = context.manifest["model"]["serializedFile"]
        gpu = properties.get("gpu_id")
        self.device = torch.device(f"cuda:{gpu}" if torch.cuda.is_available() and gpu is not None else "cpu")
        checkpoint = torch.load(os.path.join(model_dir, serialized), map_location="cpu", weights_only=True)
        with open(os.path.join(model_dir, "features.json")) as handle:
            features = json.load(handle)
        model = model_from_checkpoint(checkpoint).to(self.device)
        self.service = ImageService(model, features["feature_names"], features["class_names"])
        self.initialized = True
        logger.info("NGSLL K=%d loaded on %s", model.args.k, self.device)

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        self.context = context
        bodies = [row.get("data", row.get("body")) for row in data]
        explain = [context.get_request_header(i, "explain") == "True" for i in range(len(data))]
        responses = self.service.respond(bodies, explain)
        for index, (status, _) in enumerate(responses):
            context.set_response_header(index, "Content-Type", "application/json")
            if status != 200:
                context.set_response_status(status, "Bad Request", idx=index)
        return [json.dumps(payload) for _, payload in responses]
