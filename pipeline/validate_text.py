"""Stage `validate_text`: Great Expectations gate on a fetched corpus before anything is built on it.

Row count, labels in the class set with every class present, no sentence without a word, unique ids,
split values. On failure: a short summary naming the failing rows by id, the full result as JSON and
HTML, and a non-zero exit.

Policy ``rows_without_words`` (``text.quality``, or per dataset under ``text.datasets.<name>``): ``fail``
(default) stops here on a sentence without a single word token (e.g. an emoticon-only SMS ``:-)``);
``drop`` removes such rows before the checks and lists them (id and text) in the reports; `prepare_text`
leaves them out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ngsll.config import dataset_settings
from ngsll.data.text import TextCorpus
from ngsll.quality import raw_text_checks, raw_text_frame, rows_to_drop, run_checks
from stage_io import finish_gate, load_params, read_json, setup_logging


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", required=True, help="a name under text.datasets in params.yaml")
    parser.add_argument("--raw", type=Path, required=True, help="normalised corpus (.csv) from fetch_text")
    parser.add_argument("--info", type=Path, required=True, help="fetch_text's provenance JSON (class names)")
    parser.add_argument("--report", type=Path, required=True, help="validation result JSON")
    parser.add_argument("--html", type=Path, required=True, help="static HTML report")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    setup_logging()
    data = dataset_settings(load_params(args.params), args.dataset).data
    corpus = TextCorpus.read_frame(args.raw)
    frame = raw_text_frame(corpus)
    drop = rows_to_drop(frame, "tokens", 1, data.get("rows_without_words", "fail"))
    dropped = {"policy": "rows_without_words: drop", "reason": "no word token", "count": len(drop),
               "rows": [{"id": int(i), "value": corpus["text"][row]} for row, i in zip(drop.index, drop["id"])]}
    rows = data["rows"]
    checks = raw_text_checks(len(read_json(args.info)["class_names"]), int(rows["min"]), int(rows["max"]))
    report = run_checks({args.dataset: (frame.drop(index=drop.index), checks)}, suite_name=f"raw_{args.dataset}")
    finish_gate(report, args.report, args.html, f"validate_text ({args.dataset})", dropped if len(drop) else None)


if __name__ == "__main__":
    main()
