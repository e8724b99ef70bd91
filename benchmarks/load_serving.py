"""Load test of the serving endpoints on loopback: latency percentiles, throughput, errors.

Starts its own TorchServe (free ports, token authorisation on, logs in a temporary folder) on the
packaged archive, then drives it with concurrent clients for a bounded time, with and without
explanations and with and without server-side batching, and prints one table::

    .venv/bin/python benchmarks/load_serving.py --mar models/mnist/serve/model-store/ngsll-mnist.mar

``--compare`` drives TorchServe (its production batching) and the KServe model server
(``ngsll_plugins.kserve_server``, greedy batching) side by side on the same archive, the same digit and
the same client counts: TorchServe's ``/predictions`` and ``/explanations``, KServe's v1 ``:predict`` and
``:explain`` and v2 ``/infer`` (the PNG as a BYTES tensor)::

    .venv/bin/python benchmarks/load_serving.py --mar models/mnist/serve/model-store/ngsll-mnist.mar --compare

Every request is a real test digit (PNG); an answer counts as an error unless it is HTTP 200 with the
invariant intact (contributions add up to the logit). Timings are measured here, never asserted.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import statistics
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ngsll_plugins.torchserve import (
    ServerConfig, TorchServeClient, TorchServeError, free_ports, free_worker_port, key_file, start, stop,
    wait_until_ready,
)


def keeps_invariant(answer: Any) -> bool:
    """A v1 answer's (or a one-sample v2 response's) contributions add up to its logit."""
    if "outputs" in answer:  # Open Inference Protocol v2
        outputs = {out["name"]: out["data"] for out in answer["outputs"]}
        return abs(sum(outputs["contribution"]) - outputs["logit"][0]) < 1e-4
    return abs(sum(w["contribution"] for w in answer["weights"]) - answer["logit"]) < 1e-4


def drive(call: Callable[[str, bytes, str], Any], name: str, body: bytes, clients: int, seconds: float,
          content_type: str = "image/png") -> dict[str, float]:
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
                ok = keeps_invariant(call(name, body, content_type))
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


# --grid: (workers, server batch size, max batch delay ms) candidates for the production config
GRID = ((1, 1, 0), (2, 1, 0), (1, 8, 1), (1, 8, 5), (2, 4, 1), (2, 8, 1), (2, 8, 5))


def measure(mar: Path, body: bytes, workers: int, batch_size: int, delay: int, client_counts: list[int],
            seconds: float, endpoints: tuple[str, ...], capture_dir: Path | None = None,
            ) -> list[tuple[str, int, dict[str, float]]]:
    """Start a TorchServe with one configuration and drive each endpoint with each client count; with
    ``capture_dir`` an archive whose model config captures writes its explanations there."""
    name = mar.stem
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "model-store").mkdir()
        shutil.copy(mar, root / "model-store" / mar.name)
        ports = free_ports(5)
        config = ServerConfig(*ports, worker_port=free_worker_port(), models={name: {
            "mar": mar.name, "batch_size": batch_size, "max_batch_delay": delay if batch_size > 1 else 0,
            "workers": workers,
        }})
        start(root, root / "model-store", config.write(root / "config" / "config.properties"),
              env={"NGSLL_CAPTURE_DIR": str(capture_dir)} if capture_dir else None)
        try:
            client = TorchServeClient.from_key_file(
                key_file(root), inference_url=f"http://127.0.0.1:{ports[0]}",
                management_url=f"http://127.0.0.1:{ports[1]}", timeout=30,
            )
            wait_until_ready(client, name)
            calls = {"predictions": client.predict, "explanations": client.explain}
            for endpoint in endpoints:
                drive(calls[endpoint], name, body, 2, 1.0)  # warm-up
                for clients in client_counts:
                    rows.append((endpoint, clients, drive(calls[endpoint], name, body, clients, seconds)))
        finally:
            stop(root)
    return rows


def kserve_post(url: str) -> Callable[[str, bytes, str], Any]:
    """A call for :func:`drive`: POST to ``url`` (``{name}`` filled in), no retries, JSON answer or an error."""
    def call(name: str, body: bytes, content_type: str) -> Any:
        request = urllib.request.Request(url.format(name=name), data=body, headers={"Content-Type": content_type})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    return call


def compare(mar: Path, png: bytes, client_counts: list[int], seconds: float, serve: dict) -> list[tuple]:
    """TorchServe then the KServe server, each alone on the machine, same requests, both in the production
    config of params.yaml's ``serve`` (TorchServe: workers, batch size, delay; KServe: its batch cap)."""
    from ngsll_plugins.kserve_server import start_background, stop_background

    kserve_batch = int(serve["kserve_max_batch_size"])
    rows = [("TorchServe", "native", endpoint, clients, stats) for endpoint, clients, stats in
            measure(mar, png, int(serve["workers"]), int(serve["batch_size"]), int(serve["max_batch_delay"]),
                    client_counts, seconds, ("predictions", "explanations"))]
    v2 = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                 "data": [base64.b64encode(png).decode()]}]}).encode()
    with tempfile.TemporaryDirectory() as folder:
        store = Path(folder) / "model-store"
        store.mkdir()
        shutil.copy(mar, store / mar.name)
        (port,) = free_ports(1)
        start_background(Path(folder) / "run", mar.stem, store, "127.0.0.1", port, kserve_batch)
        base = f"http://127.0.0.1:{port}"
        scenarios = (("v1", ":predict", kserve_post(base + "/v1/models/{name}:predict"), png, "image/png"),
                     ("v1", ":explain", kserve_post(base + "/v1/models/{name}:explain"), png, "image/png"),
                     ("v2", "/infer", kserve_post(base + "/v2/models/{name}/infer"), v2, "application/json"))
        try:
            for protocol, endpoint, call, body, content_type in scenarios:
                drive(call, mar.stem, body, 2, 1.0, content_type)  # warm-up
                for clients in client_counts:
                    rows.append(("KServe", protocol, endpoint, clients,
                                 drive(call, mar.stem, body, clients, seconds, content_type)))
        finally:
            stop_background(Path(folder) / "run")
    return rows


def capture_cost(mar: Path, png: bytes, client_counts: list[int], seconds: float, serve: dict) -> list[tuple]:
    """Explanations per second with capture off and on, on both servers (the archive must capture when
    asked: the package stage's production archive does)."""
    from ngsll_plugins.kserve_server import start_background, stop_background

    capture = dict(serve["capture"], enabled=True)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for label, captures in (("off", None), ("on", Path(folder) / "ts-captures")):
            for _, clients, stats in measure(mar, png, int(serve["workers"]), int(serve["batch_size"]),
                                             int(serve["max_batch_delay"]), client_counts, seconds, ("explanations",),
                                             capture_dir=captures):
                rows.append(("TorchServe", label, clients, stats, _captured(captures)))
        store = Path(folder) / "model-store"
        store.mkdir()
        shutil.copy(mar, store / mar.name)
        for label in ("off", "on"):
            (port,) = free_ports(1)
            run_dir = Path(folder) / f"kserve-{label}"
            start_background(run_dir, mar.stem, store, "127.0.0.1", port, int(serve["kserve_max_batch_size"]),
                             capture=capture if label == "on" else None)
            call = kserve_post(f"http://127.0.0.1:{port}/v1/models/{{name}}:explain")
            try:
                drive(call, mar.stem, png, 2, 1.0)  # warm-up
                for clients in client_counts:
                    rows.append(("KServe", label, clients, drive(call, mar.stem, png, clients, seconds),
                                 _captured(run_dir / "captures" if label == "on" else None)))
            finally:
                stop_background(run_dir)
    return rows


def _captured(folder: Path | None) -> int | None:
    """Records in a capture folder so far (None without capture)."""
    if folder is None:
        return None
    return sum(len(path.read_bytes().splitlines()) for path in folder.glob("capture-*.jsonl")) if folder.is_dir() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mar", type=Path, required=True, help="model archive from the package stage")
    parser.add_argument("--sample", type=Path, default=Path("models/mnist/serve/sample/sample.png"))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0, help="per scenario")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-batch-delay", type=int, default=5)
    parser.add_argument("--workers", type=int, default=1, help="Python workers of the model")
    parser.add_argument("--compare", action="store_true", help="TorchServe and KServe side by side at 1, 8, 64 clients")
    parser.add_argument("--capture", action="store_true",
                        help="explanations/s with explanation capture off and on, both servers, 1 and 64 clients")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="--compare/--capture: its serve section")
    parser.add_argument("--grid", action="store_true",
                        help=f"explanations at 1 and 64 clients for each (workers, batch, delay ms) in {GRID}")
    args = parser.parse_args()
    body = args.sample.read_bytes()
    if args.capture:
        import yaml

        serve = yaml.safe_load(args.params.read_text())["serve"]
        rows = capture_cost(args.mar, body, [1, 64], args.seconds, serve)
        print(f"\n:explain / /explanations, {args.seconds:.0f} s per row, loopback, 2 cores, production configs\n")
        print("| server | capture | clients | requests | errors | req/s | captured | p50 ms | p99 ms |")
        print("|---|---|---|---|---|---|---|---|---|")
        for server, label, clients, s, captured in rows:
            print(f"| {server} | {label} | {clients} | {s['requests']} | {s['errors']} | {s['throughput']:.0f} | "
                  f"{'-' if captured is None else captured} | {s['p50']:.1f} | {s['p99']:.1f} |")
        return
    if args.compare:
        import yaml

        serve = yaml.safe_load(args.params.read_text())["serve"]
        rows = compare(args.mar, body, [1, 8, 64], args.seconds, serve)
        print(f"\n{args.seconds:.0f} s per row, loopback, 2 cores. TorchServe: {serve['workers']} worker(s) x "
              f"{serve['threads_per_worker']} torch thread(s), batch {serve['batch_size']}, {serve['max_batch_delay']} ms "
              f"delay, token on. KServe: one process, torch on every core, greedy batches of at most "
              f"{serve['kserve_max_batch_size']} requests\n")
        print("| server | protocol | endpoint | clients | requests | errors | req/s | p50 ms | p95 ms | p99 ms |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for server, protocol, endpoint, clients, s in rows:
            print(f"| {server} | {protocol} | {endpoint} | {clients} | {s['requests']} | {s['errors']} | "
                  f"{s['throughput']:.0f} | {s['p50']:.1f} | {s['p95']:.1f} | {s['p99']:.1f} |")
        return
    if args.grid:
        print("| workers | server batch | delay ms | clients | requests | errors | req/s | p50 ms | p95 ms | p99 ms |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for workers, batch_size, delay in GRID:
            for _, clients, s in measure(args.mar, body, workers, batch_size, delay, [1, 64], args.seconds,
                                         ("explanations",)):
                print(f"| {workers} | {batch_size} | {delay} | {clients} | {s['requests']} | {s['errors']} | "
                      f"{s['throughput']:.0f} | {s['p50']:.1f} | {s['p95']:.1f} | {s['p99']:.1f} |", flush=True)
        return
    rows = []
    for batch_size in (1, args.batch_size):
        delay = args.max_batch_delay if batch_size > 1 else 0
        for endpoint, _, stats in measure(args.mar, body, args.workers, batch_size, delay, [args.clients],
                                          args.seconds, ("predictions", "explanations")):
            rows.append((endpoint, batch_size, stats))
    print(f"\n{args.clients} concurrent clients, {args.seconds:.0f} s per row, loopback, "
          f"{args.workers} CPU worker(s)\n")
    print("| endpoint | server batch | requests | errors | req/s | p50 ms | p95 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for endpoint, batch_size, s in rows:
        print(f"| {endpoint} | {batch_size} | {s['requests']} | {s['errors']} | {s['throughput']:.0f} | "
              f"{s['p50']:.1f} | {s['p95']:.1f} | {s['p99']:.1f} |")


if __name__ == "__main__":
    main()
