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
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ngsll_plugins.torchserve import (
    ServerConfig, TorchServeClient, TorchServeError, free_ports, free_worker_port, key_file, start, stop,
    wait_until_ready,
)


def drive(call: Callable[[str, bytes, str], Any], name: str, body: bytes, clients: int, seconds: float) -> dict[str, float]:
    """``clients`` threads send ``body`` through ``call`` (a client's predict or explain) back to back for
    ``seconds``; returns latency stats in ms over the answers that kept the invariant."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                answer = call(name, body, "image/png")
                ok = abs(sum(w["contribution"] for w in answer["weights"]) - answer["logit"]) < 1e-4
            except (TorchServeError, OSError, ValueError, KeyError, TypeError):
                ok = False
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                if ok:
                    latencies.append(elapsed)
                else:
                    errors[0] += 1

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
                    management_url=f"http://127.0.0.1:{ports[1]}", timeout=30,
                )
                wait_until_ready(client, name)
                for endpoint, call in (("predictions", client.predict), ("explanations", client.explain)):
                    drive(call, name, body, 2, 1.0)  # warm-up
                    stats = drive(call, name, body, args.clients, args.seconds)
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
