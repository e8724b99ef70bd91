"""Throughput of explanation monitoring on one core: captured explanations read and compared per second.

Answers the test split with the packaged model (the served K) through a real capture sink, as a server
would, repeating the split up to ``--records`` explanations, then times ``profile_captures`` (read the
JSON Lines, stream them through NormLIME) and ``compare_profiles`` against the explain stage's reference::

    .venv/bin/python benchmarks/monitor_throughput.py --datasets mnist trec mr --records 200000

One thread for NumPy/torch (the monitor itself is single-threaded); timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ngsll.capture import CaptureSettings, CaptureSink  # noqa: E402
from ngsll.monitoring import ExplanationProfile, compare_profiles, profile_captures  # noqa: E402
from ngsll.serving import load_service  # noqa: E402


def capture_split(dataset: str, folder: Path, records: int, batch: int = 256) -> int:
    """Answer the test split (repeated) with the packaged model into a capture folder; records written."""
    data_dir = Path("data/prepared") / dataset
    serve = json.loads(Path(f"models/{dataset}/serve/config/kserve.json").read_text())
    k = json.loads(Path(f"reports/{dataset}/explain/reference_profile.json").read_text())["source"].split("K=")[-1]
    service = load_service(Path(f"models/{dataset}/fine/k{k}.pt"), data_dir / "features.json", data_dir / "encoder.json")
    with np.load(data_dir / "test.npz") as stored:  # the prepared split (stage_io.save_split's layout)
        inputs = (stored["texts"].tolist() if "tokens" in stored.files
                  else stored["pixels"].astype(np.float32) / 255.0)  # sentences, or (N, C, H, W) in [0, 1]
    sink = CaptureSink(CaptureSettings(folder, max_file_bytes=64 << 20, max_total_bytes=4 << 30,
                                       max_pending_batches=1 << 16), serve["model_name"])
    written = 0
    while written < records:
        for start in range(0, len(inputs), batch):
            chunk = inputs[start:start + min(batch, records - written)]
            sink.offer(service.answer(chunk))
            written += len(chunk)
            if written >= records:
                break
    sink.flush(timeout=600)
    return sink.captured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["mnist"])
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for dataset in args.datasets:
        reference = ExplanationProfile.read(f"reports/{dataset}/explain/reference_profile.json")
        with tempfile.TemporaryDirectory() as folder:
            captured = capture_split(dataset, Path(folder), args.records)
            size = sum(path.stat().st_size for path in Path(folder).glob("capture-*.jsonl"))
            started = time.perf_counter()
            live, scan = profile_captures(folder, reference)
            read = time.perf_counter() - started
            started = time.perf_counter()
            report = compare_profiles(reference, live)
            compared = time.perf_counter() - started
        rows.append((dataset, len(reference.feature_names), captured, size / captured, read, compared, report))
    print("\nmonitor on one core: read + NormLIME (profile_captures), then the comparison (compare_profiles)\n")
    print("| dataset | features d | explanations | bytes each | read s | explanations/s | compare ms | nDCG | drifted |")
    print("|---|---|---|---|---|---|---|---|---|")
    for dataset, d, captured, each, read, compared, report in rows:
        print(f"| {dataset} | {d} | {captured} | {each:.0f} | {read:.2f} | {captured / read:,.0f} | "
              f"{compared * 1000:.1f} | {report.ndcg:.3f} | {report.drifted} |")


if __name__ == "__main__":
    main()
