"""Artifact storage behind a small interface; local files by default, content-addressed by sha256."""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Protocol

from cascade.errors import FailedPrecondition, NotFound


class ArtifactStore(Protocol):
    def put(self, spooled: Path, sha256: str) -> None: ...
    def path(self, sha256: str) -> Path: ...
    def verify(self, sha256: str) -> Path: ...


# What a file looked like when its bytes last hashed right: any rewrite, truncation or replacement
# changes at least one of these (ctime cannot be set back by a user), so it is hashed again.
_Fingerprint = tuple[int, int, int, int]


class LocalArtifactStore:
    def __init__(self, root: Path, remembered_verifications: int = 4096) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._verified: OrderedDict[str, _Fingerprint] = OrderedDict()
        self._remembered = remembered_verifications
        self._verified_lock = threading.Lock()  # verify runs in worker threads

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def put(self, spooled: Path, sha256: str) -> None:
        """Move a fully written upload into place, fsynced; the rename is atomic: all or nothing."""
        target = self.path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        with spooled.open("rb") as written:
            os.fsync(written.fileno())
        os.replace(spooled, target)

    def verify(self, sha256: str) -> Path:
        """The artifact's path, after checking its bytes still hash to its name: never serve corruption.

        A file unchanged since it last hashed right (same inode, size, mtime and ctime) is not
        hashed again, so promotions and repeated downloads of a large artifact stay cheap. Blocking:
        call it from a worker thread."""
        target = self.path(sha256)
        try:
            stat = target.stat()
        except FileNotFoundError:
            raise NotFound(f"artifact {sha256} is missing from the store") from None
        fingerprint = (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        with self._verified_lock:
            if self._verified.get(sha256) == fingerprint:
                self._verified.move_to_end(sha256)
                return target
        digest = hashlib.sha256()
        with target.open("rb") as source:
            while block := source.read(1024 * 1024):
                digest.update(block)
        if digest.hexdigest() != sha256:
            with self._verified_lock:
                self._verified.pop(sha256, None)
            raise FailedPrecondition(
                f"artifact {sha256} is corrupt on disk (its bytes hash to {digest.hexdigest()})"
            )
        with self._verified_lock:
            self._verified[sha256] = fingerprint
            self._verified.move_to_end(sha256)
            while len(self._verified) > self._remembered:
                self._verified.popitem(last=False)
        return target
