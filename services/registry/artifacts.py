"""Artifact storage behind a small interface; local files by default, content-addressed by sha256."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Protocol

from shared.errors import FailedPrecondition, NotFound


class ArtifactStore(Protocol):
    def put(self, spooled: Path, sha256: str) -> None: ...
    def path(self, sha256: str) -> Path: ...
    def verify(self, sha256: str) -> Path: ...


class LocalArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

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
        """The artifact's path, after checking its bytes still hash to its name: never serve corruption."""
        target = self.path(sha256)
        if not target.exists():
            raise NotFound(f"artifact {sha256} is missing from the store")
        digest = hashlib.sha256()
        with target.open("rb") as source:
            while block := source.read(1024 * 1024):
                digest.update(block)
        if digest.hexdigest() != sha256:
            raise FailedPrecondition(
                f"artifact {sha256} is corrupt on disk (its bytes hash to {digest.hexdigest()})"
            )
        return target
