"""The served-answer contract of ``docs/schema/explanation-v1.schema.json``, checked on real answers.

``check_served(payload)`` validates a body against the schema and then the invariants JSON Schema cannot
state: contributions add up to the answered class's logit (no intercept), at most k weights, each
contribution = weight x value, sorted by |contribution|. ``v2_outputs(response)`` turns an Open Inference
Protocol response into arrays after checking its tensors the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

SCHEMA = json.loads((Path(__file__).parents[1] / "docs" / "schema" / "explanation-v1.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def validate(payload: dict, definition: str) -> None:
    """Raise if ``payload`` is not a valid ``$defs/<definition>`` of the schema."""
    jsonschema.Draft202012Validator({"$ref": f"#/$defs/{definition}", "$defs": SCHEMA["$defs"]}).validate(payload)


def check_answer_invariants(answer: dict) -> None:
    weights = answer["weights"]
    assert len(weights) <= answer["k"]
    logit = answer["logits"][answer["label"]] if "logits" in answer else answer["logit"]
    assert sum(w["contribution"] for w in weights) == pytest.approx(logit, abs=1e-4)
    for entry in weights:
        assert entry["contribution"] == pytest.approx(entry["weight"] * entry["value"], abs=1e-6)
    if "value" in answer:  # regression: the prediction in the target's units is its label
        assert answer["label"] == answer["value"] and answer["probabilities"] == {}
    magnitudes = [abs(w["contribution"]) for w in weights]
    assert magnitudes == sorted(magnitudes, reverse=True)
    assert len({w["index"] for w in weights}) == len(weights)


def check_served(payload: dict) -> None:
    """Schema + invariants of a v1 body: one answer or the predictions / explanations envelope."""
    VALIDATOR.validate(payload)
    if "error" in payload:
        return
    validate(payload, "v1_envelope" if set(payload) <= {"predictions", "explanations"} else "answer")
    for answer in payload.get("predictions", payload.get("explanations", [payload])):
        check_answer_invariants(answer)


def v2_outputs(response: dict, k: int) -> dict[str, np.ndarray]:
    """The named output arrays of a v2 response, checked against the schema and the invariants."""
    validate(response, "v2_response")
    arrays = {out["name"]: np.asarray(out["data"], dtype=object if out["datatype"] == "BYTES" else None)
              .reshape(out["shape"]) for out in response["outputs"]}
    n = len(arrays["label"])
    assert all(arrays[name].shape == (n, k) for name in ("feature_index", "feature_name", "weight", "value", "contribution"))
    padding = arrays["feature_index"] == -1
    assert (arrays["feature_name"][padding] == "").all() and (arrays["weight"][padding] == 0).all()
    assert (arrays["contribution"][padding] == 0).all() and (arrays["value"][padding] == 0).all()
    assert np.allclose(arrays["contribution"].sum(axis=1), arrays["logit"], atol=1e-4)
    assert np.allclose(arrays["contribution"], arrays["weight"] * arrays["value"], atol=1e-6)
    assert np.allclose(arrays["probabilities"].sum(axis=1), 1, atol=1e-5) or arrays["probabilities"].shape[1] == 0
    return arrays


def same_as_v1(arrays: dict[str, np.ndarray], answers: list[dict]) -> None:
    """v2 arrays say what the v1 answers say: labels, probabilities, the answered logit and the weights."""
    for row, answer in enumerate(answers):
        if "value" in answer:  # regression: the value in the target's units, as text in v2
            assert float(arrays["label"][row]) == pytest.approx(answer["value"], rel=1e-6)
        else:
            assert arrays["label"][row] == answer["label"]
        assert list(arrays["probabilities"][row]) == pytest.approx(list(answer["probabilities"].values()), abs=1e-6)
        logit = answer["logits"][answer["label"]] if "logits" in answer else answer["logit"]
        assert arrays["logit"][row] == pytest.approx(logit, abs=1e-5)
        count = len(answer["weights"])
        assert list(arrays["feature_index"][row, :count]) == [w["index"] for w in answer["weights"]]
        assert list(arrays["feature_name"][row, :count]) == [w["feature"] for w in answer["weights"]]
        assert list(arrays["contribution"][row, :count]) == pytest.approx([w["contribution"] for w in answer["weights"]], abs=1e-5)
        assert (arrays["feature_index"][row, count:] == -1).all()
