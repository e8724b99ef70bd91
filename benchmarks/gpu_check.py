"""GPU check: the pipeline's own training stages on CUDA, tracked in MLflow, served from a CPU TorchServe.

One short, self-contained run (well inside 10 minutes on a GPU) that prints one summary table::

    .venv/bin/python benchmarks/gpu_check.py                      # CUDA if present, else it says so and stops
    .venv/bin/python benchmarks/gpu_check.py --device cpu         # the same run on the CPU (how it is tested)
    .venv/bin/python benchmarks/gpu_check.py --install            # first `make install` (the README way)

Steps, all in a temporary folder with its own MLflow store (``sqlite:///.../mlflow.db``):

1. the prepared MNIST splits: ``--data-dir`` (default ``data/prepared/mnist`` of a `make run`), or
   ``--prepare`` to run the fetch / validate / prepare stage scripts into the folder (needs the registry);
2. ``pipeline/train.py --stage coarse`` and ``--stage fine --k 5`` with ``params.yaml`` at ``device`` and
   ``--epochs`` epochs per phase (default 2 coarse, 1 fine);
3. checks that the fine runs record ``device`` (e.g. ``cuda:0 (NVIDIA H200)``) and, on CUDA, the GPU's name
   (tag ``gpu``) and peak memory;
4. loads the trained checkpoint on the CPU, packages it and answers one request through the packaged
   handler on a real TorchServe (loopback), checking that the contributions add up to the logit;
5. seconds per epoch against the CPU figures of the committed pipeline run (``metrics/mnist/history``), and
   ms per sample of batched explanations (K = 1, 5, 10 heads of the same model) beside the paper's Table 2
   (2.55 / 6.19 / 10.76 ms on an RTX 2080Ti).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
PAPER_MS = {1: 2.55, 5: 6.19, 10: 10.76}  # Table 2 of the paper, RTX 2080Ti, per sample


def stage(script: str, *arguments: str, env: dict[str, str], cwd: Path) -> float:
    """Run one pipeline stage script in ``cwd`` (MLflow artifacts land there); its wall time in seconds."""
    started = time.monotonic()
    subprocess.run([sys.executable, str(REPO / "pipeline" / script), *arguments], cwd=cwd, env=env, check=True)
    return time.monotonic() - started


def prepare(work: Path, env: dict[str, str], params: Path) -> tuple[Path, Path]:
    """fetch -> validate_raw -> prepare -> validate_prepared into ``work``; (data dir, prepared report)."""
    raw, data, reports = work / "raw", work / "prepared", work / "reports"
    common = ["--dataset", "mnist", "--params", str(params)]
    stage("source.py", "--out", str(work / "source.json"), *common, env=env, cwd=work)
    stage("fetch.py", "--source", str(work / "source.json"), "--out", str(raw / "mnist"), "--info",
          str(raw / "mnist.json"), "--downloads", str(work / "downloads"), *common, env=env, cwd=work)
    stage("validate_raw.py", "--raw", str(raw / "mnist"), "--info", str(raw / "mnist.json"), "--report",
          str(reports / "raw.json"), "--html", str(reports / "raw.html"), *common, env=env, cwd=work)
    stage("prepare.py", "--raw", str(raw / "mnist"), "--info", str(raw / "mnist.json"), "--checked",
          str(reports / "raw.json"), "--out-dir", str(data), "--summary", str(work / "data.json"), *common, env=env,
          cwd=work)
    stage("validate_prepared.py", "--data-dir", str(data), "--report", str(reports / "prepared.json"), "--html",
          str(reports / "prepared.html"), *common, env=env, cwd=work)
    return data, reports / "prepared.json"


def serve_one_request(checkpoint: Path, features: Path, test_split: Path, work: Path) -> dict:
    """Package the checkpoint, start a CPU TorchServe on free loopback ports, answer one test digit."""
    import io

    import numpy as np
    from PIL import Image

    from ngsll_plugins.torchserve import (
        ServerConfig, TorchServeClient, build_archive, free_ports, free_worker_port, start, stop, wait_until_ready,
    )

    build_archive(checkpoint, features, work / "model-store", "ngsll-gpu-check")
    ports = free_ports(5)
    config = ServerConfig(*ports, worker_port=free_worker_port(), token_auth=False,
                          models={"ngsll-gpu-check": {"mar": "ngsll-gpu-check.mar"}})
    server_env = {"CUDA_VISIBLE_DEVICES": ""}  # the CPU server of a CUDA-trained model
    start(work / "server", work / "model-store", config.write(work / "server" / "config.properties"), env=server_env)
    try:
        client = TorchServeClient(f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}", timeout=60)
        wait_until_ready(client, "ngsll-gpu-check")
        with np.load(test_split) as stored:
            pixels = stored["pixels"][0, 0]  # (H, W) of the first test digit
        png = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(png, format="PNG")
        return client.predict("ngsll-gpu-check", png.getvalue(), "image/png")
    finally:
        stop(work / "server")


def explanation_ms(checkpoint: Path, test_split: Path, device: torch.device) -> dict[int, tuple[float, float]]:
    """Batched (256) and one-at-a-time ms per sample of prediction + top-K weights at K = 1, 5, 10."""
    import numpy as np

    from ngsll.checkpoint import model_from_checkpoint
    from ngsll.evaluation import time_explanations

    model = model_from_checkpoint(torch.load(checkpoint, map_location="cpu", weights_only=True)).to(device).eval()
    with np.load(test_split) as stored:
        x = torch.from_numpy(stored["pixels"][:2048].astype(np.float32) / 255.0).to(device)  # (n, C, H, W)
        z = torch.from_numpy(stored["z"][:2048].astype(np.float32)).to(device)
    timings = {}
    for k in PAPER_MS:
        model.set_gate(k, model.args.tau)
        result = time_explanations(model, x, z, batch_size=256, single_samples=100)
        timings[k] = (result["ms_per_sample_batched"], result["ms_per_sample_single"])
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--epochs", type=int, default=2, help="coarse epochs (fine: half, at least one)")
    parser.add_argument("--data-dir", type=Path, default=REPO / "data/prepared/mnist")
    parser.add_argument("--checked", type=Path, default=REPO / "reports/mnist/validation/prepared.json")
    parser.add_argument("--prepare", action="store_true", help="fetch and prepare MNIST here instead")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--install", action="store_true", help="run `make install` first (the README way)")
    args = parser.parse_args()
    if args.install:
        subprocess.run(["make", "install"], cwd=REPO, check=True)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --device cpu to check the script itself")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ngsll-gpu-check-") as folder:
        work = Path(folder)
        params = yaml.safe_load(args.params.read_text())
        params["device"] = args.device
        train = params["defaults"]["image"]["train"]
        train["ks"] = [5]
        train["coarse"].update(max_epochs=args.epochs, patience=args.epochs)
        train["fine"].update(max_epochs=max(1, args.epochs // 2), patience=max(1, args.epochs // 2))
        params_path = work / "params.yaml"
        params_path.write_text(yaml.safe_dump(params, sort_keys=False))
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
               "MLFLOW_DISABLE_TELEMETRY": "true"}
        data_dir, checked = prepare(work, env, params_path) if args.prepare else (args.data_dir, args.checked)
        coarse, fine = work / "coarse.pt", work / "fine" / "k5.pt"
        common = ["--dataset", "mnist", "--data-dir", str(data_dir), "--checked", str(checked), "--params",
                  str(params_path)]
        coarse_s = stage("train.py", "--stage", "coarse", *common, "--out", str(coarse),
                         "--history", str(work / "coarse.json"), env=env, cwd=work)
        fine_s = stage("train.py", "--stage", "fine", "--k", "5", "--coarse", str(coarse), *common,
                       "--out", str(work / "fine"), "--history", str(work / "history"), env=env, cwd=work)

        import mlflow

        client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
        experiment = client.get_experiment_by_name("mnist")  # a scratch store: only this check's runs
        runs = client.search_runs([experiment.experiment_id], "attributes.run_name = 'fine'")
        run = runs[0].data
        device_param, gpu = run.params.get("device", ""), run.tags.get("gpu")
        checks = {"fine run records the device": args.device in device_param,
                  ("fine run records the GPU name" if args.device == "cuda" else "fine run records no GPU name"):
                      gpu is not None if args.device == "cuda" else gpu is None}
        answer = serve_one_request(fine, data_dir / "features.json", data_dir / "test.npz", work)
        total = sum(w["contribution"] for w in answer["weights"])
        checks["CPU TorchServe answers the trained model, contributions add up to the logit"] = (
            abs(total - answer["logit"]) < 1e-4)
        history = {name: json.loads(path.read_text())
                   for name, path in (("coarse", work / "coarse.json"), ("fine", work / "history" / "k5.json"))}
        cpu_history = {name: REPO / f"metrics/mnist/history/{file}.json"
                       for name, file in (("coarse", "coarse"), ("fine", "fine/k5"))}
        timings = explanation_ms(fine, data_dir / "test.npz", torch.device(args.device))

    def mean_epoch(rows: list[dict]) -> float:
        return sum(row["seconds"] for row in rows) / len(rows)

    print(f"\nGPU check on {device_param} ({'gpu ' + gpu if gpu else 'no GPU'}), torch {torch.__version__}, "
          f"{time.monotonic() - started:.0f} s wall (coarse stage {coarse_s:.0f} s, fine stage {fine_s:.0f} s)\n")
    print("| check | result |\n|---|---|")
    for name, passed in checks.items():
        print(f"| {name} | {'passed' if passed else 'FAILED'} |")
    print("\n| phase | s per epoch here | s per epoch, committed CPU run | val accuracy (last epoch) |")
    print("|---|---|---|---|")
    for name, rows in history.items():
        reference = cpu_history[name]
        cpu = f"{mean_epoch(json.loads(reference.read_text())):.1f}" if reference.exists() else "-"
        print(f"| {name} | {mean_epoch(rows):.1f} | {cpu} | {rows[-1].get('val_accuracy', float('nan')):.4f} |")
    print("\n| ms per sample (prediction + top-K weights) | K = 1 | K = 5 | K = 10 |\n|---|---|---|---|")
    print("| batched (256), here | " + " | ".join(f"{timings[k][0]:.3f}" for k in PAPER_MS) + " |")
    print("| one at a time, here | " + " | ".join(f"{timings[k][1]:.3f}" for k in PAPER_MS) + " |")
    print("| paper Table 2 (RTX 2080Ti) | " + " | ".join(f"{PAPER_MS[k]:.2f}" for k in PAPER_MS) + " |")
    if not all(checks.values()):
        raise SystemExit("GPU check: a check FAILED (see the table)")


if __name__ == "__main__":
    main()
