"""Capture of served explanations: every answer's K weights appended to a bounded, rotated JSON Lines sink.

A server adapter hands each answered batch to :meth:`CaptureSink.offer`, which only puts the batch on a
bounded queue (one call per batch, no work per sample on the request path). A background thread writes
one line per answer::

    {"time": 1764700000.12, "model": "ngsll-mnist", "version": "1.0", "class_index": 1, "label": "5-9",
     "probabilities": [0.02, 0.98], "features": [[17, 5.1, 0.61], [24, -2.0, 0.4], ...]}

(``features``: the answer's (index, weight, value) triples). Files are ``capture-<UTC time>-<pid>-<n>.jsonl``
in the configured folder, rotated at ``max_file_bytes``; the oldest are deleted while the folder holds more
than ``max_total_bytes``. A full queue, a full disk or a read-only folder never delays or fails a request:
the answers are dropped and counted (:attr:`CaptureSink.dropped`); :attr:`CaptureSink.captured` counts
the written ones. A process that exits normally first writes what is queued (for up to 5 s); one that is
killed loses its queue (at most ``max_pending_batches`` batches).
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ngsll.errors import ConfigError

CAPTURE_GLOB = "capture-*.jsonl"


@dataclass(frozen=True)
class CaptureSettings:
    """Where and how much a server captures.

    folder: the capture folder (created if missing). max_file_bytes: rotate a file beyond this (default
    16 MiB). max_total_bytes: delete the oldest files beyond this (default 512 MiB). max_pending_batches:
    answered batches waiting for the writer before new ones are dropped (default 1024).
    """

    folder: Path
    max_file_bytes: int = 16 << 20
    max_total_bytes: int = 512 << 20
    max_pending_batches: int = 1024

    def __post_init__(self) -> None:
        if self.max_file_bytes < 1 or self.max_total_bytes < self.max_file_bytes or self.max_pending_batches < 1:
            raise ConfigError(f"capture needs 0 < max_file_bytes <= max_total_bytes and max_pending_batches >= 1, "
                              f"got {self.max_file_bytes}, {self.max_total_bytes}, {self.max_pending_batches}")

    @classmethod
    def from_dict(cls, folder: str | Path, settings: dict[str, Any]) -> CaptureSettings:
        """From a config's ``capture`` mapping (``max_file_mb``, ``max_total_mb``, ``max_pending_batches``)."""
        unknown = set(settings) - {"enabled", "max_file_mb", "max_total_mb", "max_pending_batches"}
        if unknown:
            raise ConfigError(f"unknown capture settings {sorted(unknown)}; accepted: enabled, max_file_mb, "
                              "max_total_mb, max_pending_batches")
        return cls(Path(folder), int(float(settings.get("max_file_mb", 16)) * (1 << 20)),
                   int(float(settings.get("max_total_mb", 512)) * (1 << 20)),
                   int(settings.get("max_pending_batches", 1024)))


class CaptureSink:
    """Append answered explanations to rotated JSON Lines files from a background thread (see module doc).

    Args:
        settings: folder and bounds.
        model: the served model's name, written into every record.
        version: its version.
    """

    def __init__(self, settings: CaptureSettings, model: str, version: str = "") -> None:
        self.settings, self.model, self.version = settings, model, version
        self._queue: queue.Queue = queue.Queue(maxsize=settings.max_pending_batches)
        self._lock = threading.Lock()
        self.captured = 0
        self.dropped = 0
        self.last_error: str | None = None
        self._file = None
        self._file_bytes = 0
        self._files_opened = 0
        self._thread = threading.Thread(target=self._write_forever, name="ngsll-capture", daemon=True)
        self._thread.start()
        atexit.register(self.flush, 5.0)  # a server that exits normally writes what it answered

    def offer(self, answers: list[dict[str, Any]]) -> None:
        """Queue one answered batch (the service's answer dicts); never blocks, never raises."""
        self._enqueue(answers, len(answers))

    def offer_tensors(self, arrays: dict[str, Any]) -> None:
        """Queue one batch answered as arrays (:meth:`ngsll.serving.Service.tensors`); never blocks or raises."""
        self._enqueue(arrays, len(arrays.get("label", ())))

    def _enqueue(self, batch: list[dict[str, Any]] | dict[str, Any], count: int) -> None:
        if not count:
            return
        try:
            self._queue.put_nowait((time.time(), batch))
        except queue.Full:
            self._count(dropped=count)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued batch is written or dropped; False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def _count(self, captured: int = 0, dropped: int = 0) -> None:
        with self._lock:
            self.captured += captured
            self.dropped += dropped

    def _write_forever(self) -> None:
        while True:
            stamp, batch = self._queue.get()
            records = self._records(batch)
            try:
                self._write("".join(json.dumps({"time": round(stamp, 3), "model": self.model, "version": self.version,
                                                **record}, separators=(",", ":")) + "\n"
                                    for record in records).encode())
                self._count(captured=len(records))
            except (OSError, ValueError, TypeError, KeyError) as error:  # full disk, read-only folder, odd answer
                self.last_error = f"{type(error).__name__}: {error}"
                self._count(dropped=len(records))
                self._close()
            finally:
                self._queue.task_done()

    @staticmethod
    def _records(batch: list[dict[str, Any]] | dict[str, Any]) -> list[dict[str, Any]]:
        """The records of one batch: answer dicts, or the arrays of a tensor answer (padding left out)."""
        if isinstance(batch, list):
            return [{"class_index": a["class_index"], "label": a["label"], "probabilities": list(a["probabilities"].values()),
                     "features": [[w["index"], w["weight"], w["value"]] for w in a["weights"]]} for a in batch]
        columns = [batch[name].tolist() for name in ("class_index", "label", "probabilities", "feature_index",
                                                      "weight", "value")]
        return [{"class_index": c, "label": label, "probabilities": p,
                 "features": [[j, w, v] for j, w, v in zip(index, weight, value) if j >= 0]}
                for c, label, p, index, weight, value in zip(*columns)]

    def _write(self, data: bytes) -> None:
        if self._file is None or self._file_bytes + len(data) > self.settings.max_file_bytes:
            self._rotate()
        self._file.write(data)
        self._file.flush()
        self._file_bytes += len(data)

    def _rotate(self) -> None:
        self._close()
        folder = self.settings.folder
        folder.mkdir(parents=True, exist_ok=True)
        self._files_opened += 1
        name = f"capture-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}-{self._files_opened:06d}.jsonl"
        self._file = open(folder / name, "ab")
        self._file_bytes = 0
        self._prune(keep=folder / name)

    def _prune(self, keep: Path) -> None:
        """Delete the oldest capture files while the folder holds more than ``max_total_bytes`` (other
        processes of the same server may prune the same folder: a file gone meanwhile is skipped)."""
        sizes = []
        for path in self.settings.folder.glob(CAPTURE_GLOB):
            try:
                sizes.append((path.stat().st_mtime, path.name, path, path.stat().st_size))
            except FileNotFoundError:
                continue
        total = sum(size for *_, size in sizes) + self.settings.max_file_bytes  # room for the file just opened
        for _, _, path, size in sorted(sizes):
            if total <= self.settings.max_total_bytes:
                break
            if path != keep:
                path.unlink(missing_ok=True)
                total -= size

    def _close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
