"""The completed-message journal and outbox: ids that ran, with what they must publish."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker import logs

log = logs.get(__name__)


@dataclass(frozen=True)
class Outgoing:
    """One message to publish: where it goes and its body."""

    exchange: str
    routing_key: str
    body: bytes
    #: Replies are mandatory: an unroutable reply is reported, not dropped silently.
    mandatory: bool = False

    def to_json(self) -> dict[str, Any]:
        """Plain data for the journal line."""
        return {"x": self.exchange, "rk": self.routing_key, "b": self.body.decode(),
                "m": self.mandatory}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outgoing:
        """Back from a journal line."""
        return cls(str(data["x"]), str(data["rk"]), str(data["b"]).encode(), bool(data["m"]))


@dataclass(frozen=True)
class Entry:
    """A completed message: when, and the end event and reply it produced."""

    unique_id: str
    completed_at: float
    outgoing: tuple[Outgoing, ...]


class Journal:
    """Append-only JSON lines in state_dir, bounded by age and count, loaded at start."""

    def __init__(self, state_dir: str, *, max_entries: int = 100000,
                 max_age: float = 7 * 86400, fsync: bool = False) -> None:
        self.path = Path(state_dir) / "journal.jsonl"
        self.max_entries = max_entries
        self.max_age = max_age
        self.fsync = fsync
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._load()
        self._lines = len(self._entries)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (owned for life)

    def _load(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, 1):
                try:
                    data = json.loads(line)
                    entry = Entry(data["id"], float(data["t"]),
                                  tuple(Outgoing.from_json(o) for o in data["out"]))
                except (ValueError, KeyError, TypeError):
                    # A line cut short by a crash mid-write: that message did not
                    # complete as far as anyone knows, so it simply runs again.
                    log.warning("journal_line_skipped", line=number)
                    continue
                self._entries[entry.unique_id] = entry
                self._entries.move_to_end(entry.unique_id)
        self._trim(time.time())
        self._compact()
        log.info("journal_loaded", entries=len(self._entries), path=str(self.path))

    def _trim(self, now: float) -> None:
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if len(self._entries) <= self.max_entries and now - oldest.completed_at <= self.max_age:
                break
            self._entries.popitem(last=False)

    def _compact(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            for entry in self._entries.values():
                handle.write(self._line(entry))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        self._lines = len(self._entries)

    @staticmethod
    def _line(entry: Entry) -> str:
        return json.dumps({"id": entry.unique_id, "t": entry.completed_at,
                           "out": [o.to_json() for o in entry.outgoing]}) + "\n"

    def get(self, unique_id: str) -> Entry | None:
        """The entry for a completed id, or None."""
        with self._lock:
            return self._entries.get(unique_id)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def record(self, unique_id: str, outgoing: list[Outgoing]) -> Entry:
        """Mark an id completed, keeping what it must publish; written before publishing."""
        entry = Entry(unique_id, time.time(), tuple(outgoing))
        with self._lock:
            self._file.write(self._line(entry))
            # flush() puts it in the kernel: it survives the worker being killed.
            # fsync (optional) also survives the machine losing power.
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())
            self._entries[unique_id] = entry
            self._lines += 1
            self._trim(entry.completed_at)
            if self._lines > 2 * self.max_entries:
                self._file.close()
                self._compact()
                self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        return entry

    def close(self) -> None:
        """Flush and close the file."""
        with self._lock:
            self._file.close()
