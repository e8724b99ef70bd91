"""Data-quality gates: per-sample summary tables and the Great Expectations suites run on them.

Images do not fit a table, so each image becomes one row of summaries (shape, pixel range, non-finite
count, label); each prepared sample becomes one row (z range, available features, mask consistency).
Great Expectations (GX 1.x) then validates those tables. GX is imported only inside
:func:`run_checks`, so nothing else pays for its slow import.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ngsll.data.labels import label_text
from ngsll.errors import ConfigError, NGSLLError

# One check: (GX expectation class name, keyword arguments).
Check = tuple[str, dict[str, Any]]


class ValidationFailed(NGSLLError):
    """A data-quality gate failed; the message summarises which expectations and sample values."""


def raw_image_frame(images: np.ndarray, labels: np.ndarray, split: str, files: np.ndarray | None = None) -> pd.DataFrame:
    """One row per raw image: ``split, id, file, label, height, width, channels, pixel_min, pixel_max, nonfinite``.

    ``images``: (N, H, W) or (N, H, W, C) of any numeric dtype (a user's float copy may hold NaN); ``labels``
    as stored (numbers or class names, compared as text); other shapes raise.
    """
    if images.ndim == 3:
        images = images[..., None]  # (N, H, W, 1)
    if images.ndim != 4:
        raise ValidationFailed(f"{split} images must be a (N, H, W) or (N, H, W, C) array, got shape {images.shape}")
    flat = images.reshape(len(images), int(np.prod(images.shape[1:]))).astype(np.float64)  # (N, H*W*C)
    finite = np.isfinite(flat)
    pixel_min = np.where(finite, flat, np.inf).min(axis=1, initial=np.inf)  # NaN pixels are counted apart
    pixel_max = np.where(finite, flat, -np.inf).max(axis=1, initial=-np.inf)
    return pd.DataFrame({
        "split": split,
        "id": np.arange(len(images)),
        "file": files if files is not None and len(files) == len(images) else "",
        "label": [label_text(v) for v in labels] if len(labels) == len(images) else None,
        "height": images.shape[1],
        "width": images.shape[2],
        "channels": images.shape[3],
        "pixel_min": pixel_min,
        "pixel_max": pixel_max,
        "nonfinite": (~finite).sum(axis=1),
    })


def prepared_frame(z: np.ndarray, mask: np.ndarray, y: np.ndarray, ids: np.ndarray, split: str) -> pd.DataFrame:
    """One row per prepared sample: ``split, id, label, z_min, z_max, available, mask_consistent``."""
    return pd.DataFrame({
        "split": split,
        "id": ids,
        "label": y,
        "z_min": z.min(axis=1, initial=np.inf),
        "z_max": z.max(axis=1, initial=-np.inf),
        "num_features": z.shape[1],
        "available": (~mask).sum(axis=1),
        "mask_consistent": (mask == (z == 0)).all(axis=1),
    })


def raw_text_frame(corpus: pd.DataFrame) -> pd.DataFrame:
    """One row per raw sentence: ``id, label, split, characters, tokens`` (word tokens, see ngsll.text)."""
    from ngsll.text import tokenize

    texts = corpus["text"].fillna("").astype(str)
    return pd.DataFrame({
        "id": corpus["id"],
        "label": pd.to_numeric(corpus["label"], errors="coerce"),
        "split": corpus["split"].fillna("").astype(str),
        "characters": texts.str.len(),
        "tokens": [len(tokenize(text)) for text in texts],
    })


ROW_POLICIES = ("fail", "drop")


@dataclass(frozen=True)
class RowRule:
    """A row-level expectation whose failing rows a gate's params may drop instead of failing on.

    key: the ``validate`` setting that holds the rule's policy (e.g. ``rows_without_words``); reason: what is
    wrong with a breaking row, for the reports; bad: (N,) True where a row of the gated frame breaks the rule;
    shown: what the report lists for a breaking row (its text, file or offending cells), indexed by position.
    """

    key: str
    reason: str
    bad: np.ndarray
    shown: Sequence[Any] | Mapping[int, Any]


def drop_rows(frame: pd.DataFrame, rules: list[RowRule], settings: dict[str, Any], where: str = "validate",
              ids_per_split: bool = False) -> tuple[pd.DataFrame, dict[str, Any] | None]:
    """``frame`` without the rows that break a rule whose policy in ``settings`` is ``drop``, and the report.

    Each rule's policy is ``settings[rule.key]``: ``fail`` (the default: the rows stay, and the gate's
    expectation fails on them, naming them) or ``drop`` (they are removed before the expectations run).
    The report is None when nothing was dropped, else ``{"policy", "reason", "count", "rows"}`` with one
    ``{"id", "value", "reason"}`` per dropped row (plus ``"split"`` with ``ids_per_split``: image ids count
    within their split). A row breaking several dropped rules is listed once,
    under the first. Raises :class:`ConfigError` for a policy other than ``fail`` or ``drop``.
    """
    dropped = np.zeros(len(frame), dtype=bool)  # (N,)
    rows, used = [], []
    for rule in rules:
        policy = settings.get(rule.key) or "fail"
        if policy not in ROW_POLICIES:
            raise ConfigError(f"{where}.{rule.key} must be one of {list(ROW_POLICIES)}, got {policy!r}")
        new = np.asarray(rule.bad, dtype=bool) & ~dropped if policy == "drop" else np.zeros(len(frame), dtype=bool)
        if not new.any():
            continue
        used.append(rule)
        for position in np.flatnonzero(new):
            row = {"id": int(frame["id"].iloc[position]), "value": rule.shown[position], "reason": rule.reason}
            rows.append({"split": str(frame["split"].iloc[position]), **row} if ids_per_split else row)
        dropped |= new
    if not rows:
        return frame, None
    report = {"policy": ", ".join(f"{rule.key}: drop" for rule in used),
              "reason": "; ".join(rule.reason for rule in used), "count": len(rows), "rows": rows}
    return frame[~dropped], report


def dropped_ids(report: dict[str, Any], split: str | None = None) -> list[int]:
    """The ids a gate's report lists as dropped (of one ``split`` where given: image ids count per split)."""
    rows = (report.get("dropped") or {}).get("rows", [])
    return [row["id"] for row in rows if split is None or row.get("split") == split]


def listed_ids(dropped: dict[str, Any] | None, limit: int = 20) -> str:
    """The ids of a :func:`drop_rows` report as a card lists them: ``60, 61`` (``train:3`` where ids count per
    split), at most ``limit`` of them and how many more."""
    rows = (dropped or {}).get("rows", [])
    shown = [f"{row['split']}:{row['id']}" if "split" in row else str(row["id"]) for row in rows[:limit]]
    return ", ".join(shown) + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def text_row_rules(frame: pd.DataFrame, texts: pd.Series) -> list[RowRule]:
    """Row rules of a raw corpus (:func:`raw_text_frame`): ``rows_without_words``, a sentence without a word
    token (an emoticon-only SMS ``:-)``), listed with its text."""
    return [RowRule("rows_without_words", "no word token", frame["tokens"].to_numpy() < 1, texts.tolist())]


def image_row_rules(frame: pd.DataFrame, labels: list[str] | None) -> list[RowRule]:
    """Row rules of one raw image split (:func:`raw_image_frame`), each listed with its file:
    ``rows_with_bad_pixels`` (a non-finite pixel, or one outside 0-255) and, for classes (``labels`` not None),
    ``rows_with_unknown_label`` (no label, or one outside ``labels``)."""
    files = frame["file"].astype(str).to_numpy()
    bad_pixels = (frame["nonfinite"] > 0) | (frame["pixel_min"] < 0) | (frame["pixel_max"] > 255)  # (N,)
    rules = [RowRule("rows_with_bad_pixels", "pixels not finite or outside 0-255", bad_pixels.to_numpy(), files)]
    if labels is not None:
        shown = [f"{file}: label {label!r}" for file, label in zip(files, frame["label"])]
        rules.append(RowRule("rows_with_unknown_label", f"label missing or not one of {list(labels)}",
                             ~frame["label"].isin(list(labels)).to_numpy(), shown))
    return rules


def _cells(frame: pd.DataFrame, bad: dict[str, np.ndarray]) -> dict[int, str]:
    """Position -> ``column=value`` of that row's offending cells, for the rows with one."""
    shown: dict[int, list[str]] = {}
    for column, mask in bad.items():
        for position in np.flatnonzero(mask):  # only the offending cells, a handful in a real table
            shown.setdefault(int(position), []).append(f"{column}={frame[column].iloc[position]}")
    return {position: ", ".join(cells) for position, cells in shown.items()}


def table_row_rules(frame: pd.DataFrame, ranges: dict[str, list[float | None]] | None = None,
                    categories: dict[str, list[str]] | None = None) -> list[RowRule]:
    """Row rules of a raw table, each row listed with its offending cells (``age=150``):
    ``rows_out_of_range`` (a number outside ``ranges``: {column: [low, high]}, None open) and
    ``rows_with_unknown_category`` (a value outside ``categories``: {column: values}). Missing cells break
    neither rule: their tolerance is ``validate.max_missing_share``."""
    outside, unknown = {}, {}
    for column, (low, high) in (ranges or {}).items():
        if column in frame:
            values = pd.to_numeric(frame[column], errors="coerce").to_numpy(np.float64)  # (N,) NaN: missing
            outside[column] = (values < (-np.inf if low is None else low)) | (values > (np.inf if high is None else high))
    for column, accepted in (categories or {}).items():
        if column in frame:
            values = frame[column]
            unknown[column] = (values.notna() & ~values.astype(str).isin([str(v) for v in accepted])).to_numpy()
    none = np.zeros(len(frame), dtype=bool)
    return [RowRule("rows_out_of_range", "a number outside validate.ranges",
                    np.logical_or.reduce([none, *outside.values()]), _cells(frame, outside)),
            RowRule("rows_with_unknown_category", "a category outside validate.categories",
                    np.logical_or.reduce([none, *unknown.values()]), _cells(frame, unknown))]


def label_checks(labels: list | None, label_range: list[float | None] | None = None) -> list[Check]:
    """Expectations on a ``label`` column: present in every row, and either within the class ``labels`` with
    every class present (classification) or, for a real-valued target (``labels`` None: regression), within
    ``label_range`` ([low, high], None: open) where one is given."""
    checks: list[Check] = [("ExpectColumnValuesToNotBeNull", {"column": "label"})]
    if labels is not None:
        return checks + [("ExpectColumnValuesToBeInSet", {"column": "label", "value_set": list(labels)}),
                         ("ExpectColumnDistinctValuesToContainSet", {"column": "label", "value_set": list(labels)})]
    if label_range:
        if len(label_range) != 2:
            raise ConfigError(f"a label range is [low, high] (null: open), got {label_range!r}")
        low, high = label_range
        checks.append(("ExpectColumnValuesToBeBetween", {"column": "label", "min_value": low, "max_value": high}))
    return checks


def raw_text_checks(num_classes: int | None, min_rows: int, max_rows: int,
                    label_range: list[float | None] | None = None) -> list[Check]:
    """Expectations for a raw corpus: row count, labels in range with every class present (``num_classes``
    None: a real-valued target, within ``label_range`` if given), no empty sentence, unique ids, split values
    train/test or none."""
    return [
        ("ExpectTableRowCountToBeBetween", {"min_value": min_rows, "max_value": max_rows}),
        *label_checks(None if num_classes is None else list(range(num_classes)), label_range),
        ("ExpectColumnValuesToBeBetween", {"column": "tokens", "min_value": 1, "max_value": None}),
        ("ExpectColumnValuesToBeUnique", {"column": "id"}),
        ("ExpectColumnValuesToBeInSet", {"column": "split", "value_set": ["train", "test", ""]}),
    ]


def raw_table_checks(num_classes: int | None, min_rows: int, max_rows: int | None, columns: list[str],
                     max_missing_share: float, ranges: dict[str, list[float | None]] | None = None,
                     categories: dict[str, list[str]] | None = None,
                     label_range: list[float | None] | None = None) -> list[Check]:
    """Expectations for a raw table: row count, labels in range with every class present (``num_classes``
    None: a real-valued target, within ``label_range`` if given), unique ids, split values, every input
    column present with at most ``max_missing_share`` missing (0: none may be missing), numeric ``ranges``
    ({column: [low, high]}, None: open) and categorical ``categories`` ({column: values})."""
    checks: list[Check] = [
        ("ExpectTableRowCountToBeBetween", {"min_value": min_rows, "max_value": max_rows}),
        *label_checks(None if num_classes is None else list(range(num_classes)), label_range),
        ("ExpectColumnValuesToBeUnique", {"column": "id"}),
        ("ExpectColumnValuesToBeInSet", {"column": "split", "value_set": ["train", "test", ""]}),
    ]
    for column in columns:
        checks.append(("ExpectColumnToExist", {"column": column}))
        checks.append(("ExpectColumnValuesToNotBeNull", {"column": column, "mostly": 1.0 - float(max_missing_share)}))
    for column, (low, high) in (ranges or {}).items():
        checks.append(("ExpectColumnValuesToBeBetween", {"column": column, "min_value": low, "max_value": high}))
    for column, values in (categories or {}).items():
        checks.append(("ExpectColumnValuesToBeInSet", {"column": column, "value_set": [str(v) for v in values]}))
    return checks


def raw_checks(labels: list[str] | None, min_rows: int, max_rows: int, height: int, width: int, channels: int,
               label_range: list[float | None] | None = None) -> list[Check]:
    """Expectations for one raw image split: row count, labels in the set with every label present (``labels``
    None: a real-valued target, within ``label_range`` if given), one image size and channel count, pixels
    finite in 0-255, unique ids."""
    return [
        ("ExpectTableRowCountToBeBetween", {"min_value": min_rows, "max_value": max_rows}),
        *label_checks(labels, label_range),
        ("ExpectColumnValuesToBeInSet", {"column": "height", "value_set": [height]}),
        ("ExpectColumnValuesToBeInSet", {"column": "width", "value_set": [width]}),
        ("ExpectColumnValuesToBeInSet", {"column": "channels", "value_set": [channels]}),
        ("ExpectColumnValuesToBeInSet", {"column": "nonfinite", "value_set": [0]}),
        ("ExpectColumnValuesToBeBetween", {"column": "pixel_min", "min_value": 0, "max_value": 255}),
        ("ExpectColumnValuesToBeBetween", {"column": "pixel_max", "min_value": 0, "max_value": 255}),
        ("ExpectColumnValuesToBeUnique", {"column": "id"}),
    ]


def class_share_frame(labels: pd.Series) -> pd.DataFrame:
    """One row per label of a split: ``label, count, share`` (share of the split's rows)."""
    counts = labels.value_counts(dropna=True)
    return pd.DataFrame({"label": counts.index.astype(str), "count": counts.to_numpy(),
                         "share": counts.to_numpy() / max(1, len(labels))})


def class_share_checks(min_share: float) -> list[Check]:
    """Every class holds at least ``min_share`` of its split (a class with a handful of images is refused)."""
    return [("ExpectColumnValuesToBeBetween", {"column": "share", "min_value": min_share, "max_value": 1.0})]


def prepared_checks(
    num_features: int, class_share: float | None, tolerance: float, num_classes: int | None, z_max: float | None = 1.0,
    z_min: float | None = 0.0,
) -> list[Check]:
    """Expectations for one prepared split: non-empty, z in [z_min, z_max] (None: unbounded, e.g. word
    counts above, standardised table columns on both sides), masks match z, d, labels in the class set
    (``num_classes`` None: a real-valued target, present in every row), and (unless ``class_share`` is None)
    the mean label within ``tolerance`` of ``class_share``."""
    bounded = z_min is not None or z_max is not None
    checks: list[Check] = [
        ("ExpectTableRowCountToBeBetween", {"min_value": 1, "max_value": None}),
        *([("ExpectColumnValuesToBeBetween", {"column": column, "min_value": z_min, "max_value": z_max})
           for column in ("z_min", "z_max")] if bounded else []),
        ("ExpectColumnValuesToNotBeNull", {"column": "z_min"}),  # NaN rows (e.g. a failed standardisation)
        ("ExpectColumnValuesToBeInSet", {"column": "mask_consistent", "value_set": [True]}),
        ("ExpectColumnValuesToBeInSet", {"column": "num_features", "value_set": [num_features]}),
        ("ExpectColumnValuesToNotBeNull", {"column": "label"}) if num_classes is None else
        ("ExpectColumnValuesToBeInSet", {"column": "label", "value_set": list(range(num_classes))}),
    ]
    if class_share is not None:
        checks.append(("ExpectColumnMeanToBeBetween", {
            "column": "label", "min_value": class_share - tolerance, "max_value": class_share + tolerance,
        }))
    return checks


def disjoint_checks() -> list[Check]:
    """Expectation over the union of splits drawn from one source: no id appears twice."""
    return [("ExpectColumnValuesToBeUnique", {"column": "id"})]


@dataclass
class QualityReport:
    """Outcome of :func:`run_checks`: ``success``, one entry per failed expectation, and the raw GX JSON."""

    success: bool
    failures: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """A few readable lines: which batch, which expectation, on what, with sample bad values."""
        if self.success:
            total = sum(len(batch["results"]) for batch in self.results.values())
            return f"all {total} expectations passed on {len(self.results)} batches"
        lines = [f"{len(self.failures)} expectation(s) failed:"]
        for failure in self.failures:
            lines.append(
                f"  - [{failure['batch']}] {failure['expectation']}({failure['target']}): "
                f"observed {failure['observed']}"
            )
        return "\n".join(lines)

    def to_html(self, title: str) -> str:
        """A static, self-contained HTML page of every expectation and its outcome."""
        rows = []
        for batch, result in self.results.items():
            for item in result["results"]:
                config = item["expectation_config"]
                ok = item["success"]
                rows.append(
                    f"<tr class={'ok' if ok else 'bad'}><td>{html.escape(batch)}</td>"
                    f"<td>{html.escape(config['type'])}</td><td>{html.escape(_target(config['kwargs']))}</td>"
                    f"<td>{'passed' if ok else 'FAILED'}</td><td>{html.escape(_observed(item['result']))}</td></tr>"
                )
        verdict = "passed" if self.success else "FAILED"
        return (
            "<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif}}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
            ".ok td:nth-child(4){color:#070}.bad td:nth-child(4){color:#b00;font-weight:bold}</style></head>"
            f"<body><h1>{html.escape(title)}: {verdict}</h1><pre>{html.escape(self.summary())}</pre>"
            "<table><tr><th>batch</th><th>expectation</th><th>on</th><th>outcome</th><th>observed</th></tr>"
            + "".join(rows) + "</table></body></html>"
        )


def _target(kwargs: dict[str, Any]) -> str:
    shown = {k: v for k, v in kwargs.items() if k not in ("batch_id",) and v is not None}
    return ", ".join(f"{k}={v}" for k, v in shown.items())


def _observed(result: dict[str, Any]) -> str:
    if "observed_value" in result:
        return f"{result['observed_value']}"
    if "unexpected_count" in result:
        sample = result.get("partial_unexpected_list", [])[:5]
        observed = f"{result['unexpected_count']} unexpected of {result.get('element_count')}, e.g. {sample}"
        rows = [row["id"] for row in result.get("partial_unexpected_index_list") or []
                if isinstance(row, dict) and "id" in row][:10]
        return observed + (f" in rows id={rows}" if rows else "")
    return ""


VOLATILE_META = ("validation_id", "run_id", "validation_time")  # GX's per-run identifiers and clocks


def reproducible(result: dict[str, Any]) -> dict[str, Any]:
    """A GX validation result without what changes from run to run on the same data (random expectation ids,
    run ids, timestamps, the batch load time): the same data and checks give byte-identical reports, so DVC
    sees an unchanged gate report and does not retrain on it."""
    meta = {key: value for key, value in result.get("meta", {}).items() if key not in VOLATILE_META}
    if "batch_markers" in meta:
        meta["batch_markers"] = {key: value for key, value in meta["batch_markers"].items() if key != "ge_load_time"}
    items = [{**item, "expectation_config": {key: value for key, value in item["expectation_config"].items()
                                             if key != "id"}} for item in result["results"]]
    return {**result, "meta": meta, "results": items}


def run_checks(batches: dict[str, tuple[pd.DataFrame, list[Check]]], suite_name: str) -> QualityReport:
    """Validate each named ``(frame, checks)`` batch with Great Expectations (ephemeral context).

    Returns:
        A :class:`QualityReport`; it does not raise on failed expectations (callers decide).
    """
    import great_expectations as gx
    import great_expectations.expectations as gxe

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    source = context.data_sources.add_pandas(name=f"{suite_name}_source")
    report = QualityReport(success=True)
    for batch_name, (frame, checks) in batches.items():
        # Name failing rows by id (not only by value) wherever the table has one.
        result_format = {"result_format": "SUMMARY", **({"unexpected_index_column_names": ["id"]}
                                                        if "id" in frame.columns else {})}
        definition = source.add_dataframe_asset(name=batch_name).add_batch_definition_whole_dataframe(batch_name)
        suite = context.suites.add(gx.ExpectationSuite(name=f"{suite_name}_{batch_name}"))
        for expectation, kwargs in checks:
            suite.add_expectation(getattr(gxe, expectation)(**kwargs))
        validation = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{suite_name}_{batch_name}", data=definition, suite=suite)
        )
        result = reproducible(validation.run(batch_parameters={"dataframe": frame},
                                             result_format=result_format).to_json_dict())
        report.results[batch_name] = result
        for item in result["results"]:
            if not item["success"]:
                report.success = False
                report.failures.append({
                    "batch": batch_name,
                    "expectation": item["expectation_config"]["type"],
                    "target": _target(item["expectation_config"]["kwargs"]),
                    "observed": _observed(item["result"]),
                })
    return report
