"""Explanation monitoring with real servers: a TorchServe and a KServe server capturing every answered
explanation, the `monitor` command over their capture folders (no drift on test traffic; drift flagged, with
the moved features named, on shifted traffic), and sinks that cannot write answering every request anyway.
"""

from __future__ import annotations

import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ts")
pytest.importorskip("kserve")

from conftest import tiny_args  # noqa: E402
from ngsll import build_model  # noqa: E402
from ngsll.checkpoint import checkpoint_dict  # noqa: E402
from ngsll.importance import accumulate_normlime  # noqa: E402
from ngsll.monitoring import ExplanationProfile  # noqa: E402
from ngsll.simplify import cell_names, image_inputs  # noqa: E402
from ngsll.text import TextEncoder  # noqa: E402
from ngsll.train import TensorData  # noqa: E402
from ngsll_plugins import monitor  # noqa: E402
from ngsll_plugins.kserve_server import start_background, stop_background  # noqa: E402
from ngsll_plugins.torchserve import (  # noqa: E402
    ServerConfig, TorchServeClient, build_archive, free_ports, free_worker_port, start, stop, wait_until_ready,
)
from test_monitoring import digits  # noqa: E402
from test_serving import png_bytes  # noqa: E402
from test_text_serving import CLASSES as TEXT_CLASSES, CORPUS, text_model, write_text_model  # noqa: E402
from test_torchserve import post  # noqa: E402

pytestmark = pytest.mark.slow
CLASSES = ["0-4", "5-9"]
CAPTURE = {"enabled": True, "max_file_mb": 1, "max_total_mb": 8}
OTHER_SENTENCES = [  # another dataset's sentences (movie reviews) for the question classifier
    "the acting is wooden and the plot drags on", "a charming and funny film with a great cast",
    "too long by half and never funny", "an honest , moving portrait of a family",
]


def image_model(folder: Path) -> tuple[Path, Path, object]:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build_model(tiny_args(num_features=49, image_size=28, k=5))
    torch.save(checkpoint_dict(model, {"seed": 0}), folder / "model.pt")
    (folder / "features.json").write_text(json.dumps({"feature_names": cell_names(7), "class_names": CLASSES}))
    return folder / "model.pt", folder / "features.json", model


def write_reference(path: Path, model, x: np.ndarray, z: np.ndarray, names: list[str], classes: list[str],
                    name: str, image: dict | None) -> Path:
    """The reference profile as the explain stage computes it: NormLIME of the model's answers over a split."""
    data = TensorData.from_arrays(x, z, np.zeros(len(z), dtype=np.int64))
    normlime = accumulate_normlime(model.eval(), data, len(classes))
    path.write_text(json.dumps(ExplanationProfile(names, classes, normlime, name, "reference", image).to_dict()))
    return path


def wait_for_records(folder: Path, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = sum(len(p.read_text().splitlines()) for p in folder.glob("capture-*.jsonl")) if folder.is_dir() else 0
        if lines >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"{folder} holds fewer than {count} captured explanations after {timeout} s")


def run_monitor(tmp_path: Path, captures: Path, reference: Path, out: str, monkeypatch) -> tuple[int, dict]:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = tmp_path / "params.yaml"
    params.write_text("monitor:\n  min_samples: 50\n")
    code = monitor.main(["--dataset", "digits", "--captures", str(captures), "--reference", str(reference),
                         "--out", str(tmp_path / out), "--params", str(params)])
    return code, json.loads((tmp_path / out / "drift.json").read_text())


def test_torchserve_captures_every_answer_and_monitor_flags_only_shifted_digits(tmp_path: Path, monkeypatch) -> None:
    checkpoint, features, model = image_model(tmp_path / "model")
    build_archive(checkpoint, features, tmp_path / "store", "ngsll", capture=CAPTURE)
    reference_images = digits(300, seed=1000)
    x, z = image_inputs(reference_images, [7, 7], "luminance")
    reference = write_reference(tmp_path / "reference.json", model, x, z, cell_names(7), CLASSES, "ngsll", {"grid": [7, 7]})
    ports = free_ports(5)
    config = ServerConfig(*ports, worker_port=free_worker_port(), token_auth=False, models={
        "ngsll": {"mar": "ngsll.mar", "batch_size": 4, "max_batch_delay": 5}})
    root = tmp_path / "ts"
    captures = tmp_path / "captures"
    start(root, tmp_path / "store", config.write(root / "config" / "config.properties"),
          env={"NGSLL_CAPTURE_DIR": str(captures)})
    try:
        client = TorchServeClient(f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}", timeout=30)
        wait_until_ready(client, "ngsll")
        url = f"{client.inference_url}/predictions/ngsll"
        bodies = [png_bytes(image) for image in digits(120, seed=2000)]
        with ThreadPoolExecutor(max_workers=4) as pool:
            answers = list(pool.map(lambda body: post(url, body, "image/png"), bodies))
        assert all(status == 200 for status, _ in answers)
        wait_for_records(captures, 120)
        code, calm = run_monitor(tmp_path, captures, reference, "calm", monkeypatch)
        assert code == 0 and not calm["drifted"] and calm["samples"] == 120, calm
        for body in [png_bytes(image) for image in digits(120, shift=8, seed=3000)]:
            assert post(url, body, "image/png")[0] == 200
        wait_for_records(captures, 240)
        code, shifted = run_monitor(tmp_path, captures, reference, "shifted", monkeypatch)
        assert code == 1 and shifted["drifted"] and shifted["flags"]["js"], shifted
        assert shifted["moved_features"][0]["feature"].startswith("r")
        assert "DRIFT" in (tmp_path / "shifted" / "drift.html").read_text()
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[2]}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        assert "NGSLLExplanationsCaptured" in metrics, metrics[-2000:]
    finally:
        stop(root)
    from mlflow import MlflowClient

    runs = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_runs(
        [MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_experiment_by_name("digits").experiment_id])
    assert sorted(run.data.tags["ngsll.monitor.drifted"] for run in runs) == ["false", "true"]


def test_kserve_captures_text_and_flags_another_datasets_sentences(tmp_path: Path, monkeypatch) -> None:
    encoder = TextEncoder.fit(CORPUS, max_length=12)
    checkpoint, features, encoder_file = write_text_model(tmp_path / "model", encoder)
    build_archive(checkpoint, features, tmp_path / "store", "ngsll-text", encoder=encoder_file)
    questions = [CORPUS[i % len(CORPUS)] for i in range(240)]
    x, z = encoder.encode(questions)
    reference = write_reference(tmp_path / "reference.json", text_model(encoder), x, z, encoder.vocabulary.words,
                                TEXT_CLASSES, "ngsll-text", None)
    (port,) = free_ports(1)
    run_dir = tmp_path / "run"
    start_background(run_dir, "ngsll-text", tmp_path / "store", "127.0.0.1", port, 8, capture=CAPTURE)
    try:
        url = f"http://127.0.0.1:{port}"
        v2 = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [60], "data": questions[:60]}]}
        assert post(f"{url}/v2/models/ngsll-text/infer", json.dumps(v2).encode())[0] == 200
        for sentence in questions[60:120]:
            assert post(f"{url}/v1/models/ngsll-text:predict", sentence.encode(), "text/plain")[0] == 200
        wait_for_records(run_dir / "captures", 120)
        code, calm = run_monitor(tmp_path, run_dir / "captures", reference, "calm", monkeypatch)
        assert code == 0 and calm["samples"] == 120, calm
        other = {"instances": [OTHER_SENTENCES[i % 4] for i in range(200)]}
        assert post(f"{url}/v1/models/ngsll-text:predict", json.dumps(other).encode())[0] == 200
        wait_for_records(run_dir / "captures", 320)
        code, shifted = run_monitor(tmp_path, run_dir / "captures", reference, "shifted", monkeypatch)
        assert code == 1 and shifted["drifted"], shifted
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        assert 'ngsll_explanations_captured_total{model="ngsll-text"} 320.0' in metrics
    finally:
        stop_background(run_dir)


def test_a_sink_that_cannot_write_drops_and_counts_and_every_request_is_answered(tmp_path: Path) -> None:
    checkpoint, features, _ = image_model(tmp_path / "model")
    build_archive(checkpoint, features, tmp_path / "store", "ngsll")
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the captures should go")
    (port,) = free_ports(1)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "captures").symlink_to(blocked)  # the capture folder is a file: every write fails
    start_background(run_dir, "ngsll", tmp_path / "store", "127.0.0.1", port, 8, capture=CAPTURE)
    try:
        url = f"http://127.0.0.1:{port}"
        bodies = [json.dumps({"image": image.tolist()}).encode() for image in digits(40)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda body: post(f"{url}/v1/models/ngsll:predict", body), bodies))
        assert [status for status, _ in answers] == [200] * 40
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
                metrics = response.read().decode()
            if 'ngsll_explanations_dropped_total{model="ngsll"} 40.0' in metrics:
                break
            time.sleep(0.2)
        assert 'ngsll_explanations_dropped_total{model="ngsll"} 40.0' in metrics
        assert 'ngsll_explanations_captured_total{model="ngsll"} 0.0' in metrics
    finally:
        stop_background(run_dir)
