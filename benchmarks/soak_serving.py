"""Soak test of the TorchServe endpoint on loopback: steady load, a worker killed and a model version
replaced inside the window, and every request accounted for.

Starts its own TorchServe (free loopback ports, token authorisation on, model API on for the version
update, logs in a temporary folder) with the production batching and worker count from ``params.yaml``
(``serve``), then ``--clients`` threads send real test digits (PNG) back to back until ``--seconds`` pass or
``--max-requests`` are sent. At one third of the window one Python worker is killed (SIGKILL); at two thirds
a new archive of the same model (version 2.0) is registered, made the default and the old version
unregistered after a drain (``ngsll_plugins.torchserve.replace_version``). Prints one table::

    .venv/bin/python benchmarks/soak_serving.py --checkpoint models/mnist/fine/k5.pt \\
        --features data/prepared/mnist/features.json --test-split data/prepared/mnist/test.npz [--quick]

Counts: sent; answered 200 with the invariant intact (contributions add up to the logit, the label is
the larger probability); answered 200 but wrong; answered with another status (after the client's
retries of 503/507); lost (no HTTP answer at all). Goal: 0 lost, 0 wrong. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from ngsll_plugins.torchserve import (
    ServerConfig, TorchServeClient, TorchServeError, build_archive, free_ports, free_worker_port, key_file,
    replace_version, start, stop, wait_until_ready,
)


def digit_pngs(test_split: Path, count: int) -> list[bytes]:
    """The first ``count`` test digits of a prepared split as PNG bytes."""
    with np.load(test_split) as stored:
        pixels = stored["pixels"][:count].transpose(0, 2, 3, 1)  # (n, H, W, C) uint8
    pngs = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    return pngs


def worker_pids(worker_port: int, span: int = 16) -> list[int]:
    """Pids of the TorchServe Python workers listening on ``/tmp/.ts.sock.<worker_port + i>``."""
    sockets = {f"/tmp/.ts.sock.{worker_port + offset}".encode() for offset in range(span)}
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            arguments = set((proc / "cmdline").read_bytes().split(b"\0"))
        except OSError:
            continue
        if sockets & arguments:
            found.append(int(proc.name))
    return found


def correct(answer: Any) -> bool:
    """The served invariant: contributions add up to the logit and the label is the likelier class."""
    try:
        total = sum(w["contribution"] for w in answer["weights"])
        likeliest = max(answer["probabilities"], key=answer["probabilities"].get)
        return abs(total - answer["logit"]) < 1e-4 and answer["label"] == likeliest
    except (KeyError, TypeError, ValueError):
        return False


class Tally:
    """Thread-safe counts and latencies of the soak."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.latencies: list[float] = []

    def add(self, outcome: str, milliseconds: float) -> None:
        with self.lock:
            self.counts[outcome] += 1
            if outcome == "ok":
                self.latencies.append(milliseconds)


def soak(client: TorchServeClient, name: str, pngs: list[bytes], clients: int, seconds: float, max_requests: int,
         events: list[tuple[float, str, Any]]) -> tuple[Tally, list[tuple[float, str]], float]:
    """Drive the endpoint; ``events`` are (fraction of the window, label, callable) run from the main thread."""
    tally = Tally()
    sent = [0]
    sent_lock = threading.Lock()
    started = time.monotonic()
    deadline = started + seconds

    def client_loop(index: int) -> None:
        while time.monotonic() < deadline:
            with sent_lock:
                if sent[0] >= max_requests:
                    return
                number = sent[0]
                sent[0] += 1
            body = pngs[(number + index) % len(pngs)]
            begun = time.perf_counter()
            try:
                outcome = "ok" if correct(client.predict(name, body, "image/png")) else "wrong"
            except TorchServeError as error:
                outcome = f"status {error.status}"
            except OSError:  # connection refused or reset, timeout: no HTTP answer
                outcome = "lost"
            tally.add(outcome, (time.perf_counter() - begun) * 1000)

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    log: list[tuple[float, str]] = []
    for fraction, label, action in events:
        while time.monotonic() < started + fraction * seconds and any(t.is_alive() for t in threads):
            time.sleep(0.05)
        if any(t.is_alive() for t in threads):
            detail = action()
            log.append((time.monotonic() - started, f"{label}: {detail}"))
    for thread in threads:
        thread.join()
    return tally, log, time.monotonic() - started


def run_soak(checkpoint: Path, features: Path, pngs: list[bytes], spec: dict[str, int], clients: int,
             seconds: float, max_requests: int) -> dict[str, Any]:
    """Serve ``checkpoint`` on a fresh TorchServe with ``spec`` (batch_size, max_batch_delay, workers) and
    soak it; returns the counts, latencies, event log, wall time and the version served at the end."""
    name = "ngsll-soak"
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        store = root / "model-store"
        threads = spec.get("threads")  # torch threads per worker (params: serve.threads_per_worker)
        build_archive(checkpoint, features, store, name, "1.0", torch_threads=threads)
        build_archive(checkpoint, features, root / "v2", name, "2.0", torch_threads=threads).rename(
            store / f"{name}-v2.mar")
        ports = free_ports(5)
        worker_port = free_worker_port(span=16)
        models = {name: {"mar": f"{name}.mar", **spec}}
        config = ServerConfig(*ports, worker_port=worker_port, model_api=True, models=models)
        start(root, store, config.write(root / "config" / "config.properties"))
        try:
            client = TorchServeClient.from_key_file(key_file(root), inference_url=f"http://127.0.0.1:{ports[0]}",
                                                    management_url=f"http://127.0.0.1:{ports[1]}", timeout=30)
            wait_until_ready(client, name)

            def kill_a_worker() -> str:
                pids = worker_pids(worker_port)
                if not pids:
                    return "no worker found"
                os.kill(pids[0], signal.SIGKILL)
                return f"SIGKILL to worker {pids[0]} (of {len(pids)})"

            def update_version() -> str:
                removed = replace_version(client, name, f"{name}-v2.mar", "2.0", spec["batch_size"],
                                          spec["max_batch_delay"], spec["workers"])
                return f"2.0 registered and made default, {removed} unregistered after a 2 s drain"

            events = [(1 / 3, "worker kill", kill_a_worker), (2 / 3, "version update", update_version)]
            tally, log, wall = soak(client, name, pngs, clients, seconds, max_requests, events)
            served = [version.get("modelVersion") for version in client.describe(name)]
        finally:
            stop(root)
    return {"counts": tally.counts, "latencies": tally.latencies, "log": log, "wall": wall, "served": served,
            "retries": client.retries}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="fine checkpoint (the package stage's)")
    parser.add_argument("--features", type=Path, required=True, help="features.json of the prepared data")
    parser.add_argument("--test-split", type=Path, required=True, help="prepared test split (.npz) for the digits")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--seconds", type=float, default=600.0, help="length of the window (default 10 min)")
    parser.add_argument("--quick", action="store_true", help="a 1-minute window")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-requests", type=int, default=2_000_000, help="stop after this many requests")
    args = parser.parse_args()
    serve = yaml.safe_load(args.params.read_text())["serve"]
    spec = {"batch_size": int(serve["batch_size"]), "max_batch_delay": int(serve["max_batch_delay"]),
            "workers": int(serve.get("workers", 1)), "threads": serve.get("threads_per_worker")}
    result = run_soak(args.checkpoint, args.features, digit_pngs(args.test_split, 500), spec, args.clients,
                      60.0 if args.quick else args.seconds, args.max_requests)
    counts, wall = result["counts"], result["wall"]
    others = {key: value for key, value in counts.items() if key.startswith("status")}
    latencies = result["latencies"]
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [float("nan")] * 99
    print(f"\n{args.clients} clients, {wall:.0f} s window, loopback, workers {spec['workers']} x "
          f"{spec['threads'] or 'all'} torch thread(s), batch "
          f"{spec['batch_size']}, delay {spec['max_batch_delay']} ms; the client retries 503/507 up to "
          f"{result['retries']} times\n")
    for at, what in result["log"]:
        print(f"  at {at:6.1f} s  {what}")
    print(f"  serving at the end: version {result['served']}\n")
    print("| sent | answered 200, correct | answered 200, wrong | answered otherwise | lost | req/s | p50 ms "
          "| p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {sum(counts.values())} | {counts['ok']} | {counts['wrong']} | {sum(others.values())} {others or ''} | "
          f"{counts['lost']} | {counts['ok'] / wall:.0f} | {cuts[49]:.1f} | {cuts[98]:.1f} |")


if __name__ == "__main__":
    main()
