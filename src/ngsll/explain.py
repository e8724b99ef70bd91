"""Turn a forward pass into named, sorted, human-readable explanations.

This is the one place where sparse weights become features a person reads; the evaluation pictures,
the serving handler, NormLIME and the model card all go through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ngsll.model import NGSLL, NGSLLOutput
from ngsll.target import TargetScale
from ngsll.train import predict_labels


@dataclass
class SparseExplanation:
    """Batched top-K explanation of the answered class, sorted by |contribution| (descending).

    class_index: (B,) answered class (0 for regression). indices: (B, K) feature indices.
    weights: (B, K) gated weight w'_j of the answered class. values: (B, K) simplified input z_j.
    contributions: (B, K) z_j * w'_j. valid: (B, K) bool, False where a row had fewer than K open gates.
    """

    class_index: torch.Tensor
    indices: torch.Tensor
    weights: torch.Tensor
    values: torch.Tensor
    contributions: torch.Tensor
    valid: torch.Tensor


def answered_class(logits: torch.Tensor, task: str) -> torch.Tensor:
    """(B,) class whose logit the explanation decomposes: the predicted class; 0 for binary/regression.

    For binary models the single logit is log-odds of class 1, so the explanation always decomposes it.
    """
    if task == "multiclass":
        return predict_labels(logits, task)
    return torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)


def answered_class_weights(output: NGSLLOutput, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) answered class (see :func:`answered_class`) and (B, d) the gated weights of that class."""
    class_index = answered_class(output.logits, task)  # (B,)
    gather_class = class_index.view(-1, 1, 1).expand(-1, output.weights.shape[1], 1)  # (B, d, 1)
    return class_index, output.weights.gather(-1, gather_class).squeeze(-1)  # (B,), (B, d)


def sparse_explanation(output: NGSLLOutput, z: torch.Tensor, k: int, task: str) -> SparseExplanation:
    """Pick the (at most) ``k`` gated features of each sample, batched, sorted by |z_j w'_j|.

    Args:
        output: forward output in evaluation mode (gate is 0/1).
        z: (B, d) simplified input used for that pass.
        k: the model's K.
        task: the model's task.
    """
    class_index, class_weights = answered_class_weights(output, task)  # (B,), (B, d)
    contributions = z * class_weights  # (B, d)
    open_gate = output.gate > 0  # (B, d)
    k = min(k, z.shape[1])
    # Rank open features by |contribution|, open-but-zero ones before closed ones.
    ranking = contributions.abs().masked_fill(~open_gate, -1.0)  # (B, d)
    order = ranking.topk(k, dim=-1).indices  # (B, k)
    return SparseExplanation(
        class_index=class_index,
        indices=order,
        weights=class_weights.gather(-1, order),
        values=z.gather(-1, order),
        contributions=contributions.gather(-1, order),
        valid=open_gate.gather(-1, order),
    )


def explanation_records(
    explanation: SparseExplanation, feature_names: list[str]
) -> list[list[dict[str, Any]]]:
    """Per sample, a list of ``{feature, index, weight, value, contribution}`` for the open gates."""
    columns = [explanation.indices, explanation.weights, explanation.values, explanation.contributions]
    indices, weights, values, contributions = (c.detach().cpu().tolist() for c in columns)
    valid = explanation.valid.detach().cpu().tolist()
    records = []
    for row in range(len(indices)):
        records.append([
            {"feature": feature_names[j], "index": j, "weight": w, "value": v, "contribution": c}
            for j, w, v, c, ok in zip(indices[row], weights[row], values[row], contributions[row], valid[row])
            if ok
        ])
    return records


def class_probabilities(logits: torch.Tensor, task: str) -> torch.Tensor | None:
    """(B, num_classes) probabilities from (B, C) logits; None for regression."""
    if task == "binary":
        positive = torch.sigmoid(logits[:, 0])  # (B,)
        return torch.stack([1 - positive, positive], dim=-1)  # (B, 2)
    if task == "multiclass":
        return torch.softmax(logits, dim=-1)
    return None


@torch.inference_mode()
def predict_explain(
    model: NGSLL, x: torch.Tensor, z: torch.Tensor, feature_names: list[str], class_names: list[str],
    target: TargetScale | None = None,
) -> list[dict[str, Any]]:
    """One batched forward pass -> per sample the prediction **and** its named top-K weights.

    See :func:`answers_from_output` for the fields of each answer.
    """
    model.eval()
    return answers_from_output(model(x, z), z, model.args.k, model.args.task, feature_names, class_names, target)


def answers_from_output(
    output: NGSLLOutput, z: torch.Tensor, k: int, task: str, feature_names: list[str], class_names: list[str],
    target: TargetScale | None = None, explanation: SparseExplanation | None = None,
) -> list[dict[str, Any]]:
    """Per-sample answers from an evaluation-mode forward output (``explanation``: its
    :func:`sparse_explanation`, when the caller has it already).

    Each answer: ``label`` (class name, or the value for regression), ``class_index``, ``probabilities``
    (class name -> probability), ``logit`` (binary/regression) or ``logits`` (multi-class, by class name),
    ``k`` and ``weights`` (see :func:`explanation_records`), whose contributions add up to the logit of
    the answered class. Regression: ``logit`` is the model's output for the standardised target (what the
    contributions add up to) and ``label`` = ``value`` = ``target.mean + target.std * logit``, the
    prediction in the target's own units (the logit itself without a ``target`` scale).
    """
    records = explanation_records(explanation or sparse_explanation(output, z, k, task), feature_names)
    logits = output.logits.cpu().tolist()
    probabilities = class_probabilities(output.logits, task)
    probabilities = probabilities.cpu().tolist() if probabilities is not None else None
    predicted = predict_labels(output.logits, task).cpu().tolist()
    answers = []
    for row, weights in enumerate(records):
        if task == "regression":
            value = target.restore(logits[row][0]) if target is not None else logits[row][0]
            answer = {"label": value, "value": value, "class_index": 0, "probabilities": {}, "logit": logits[row][0]}
        else:
            answer = {
                "label": class_names[predicted[row]],
                "class_index": predicted[row],
                "probabilities": dict(zip(class_names, probabilities[row])),
            }
            if task == "binary":
                answer["logit"] = logits[row][0]
            else:
                answer["logits"] = dict(zip(class_names, logits[row]))
        answers.append(answer | {"k": k, "weights": weights})
    return answers
