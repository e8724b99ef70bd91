"""``python -m ngsll_plugins.monitor --dataset mnist``: the served explanations of a time window against the
model card's reference profile; exits 1 when a threshold is crossed, so a scheduler (cron, Airflow, a
Kubernetes CronJob) can alert.

Reads the capture folder of the packaged server (``models/<dataset>/serve/run/captures`` for TorchServe,
``run-kserve/captures`` with ``--server kserve``, or ``--captures DIR``), streams the records through the
mergeable NormLIME accumulator (:func:`ngsll.monitoring.profile_captures`) and compares them with the
`explain` stage's ``reports/<dataset>/explain/reference_profile.json``: nDCG of the global importance,
per-class Jensen-Shannon divergence of the feature selections, shift of the predicted-class shares
(thresholds: params.yaml's ``monitor`` section). Writes ``drift.json`` and ``drift.html`` (reference and live
maps or top-word tables side by side, the features that moved named) to ``reports/<dataset>/monitor/``
(``--out``), logs both to MLflow (the dataset's experiment, a run named ``monitor``; ``--no-mlflow`` skips),
and prints a summary. Unreadable or truncated capture files are reported and skipped. Exit codes: 0 no
drift (or too few explanations to say), 1 drift, 2 bad arguments or no reference.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

from ngsll.errors import NGSLLError
from ngsll.monitor_report import drift_html
from ngsll.monitoring import ExplanationProfile, compare_profiles, profile_captures

RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DEFAULTS = {"ndcg_threshold": 0.9, "js_threshold": 0.1, "share_threshold": 0.1, "top_n": 20, "js_top": 50,
            "min_samples": 100}


def parse_time(text: str | None, now: float | None = None) -> float | None:
    """Seconds since the epoch from ISO 8601 (``2026-12-02T10:00``, UTC unless it says otherwise) or a span
    back from now (``90m``, ``24h``, ``7d``); None for None."""
    if text is None:
        return None
    relative = RELATIVE.match(text.strip())
    if relative:
        return (now if now is not None else time.time()) - float(relative[1]) * UNIT_SECONDS[relative[2]]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as error:
        raise SystemExit(f"--since/--until must be ISO 8601 (2026-12-02T10:00) or a span such as 90m, 24h, 7d; "
                         f"got {text!r}") from error
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def thresholds(params_path: Path) -> dict:
    """params.yaml's ``monitor`` section over the defaults (unknown keys refused)."""
    section = (yaml.safe_load(params_path.read_text()) or {}).get("monitor") or {} if params_path.exists() else {}
    unknown = set(section) - set(DEFAULTS)
    if unknown:
        raise SystemExit(f"{params_path}: unknown monitor settings {sorted(unknown)}; accepted: {sorted(DEFAULTS)}")
    return {**DEFAULTS, **section}


def log_to_mlflow(dataset: str, report: dict, out_dir: Path) -> str:
    """One MLflow run ``monitor`` in the dataset's experiment with the drift numbers and both reports."""
    import mlflow

    from ngsll_plugins.tracking import configure

    configure(dataset)
    with mlflow.start_run(run_name="monitor") as run:
        js = [v for v in report["class_js"].values() if v is not None]
        metrics = {"monitor_samples": report["samples"], "monitor_ndcg": report["ndcg"],
                   "monitor_max_class_js": max(js) if js else None, "monitor_share_shift": report["share_shift"]}
        mlflow.log_metrics({key: float(value) for key, value in metrics.items() if value is not None})
        mlflow.set_tags({"ngsll.monitor.drifted": str(report["drifted"]).lower(),
                         "ngsll.monitor.flags": ",".join(k for k, v in report["flags"].items() if v) or "none"})
        mlflow.log_artifacts(str(out_dir), artifact_path="monitor")
        return run.info.run_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="a dataset of params.yaml (names the default paths)")
    parser.add_argument("--server", choices=("torchserve", "kserve"), default="torchserve")
    parser.add_argument("--captures", type=Path, help="capture folder (default: the packaged server's)")
    parser.add_argument("--reference", type=Path, help="default reports/<dataset>/explain/reference_profile.json")
    parser.add_argument("--out", type=Path, help="default reports/<dataset>/monitor")
    parser.add_argument("--since", help="window start: ISO 8601 or a span back from now (24h)")
    parser.add_argument("--until", help="window end (exclusive), same forms")
    parser.add_argument("--model", help="only records of this served model name (default: the reference's)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="its monitor section: thresholds")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the run to MLflow")
    args = parser.parse_args(argv)
    serve_dir = Path("models") / args.dataset / "serve"
    captures = args.captures or serve_dir / ("run-kserve" if args.server == "kserve" else "run") / "captures"
    reference_path = args.reference or Path("reports") / args.dataset / "explain" / "reference_profile.json"
    out_dir = args.out or Path("reports") / args.dataset / "monitor"
    settings = thresholds(args.params)
    try:
        reference = ExplanationProfile.read(reference_path)
    except NGSLLError as error:
        print(f"error: {error} (the explain stage writes it: dvc repro explain@{args.dataset})", file=sys.stderr)
        return 2
    if not captures.is_dir():
        print(f"error: {captures} is not a capture folder (serve with capture on, or pass --captures)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    live, scan = profile_captures(captures, reference, parse_time(args.since), parse_time(args.until),
                                  args.model or reference.model or None)
    seconds = time.perf_counter() - started
    report = compare_profiles(reference, live, settings["ndcg_threshold"], settings["js_threshold"],
                              settings["share_threshold"], int(settings["top_n"]), int(settings["js_top"]),
                              int(settings["min_samples"]))
    summary = {**report.to_dict(), "dataset": args.dataset, "captures": str(captures), "reference": str(reference_path),
               "window": {"since": args.since, "until": args.until, "first": scan.first_time, "last": scan.last_time},
               "scan": {"files": scan.files, "records": scan.records, "bad_lines": scan.bad_lines,
                        "outside_window": scan.outside_window, "other_models": scan.other_models,
                        "problems": scan.problems},
               "explanations_per_second": scan.records / seconds if seconds > 0 else None}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "drift.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "drift.html").write_text(drift_html(report, reference, live, scan, f"{reference.model or args.dataset}: "
                                                                                   "explanation drift"))
    if not args.no_mlflow:  # the logged drift.json cannot name its own run; the local one does
        summary["mlflow_run_id"] = log_to_mlflow(args.dataset, summary, out_dir)
        (out_dir / "drift.json").write_text(json.dumps(summary, indent=2) + "\n")
    flagged = ", ".join(name for name, raised in report.flags.items() if raised)
    verdict = (f"DRIFT ({flagged})" if report.drifted else "no drift" if report.enough_samples
               else f"too few explanations to judge ({report.samples} < {settings['min_samples']})")
    moved = ", ".join(f"{m['feature']} {m['reference_selection']:.2f}->{m['live_selection']:.2f}"
                      for m in report.moved_features)
    def rounded(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    print(f"{reference.model or args.dataset}: {verdict}; {report.samples} explanations from {scan.files} file(s) "
          f"({scan.bad_lines} bad lines skipped); nDCG {rounded(report.ndcg)}, share shift "
          f"{rounded(report.share_shift)}; moved: {moved or 'none'}\nreport: {out_dir / 'drift.html'}")
    return 1 if report.drifted else 0


if __name__ == "__main__":
    sys.exit(main())
