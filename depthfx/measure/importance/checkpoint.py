"""The Fisher proxy's running sums, saved after every batch so a table resumes.

The proxy works batch by batch (every entry's region runs on each batch), so a batch is its
unit of progress. After each one the sums of every entry, the number of batches done and the
label generator's state are written atomically to ``proxy-<digest of the settings>.json`` in
the cache folder. A run with the same settings (model, entries, merge groups, the proxy's
input data, seed, batch size, score) continues after the last batch saved and ends with the same
scores, bit for bit, as an uninterrupted run; other settings use another file. A finished table
is read back without running anything.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from depthfx.io import atomic_write


class ProxyCheckpoint:
    """One proxy run's saved state in ``folder``."""

    def __init__(self, folder: str | Path, settings: dict[str, Any]) -> None:
        self.settings = json.loads(json.dumps(settings))  # as it reads back from the file
        text = json.dumps(self.settings, sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        self.path = Path(folder) / f"proxy-{digest}.json"

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none for these settings."""
        if not self.path.exists():
            return None
        saved = json.loads(self.path.read_text())
        return saved["state"] if saved.get("settings") == self.settings else None

    def save(self, state: dict[str, Any]) -> None:
        atomic_write(self.path, json.dumps({"settings": self.settings, "state": state}) + "\n")


__all__ = ["ProxyCheckpoint"]
