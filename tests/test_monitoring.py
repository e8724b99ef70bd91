"""Explanation capture and drift: the sink's bounds and drops, reading damaged captures, the drift numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_args
from ngsll import build_model
from ngsll.capture import CaptureSettings, CaptureSink
from ngsll.monitor_report import drift_html
from ngsll.monitoring import ExplanationProfile, compare_profiles, js_divergence, ndcg, profile_captures
from ngsll.normlime import NormLIME
from ngsll.serving import ImageService
from ngsll.simplify import cell_names
from test_serving import digit

CLASSES = ["0-4", "5-9"]


@pytest.fixture(scope="module")
def service() -> ImageService:
    torch.manual_seed(0)
    return ImageService(build_model(tiny_args(num_features=49, image_size=28, k=5)), cell_names(7), CLASSES)


def digits(count: int, shift: int = 0, seed: int = 0) -> np.ndarray:
    """(count, 28, 28) stroke digits, translated ``shift`` pixels right and down (ink leaving the frame is lost)."""
    images = np.stack([digit(seed + i) for i in range(count)])  # (count, 28, 28)
    moved = np.zeros_like(images)
    moved[:, shift:, shift:] = images[:, :28 - shift, :28 - shift]
    return moved


def reference_of(service: ImageService, images: np.ndarray) -> ExplanationProfile:
    """What the explain stage computes over a split: NormLIME of the served model's answers."""
    arrays = service.tensors(images)
    predicted = np.asarray([CLASSES.index(label) for label in arrays["label"]])
    normlime = NormLIME(49, 2).update_sparse(arrays["feature_index"], arrays["weight"], predicted)
    return ExplanationProfile(cell_names(7), CLASSES, normlime, "ngsll", "test digits", {"grid": [7, 7]})


def capture(service: ImageService, images: np.ndarray, folder: Path, **bounds) -> CaptureSink:
    sink = CaptureSink(CaptureSettings(folder, **bounds), "ngsll", "1.0")
    for batch in np.array_split(images, max(1, len(images) // 16)):
        sink.offer(service.answer(batch))
    assert sink.flush()
    return sink


def test_captured_answers_rebuild_the_reference_exactly(service: ImageService, tmp_path: Path) -> None:
    images = digits(64)
    sink = capture(service, images, tmp_path)
    assert (sink.captured, sink.dropped) == (64, 0)
    record = json.loads(next(tmp_path.glob("capture-*.jsonl")).read_text().splitlines()[0])
    assert set(record) == {"time", "model", "version", "class_index", "label", "probabilities", "features"}
    live, scan = profile_captures(tmp_path, reference_of(service, images))
    assert scan.records == 64 and scan.bad_lines == 0
    reference = reference_of(service, images)
    for name in NormLIME.STATE:
        assert np.allclose(getattr(live.normlime, name), getattr(reference.normlime, name)), name
    report = compare_profiles(reference, live, min_samples=10)
    assert report.ndcg == pytest.approx(1.0) and max(report.class_js.values()) == pytest.approx(0, abs=1e-9)
    assert not report.drifted and report.share_shift == pytest.approx(0)


def test_shifted_and_inverted_digits_are_flagged_with_the_moved_cells_named(service: ImageService, tmp_path: Path) -> None:
    reference = reference_of(service, digits(200))
    same = capture(service, digits(100, seed=500), tmp_path / "same")
    moved = capture(service, digits(100, shift=8, seed=500), tmp_path / "moved")
    inverted = capture(service, 1 - digits(100, seed=500), tmp_path / "inverted")
    assert same.captured == moved.captured == inverted.captured == 100
    calm = compare_profiles(reference, profile_captures(tmp_path / "same", reference)[0], min_samples=50)
    assert not calm.drifted, calm.to_dict()
    for folder in ("moved", "inverted"):
        report = compare_profiles(reference, profile_captures(tmp_path / folder, reference)[0], min_samples=50)
        assert report.drifted and report.flags["js"], report.to_dict()
        assert report.moved_features and all(m["feature"].startswith("r") for m in report.moved_features)
    report = compare_profiles(reference, profile_captures(tmp_path / "moved", reference)[0], min_samples=50)
    # the strokes moved 8 pixels (two cells) right and down: ink now lies in cell columns 3-6 only
    gained = [m["feature"] for m in report.moved_features if m["change"] > 0]
    lost = [m["feature"] for m in report.moved_features if m["change"] < 0]
    assert gained and all(int(f[3]) >= 3 for f in gained) and any(int(f[3]) <= 2 for f in lost), report.moved_features
    page = drift_html(report, reference, profile_captures(tmp_path / "moved", reference)[0],
                      profile_captures(tmp_path / "moved", reference)[1], "ngsll drift")
    assert "DRIFT" in page and "data:image/png;base64," in page and gained[0] in page


def test_few_explanations_flag_nothing_and_say_so(service: ImageService, tmp_path: Path) -> None:
    reference = reference_of(service, digits(50))
    capture(service, 1 - digits(10), tmp_path)
    report = compare_profiles(reference, profile_captures(tmp_path, reference)[0], min_samples=100)
    assert not report.drifted and not report.enough_samples and report.samples == 10


def test_truncated_lines_unreadable_files_and_foreign_records_are_skipped_and_reported(
        service: ImageService, tmp_path: Path) -> None:
    capture(service, digits(20), tmp_path)
    (good,) = tmp_path.glob("capture-*.jsonl")
    lines = good.read_text().splitlines(keepends=True)
    (tmp_path / "capture-20990101T000000-1-000001.jsonl").write_text(
        lines[0] + "{not json\n" + '{"time": 1, "class_index": 7, "features": [[3, 1.0, 1.0]]}\n' + lines[1][:40])
    (tmp_path / "capture-20990101T000000-1-000002.jsonl").mkdir()  # a name that cannot be read as a file
    live, scan = profile_captures(tmp_path, reference_of(service, digits(20)))
    assert scan.records == 21 and scan.files == 2
    assert scan.bad_lines == 3  # broken JSON, a class the reference does not have, a truncated last line
    assert any("line 2" in p for p in scan.problems) and any("beyond the reference" in p for p in scan.problems)
    assert any("000002.jsonl: unreadable" in p for p in scan.problems)
    assert live.samples == scan.records


def test_a_read_only_or_full_folder_drops_and_counts_and_never_raises(service: ImageService, tmp_path: Path) -> None:
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("a file where the capture folder should be")
    sink = capture(service, digits(32), blocked / "captures")
    assert (sink.captured, sink.dropped) == (0, 32) and "Error" in sink.last_error
    small = CaptureSink(CaptureSettings(tmp_path / "q", max_pending_batches=1), "ngsll")
    answers = service.answer(digits(4))
    for _ in range(200):  # far faster than the writer: the queue of one batch overflows
        small.offer(answers)
    assert small.flush()
    assert small.captured + small.dropped == 800 and small.dropped > 0


def test_files_rotate_and_the_oldest_go_beyond_the_total_bound(service: ImageService, tmp_path: Path) -> None:
    sink = capture(service, digits(240), tmp_path, max_file_bytes=20_000, max_total_bytes=60_000)
    files = sorted(tmp_path.glob("capture-*.jsonl"))
    assert sink.captured == 240 and len(files) >= 2
    assert sum(f.stat().st_size for f in files) <= 60_000 and all(f.stat().st_size <= 20_000 for f in files)


def test_ndcg_and_js_by_hand() -> None:
    relevance = np.array([3.0, 2.0, 1.0, 0.0])
    assert ndcg(relevance, relevance, 3) == pytest.approx(1.0)
    # live order 2, 1, 0: gains 1, 2, 3 at discounts 1, 1/log2(3), 1/2; ideal 3, 2, 1
    expected = (1 + 2 / np.log2(3) + 3 / 2) / (3 + 2 / np.log2(3) + 1 / 2)
    assert ndcg(relevance, np.array([1.0, 2.0, 3.0, 0.0]), 3) == pytest.approx(expected)
    assert js_divergence(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)
    assert js_divergence(np.array([1.0, 1.0]), np.array([2.0, 2.0])) == pytest.approx(0.0)


def test_a_service_with_a_sink_captures_v1_and_tensor_answers_alike(service: ImageService, tmp_path: Path) -> None:
    images = digits(6)
    service.capture = CaptureSink(CaptureSettings(tmp_path), "ngsll", "2")
    try:
        service.respond([json.dumps({"image": image.tolist()}) for image in images[:3]] + [b"not an image"])
        service.respond_tensors([images[3:]])
        assert service.capture.flush()
    finally:
        service.capture = None
    records = [json.loads(line) for path in sorted(tmp_path.glob("capture-*.jsonl")) for line in path.read_text().splitlines()]
    assert len(records) == 6  # the bad request is not an answer
    expected = service.answer(images)
    for record, answer in zip(records, expected):
        assert record["class_index"] == answer["class_index"] and record["label"] == answer["label"]
        assert [f[0] for f in record["features"]] == [w["index"] for w in answer["weights"]]
        assert record["features"][0][1] == pytest.approx(answer["weights"][0]["weight"], abs=1e-6)
        assert record["version"] == "2"
