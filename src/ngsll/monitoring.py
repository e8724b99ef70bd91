"""Explanation monitoring: what a deployed model relies on, from every answer it gave, against its reference.

Each NGSLL answer is an exact local linear model, so the served explanations aggregate with the same
mergeable NormLIME accumulator the `explain` stage uses (:meth:`NormLIME.update_sparse`). A
:class:`ExplanationProfile` is that accumulator plus the names; the `explain` stage writes the reference
one over the test split (``reference_profile.json``), :func:`profile_captures` builds the live one from a
capture folder (:mod:`ngsll.capture`), and :func:`compare_profiles` measures the drift:

* ``ndcg``: nDCG@``top_n`` of the live global NormLIME ranking with the reference importance as relevance
  (1: the same features matter most; SageMaker Clarify's feature-attribution drift flags below 0.9);
* ``class_js``: per predicted class, the Jensen-Shannon divergence (base 2, 0..1) of how often each feature
  is selected, over the reference's ``js_top`` most selected features of that class plus one "other" bucket
  (so a large vocabulary does not turn sampling noise into divergence);
* ``share_shift``: total variation distance between the predicted-class shares (0..1);

and names the features whose selection frequency moved most.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ngsll.capture import CAPTURE_GLOB
from ngsll.errors import InputError
from ngsll.normlime import NormLIME

PROFILE_VERSION = 1


@dataclass
class ExplanationProfile:
    """NormLIME state of a set of explanations with the names needed to read it.

    ``image``: the prepared data's image spec (grid, channels) for image models, None for text.
    ``source``: what the explanations were (``"test split, K=5"``, ``"captures 2026-12-02..."``).
    """

    feature_names: list[str]
    class_names: list[str]
    normlime: NormLIME
    model: str = ""
    source: str = ""
    image: dict[str, Any] | None = None

    @property
    def samples(self) -> int:
        return self.normlime.samples

    @property
    def class_shares(self) -> np.ndarray:
        """(C,) share of explanations per predicted class."""
        return self.normlime.class_samples / max(self.normlime.samples, 1)

    @property
    def overall_selection(self) -> np.ndarray:
        """(d,) share of all explanations that use each feature."""
        return self.normlime.count.sum(axis=0) / max(self.normlime.samples, 1)

    def empty_like(self, source: str = "") -> ExplanationProfile:
        """A profile of no explanations over the same features and classes."""
        return ExplanationProfile(self.feature_names, self.class_names,
                                  NormLIME(len(self.feature_names), len(self.class_names)), self.model, source, self.image)

    def to_dict(self) -> dict[str, Any]:
        return {"version": PROFILE_VERSION, "model": self.model, "source": self.source,
                "feature_names": self.feature_names, "class_names": self.class_names, "image": self.image,
                "samples": self.samples, "class_shares": dict(zip(self.class_names, self.class_shares.tolist())),
                "normlime": self.normlime.to_dict()}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> ExplanationProfile:
        if state.get("version") != PROFILE_VERSION:
            raise InputError(f"reference profile version {state.get('version')!r} is not {PROFILE_VERSION}: "
                             "re-run the explain stage")
        return cls(list(state["feature_names"]), list(state["class_names"]), NormLIME.from_dict(state["normlime"]),
                   state.get("model", ""), state.get("source", ""), state.get("image"))

    @classmethod
    def read(cls, path: str | Path) -> ExplanationProfile:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, KeyError) as error:
            raise InputError(f"{path} is not a readable reference profile ({error})") from error


@dataclass
class CaptureScan:
    """What :func:`profile_captures` read: files, records used, and what it skipped and why."""

    files: int = 0
    records: int = 0
    bad_lines: int = 0
    outside_window: int = 0
    other_models: int = 0
    problems: list[str] = field(default_factory=list)  # "<file>: line 7: ..." (the first few) or "<file>: unreadable"
    first_time: float | None = None
    last_time: float | None = None

    def note(self, message: str, limit: int = 20) -> None:
        if len(self.problems) < limit:
            self.problems.append(message)


def profile_captures(folder: str | Path, reference: ExplanationProfile, since: float | None = None,
                     until: float | None = None, model: str | None = None, chunk: int = 4096,
                     ) -> tuple[ExplanationProfile, CaptureScan]:
    """Stream the capture files of ``folder`` (time window ``since`` <= time < ``until``, one model's records
    if ``model`` is given) into a profile over the reference's features and classes.

    Unreadable files, truncated or malformed lines and records that do not fit the reference (a feature index
    or class beyond its size) are counted in the :class:`CaptureScan` and skipped, never fatal.
    """
    live = reference.empty_like()
    scan = CaptureScan()
    d, classes = len(reference.feature_names), len(reference.class_names)
    indices: list[list[int]] = []
    weights: list[list[float]] = []
    predicted: list[int] = []

    def flush() -> None:
        if not predicted:
            return
        width = max(1, max(len(row) for row in indices))
        padded_index = np.full((len(indices), width), -1, dtype=np.int64)  # (n, K)
        padded_weight = np.zeros((len(indices), width))  # (n, K)
        for row, (index_row, weight_row) in enumerate(zip(indices, weights)):
            padded_index[row, :len(index_row)] = index_row
            padded_weight[row, :len(weight_row)] = weight_row
        live.normlime.update_sparse(padded_index, padded_weight, np.asarray(predicted))
        indices.clear(), weights.clear(), predicted.clear()

    for path in sorted(Path(folder).glob(CAPTURE_GLOB)):
        try:
            handle = path.open("rb")
        except OSError as error:
            scan.note(f"{path.name}: unreadable ({error.strerror or error})")
            continue
        scan.files += 1
        with handle:
            for number, line in enumerate(handle, start=1):
                try:
                    record = json.loads(line)
                    stamp, label = float(record["time"]), int(record["class_index"])
                    triples = record["features"]
                    row_index = [int(t[0]) for t in triples]
                    row_weight = [float(t[1]) for t in triples]
                except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, IndexError) as error:
                    scan.bad_lines += 1
                    scan.note(f"{path.name}: line {number}: not a capture record ({type(error).__name__})")
                    continue
                if model is not None and record.get("model") != model:
                    scan.other_models += 1
                    continue
                if (since is not None and stamp < since) or (until is not None and stamp >= until):
                    scan.outside_window += 1
                    continue
                if not 0 <= label < classes or any(not 0 <= j < d for j in row_index):
                    scan.bad_lines += 1
                    scan.note(f"{path.name}: line {number}: class or feature index beyond the reference's "
                              f"{classes} classes / {d} features")
                    continue
                indices.append(row_index), weights.append(row_weight), predicted.append(label)
                scan.records += 1
                scan.first_time = stamp if scan.first_time is None else min(scan.first_time, stamp)
                scan.last_time = stamp if scan.last_time is None else max(scan.last_time, stamp)
                if len(predicted) >= chunk:
                    flush()
    flush()
    live.source = f"{scan.records} captured explanations"
    return live, scan


def ndcg(relevance: np.ndarray, live_scores: np.ndarray, top_n: int) -> float:
    """nDCG@top_n of the ranking by ``live_scores`` with ``relevance`` (the reference importance) as gain."""
    top_n = min(top_n, len(relevance))
    discounts = 1.0 / np.log2(np.arange(2, top_n + 2))  # (top_n,)
    live_order = np.argsort(-live_scores, kind="stable")[:top_n]
    ideal_order = np.argsort(-relevance, kind="stable")[:top_n]
    ideal = float((relevance[ideal_order] * discounts).sum())
    return float((relevance[live_order] * discounts).sum() / ideal) if ideal > 0 else 1.0


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of two non-negative vectors, each normalised to sum 1."""
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        inside = a > 0
        return float((a[inside] * np.log2(a[inside] / m[inside])).sum())

    return (kl(p) + kl(q)) / 2


@dataclass
class DriftReport:
    """The comparison of a live profile with the reference; ``drifted`` when any flag is raised."""

    samples: int
    reference_samples: int
    ndcg: float | None
    class_js: dict[str, float | None]
    class_shares: dict[str, dict[str, float]]
    share_shift: float | None
    moved_features: list[dict[str, Any]]
    thresholds: dict[str, float]
    flags: dict[str, bool]
    enough_samples: bool

    @property
    def drifted(self) -> bool:
        return any(self.flags.values())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drifted": self.drifted}


def compare_profiles(reference: ExplanationProfile, live: ExplanationProfile, ndcg_threshold: float = 0.9,
                     js_threshold: float = 0.1, share_threshold: float = 0.1, top_n: int = 20, js_top: int = 50,
                     min_samples: int = 100, moved: int = 5) -> DriftReport:
    """Measure the drift of ``live`` from ``reference`` (see the module docstring).

    Flags: ``ndcg`` below ``ndcg_threshold``; ``class_js`` of any class above ``js_threshold`` (classes with
    no live explanation are left out, their absence shows in the shares); ``share_shift`` above
    ``share_threshold``. With fewer than ``min_samples`` live explanations nothing is flagged and
    ``enough_samples`` is False.
    """
    if (reference.feature_names, reference.class_names) != (live.feature_names, live.class_names):
        raise InputError("the live profile is not over the reference's features and classes")
    thresholds = {"ndcg": ndcg_threshold, "js": js_threshold, "share_shift": share_threshold,
                  "min_samples": float(min_samples)}
    shares = {"reference": dict(zip(reference.class_names, reference.class_shares.tolist())),
              "live": dict(zip(live.class_names, live.class_shares.tolist()))}
    enough = live.samples >= min_samples
    if live.samples == 0:
        return DriftReport(0, reference.samples, None, dict.fromkeys(reference.class_names), shares, None, [],
                           thresholds, {"ndcg": False, "js": False, "share_shift": False}, False)
    ref_n, live_n = reference.normlime, live.normlime
    score = ndcg(ref_n.global_importance_, live_n.global_importance_, top_n)
    class_js: dict[str, float | None] = {}
    for c, name in enumerate(reference.class_names):
        if live_n.class_samples[c] == 0 or ref_n.class_samples[c] == 0:
            class_js[name] = None
            continue
        kept = np.argsort(-ref_n.count[c], kind="stable")[:js_top]  # the reference's most selected features
        other = np.ones(len(reference.feature_names), dtype=bool)
        other[kept] = False

        def bucketed(counts: np.ndarray) -> np.ndarray:
            return np.append(counts[kept], counts[other].sum()).astype(np.float64) + 1e-12

        class_js[name] = js_divergence(bucketed(ref_n.count[c]), bucketed(live_n.count[c]))
    share_shift = float(np.abs(reference.class_shares - live.class_shares).sum() / 2)
    change = live.overall_selection - reference.overall_selection  # (d,)
    moved_features = [
        {"feature": reference.feature_names[j], "reference_selection": float(reference.overall_selection[j]),
         "live_selection": float(live.overall_selection[j]), "change": float(change[j]),
         "reference_importance": float(ref_n.global_importance_[j]), "live_importance": float(live_n.global_importance_[j])}
        for j in np.argsort(-np.abs(change), kind="stable")[:moved] if change[j] != 0
    ]
    flags = {"ndcg": enough and score < ndcg_threshold,
             "js": enough and any(v is not None and v > js_threshold for v in class_js.values()),
             "share_shift": enough and share_shift > share_threshold}
    return DriftReport(live.samples, reference.samples, score, class_js, shares, share_shift, moved_features,
                       thresholds, flags, enough)
