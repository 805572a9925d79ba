"""The log of received requests that tests (and ``--request-log``) read."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from asset_generator.emulator.config import RecordedRequest


class Recorder:
    """Thread-safe list of RecordedRequest, optionally mirrored to a JSON-lines file."""

    def __init__(self, log_path: str | Path | None) -> None:
        self._lock = threading.Lock()
        self._records: list[RecordedRequest] = []
        self._log_path = Path(log_path) if log_path is not None else None

    def add(self, record: RecordedRequest) -> RecordedRequest:
        """Keep ``record`` (its status may still change until ``finish``)."""
        with self._lock:
            self._records.append(record)
        return record

    def finish(self, record: RecordedRequest, status: int | None) -> None:
        """Set the answered status and append the record to the log file, if any."""
        with self._lock:
            record.status = status
            if self._log_path is not None:
                line = json.dumps(record.to_json(), ensure_ascii=False, default=str)
                with self._log_path.open("a", encoding="utf-8") as handle:
                    handle.write(line + "\n")

    def snapshot(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._records)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
