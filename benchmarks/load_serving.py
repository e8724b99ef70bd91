"""Load test of the TorchServe endpoint on loopback: latency percentiles, throughput, errors.

Starts its own TorchServe (free ports, token authorisation on, logs in a temporary folder) on the
packaged archive, then drives it with concurrent clients for a bounded time, with and without
explanations and with and without server-side batching, and prints one table::

    .venv/bin/python benchmarks/load_serving.py --mar models/mnist/serve/model-store/ngsll-mnist.mar

Every request is a real test digit (PNG); an answer counts as an error unless it is HTTP 200 with the
invariant intact (contributions add up to the logit). Timings are measured here, never asserted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from ngsll_plugins.torchserve import (
    ServerConfig, TorchServeClient, free_ports, free_worker_port, key_file, start, stop, wait_until_ready,
)


def drive(url: str, token: str, body: bytes, clients: int, seconds: float) -> dict[str, float]:
    """``clients`` threads POST ``body`` back to back for ``seconds``; returns latency stats in ms."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        while time.monotonic() < deadline:
            request = urllib.request.Request(
                url, data=body, method="POST", headers={"Authorization": f"Bearer {token}", "Content-Type": "image/png"}
            )
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    answer = json.loads(response.read())
                ok = abs(sum(w["contribution"] for w in answer["weights"]) - answer["logit"]) < 1e-4
            except (urllib.error.URLError, OSError, ValueError, KeyError):
                ok = False
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                latencies.append(elapsed) if ok else None
                errors[0] += 0 if ok else 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [float("nan")] * 99
    return {"requests": len(latencies) + errors[0], "errors": errors[0], "throughput": len(latencies) / wall,
            "p50": cuts[49], "p95": cuts[94], "p99": cuts[98]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mar", type=Path, required=True, help="model archive from the package stage")
    parser.add_argument("--sample", type=Path, default=Path("models/mnist/serve/sample_digit.png"))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0, help="per scenario")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-batch-delay", type=int, default=5)
    args = parser.parse_args()
    name = args.mar.stem
    body = args.sample.read_bytes()
    rows = []
    for batch_size in (1, args.batch_size):
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            (root / "model-store").mkdir()
            shutil.copy(args.mar, root / "model-store" / args.mar.name)
            ports = free_ports(5)
            config = ServerConfig(*ports, worker_port=free_worker_port(), models={name: {
                "mar": args.mar.name, "batch_size": batch_size, "max_batch_delay": args.max_batch_delay if batch_size > 1 else 0,
            }})
            start(root, root / "model-store", config.write(root / "config" / "config.properties"))
            try:
                client = TorchServeClient.from_key_file(
                    key_file(root), inference_url=f"http://127.0.0.1:{ports[0]}",
                    management_url=f"http://127.0.0.1:{ports[1]}",
                )
                wait_until_ready(client, name)
                for endpoint in ("predictions", "explanations"):
                    url = f"{client.inference_url}/{endpoint}/{name}"
                    drive(url, client.inference_token, body, 2, 1.0)  # warm-up
                    stats = drive(url, client.inference_token, body, args.clients, args.seconds)
                    rows.append((endpoint, batch_size, stats))
            finally:
                stop(root)
    print(f"\n{args.clients} concurrent clients, {args.seconds:.0f} s per row, loopback, one CPU worker\n")
    print("| endpoint | server batch | requests | errors | req/s | p50 ms | p95 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for endpoint, batch_size, s in rows:
        print(f"| {endpoint} | {batch_size} | {s['requests']} | {s['errors']} | {s['throughput']:.0f} | "
              f"{s['p50']:.1f} | {s['p95']:.1f} | {s['p99']:.1f} |")


if __name__ == "__main__":
    main()
