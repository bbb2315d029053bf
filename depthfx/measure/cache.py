"""A resumable on-disk cache of block timings, keyed by (setting fingerprint, block shape).

Layout: ``DIR/<fingerprint hash>/fingerprint.json`` and one ``<block key hash>.json`` per
measured block, each written atomically (temp file + ``os.replace``), so a killed table build
loses at most the entry being timed and a rerun times only what is missing. Each entry stores
its full fingerprint and key and is checked on read: a file that does not match where it lies
is refused (:class:`~depthfx.errors.FingerprintMismatch` / :class:`~depthfx.errors.TableError`)
rather than silently mixed in. The key is the block's shape, not its position, so a block
shape measured once (in any chain, any model) is reused under the same setting.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from depthfx.backends.base import Fingerprint
from depthfx.backends.timing import Timing
from depthfx.errors import TableError
from depthfx.io import atomic_write


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class TimingCache:
    """Block timings of one setting under ``root``; ``force`` accepts mismatching files."""

    def __init__(
        self, root: str | os.PathLike[str], fingerprint: Mapping[str, Any], *, force: bool = False
    ) -> None:
        self.fingerprint = Fingerprint(fingerprint)
        self.force = force
        self.dir = Path(root) / _digest(self.fingerprint.to_json())
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "fingerprint.json"
        if meta.is_file():
            stored = Fingerprint.from_json(meta.read_text())
            self.fingerprint.check_compatible(stored, force=force)
        else:
            atomic_write(meta, self.fingerprint.to_json() + "\n")

    def _path(self, key: str) -> Path:
        return self.dir / f"{_digest(key)}.json"

    def get(self, key: str) -> tuple[Timing, bool] | None:
        """The stored (timing, coarse) of block ``key``, or None when it was never measured."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            doc = json.loads(path.read_text())
            stored_key, fp, t = doc["key"], doc["fingerprint"], doc["timing"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise TableError(f"{path}: unreadable cache entry ({err}); delete it") from None
        if stored_key != key:
            raise TableError(f"{path}: cache entry holds another block ({stored_key})")
        self.fingerprint.check_compatible(fp, force=self.force)
        timing = Timing(
            median_ms=float(t["median_ms"]),
            iqr_ms=float(t["iqr_ms"]),
            samples_ms=tuple(float(x) for x in t["samples_ms"]),
            n_per_block=int(t["n_per_block"]),
            warmup_s=float(t["warmup_s"]),
            warmup_calls=int(t["warmup_calls"]),
        )
        return timing, bool(doc.get("coarse", False))

    def put(self, key: str, timing: Timing, *, coarse: bool = False) -> None:
        """Store the timing of block ``key`` atomically (``coarse``: a quick rejection)."""
        doc = {
            "key": key,
            "fingerprint": dict(self.fingerprint),
            "timing": timing.to_dict(),
            "coarse": coarse,
        }
        atomic_write(self._path(key), json.dumps(doc, allow_nan=False) + "\n")

    def __len__(self) -> int:
        return sum(1 for p in self.dir.glob("*.json") if p.name != "fingerprint.json")
