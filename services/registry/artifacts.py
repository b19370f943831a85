"""Artifact storage behind a small interface, content-addressed by sha256 (the object key is the
digest): local files by default, or any `cascade.objectstore` store (S3) by URL, served from a
verified local cache."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Protocol

from cascade.errors import FailedPrecondition, NotFound
from cascade.objectstore import LocalObjectStore, ObjectStore, ObjectStoreSettings, open_object_store

__all__ = ["ArtifactStore", "CachedArtifactStore", "LocalArtifactStore", "open_artifact_store"]

log = logging.getLogger(__name__)


class ArtifactStore(Protocol):
    def put(self, spooled: Path, sha256: str) -> None: ...
    def path(self, sha256: str) -> Path: ...
    def verify(self, sha256: str) -> Path: ...


def _key(sha256: str) -> str:
    return f"{sha256[:2]}/{sha256}"


# What a file looked like when its bytes last hashed right: any rewrite, truncation or replacement
# changes at least one of these (ctime cannot be set back by a user), so it is hashed again.
_Fingerprint = tuple[int, int, int, int]


class _Verifications:
    """Files known to hash to their names, remembered by fingerprint (a bounded number of them)."""

    def __init__(self, remembered: int) -> None:
        self._verified: OrderedDict[str, _Fingerprint] = OrderedDict()
        self._remembered = remembered
        self._lock = threading.Lock()  # verify runs in worker threads

    def check(self, target: Path, sha256: str) -> None:
        """Raise NotFound if `target` is missing, FailedPrecondition if it does not hash to `sha256`."""
        try:
            stat = target.stat()
        except FileNotFoundError:
            raise NotFound(f"artifact {sha256} is missing from the store") from None
        fingerprint = (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        with self._lock:
            if self._verified.get(sha256) == fingerprint:
                self._verified.move_to_end(sha256)
                return
        digest = hashlib.sha256()
        with target.open("rb") as source:
            while block := source.read(1024 * 1024):
                digest.update(block)
        if digest.hexdigest() != sha256:
            with self._lock:
                self._verified.pop(sha256, None)
            raise FailedPrecondition(
                f"artifact {sha256} is corrupt on disk (its bytes hash to {digest.hexdigest()})"
            )
        with self._lock:
            self._verified[sha256] = fingerprint
            self._verified.move_to_end(sha256)
            while len(self._verified) > self._remembered:
                self._verified.popitem(last=False)

    def remembered(self) -> list[str]:
        with self._lock:
            return list(self._verified)


class LocalArtifactStore:
    """Artifacts as files in a local directory (`<root>/<sha256[:2]>/<sha256>`), verified in place."""

    def __init__(self, root: Path, remembered_verifications: int = 4096) -> None:
        self.root = root
        self._objects = LocalObjectStore(root)
        self._verifications = _Verifications(remembered_verifications)

    @property
    def _verified(self) -> list[str]:
        return self._verifications.remembered()

    def path(self, sha256: str) -> Path:
        return self._objects.path(_key(sha256))

    def put(self, spooled: Path, sha256: str) -> None:
        """Link a fully written, fsynced upload into place (the spooled file is consumed): all or
        nothing, and an artifact already stored is never rewritten."""
        target = self.path(sha256)
        if target.exists():
            try:
                self._verifications.check(target, sha256)
            except FailedPrecondition:  # a corrupt copy is the one thing a new upload replaces
                log.warning("artifact %s was corrupt on disk: replaced by the new upload", sha256[:12])
                target.unlink(missing_ok=True)
        self._objects.put(_key(sha256), spooled, sha256, consume=True)

    def verify(self, sha256: str) -> Path:
        """The artifact's path, after checking its bytes still hash to its name: never serve corruption.

        A file unchanged since it last hashed right (same inode, size, mtime and ctime) is not
        hashed again, so promotions and repeated downloads of a large artifact stay cheap. Blocking:
        call it from a worker thread."""
        target = self.path(sha256)
        self._verifications.check(target, sha256)
        return target


class CachedArtifactStore:
    """Artifacts in an object store shared by every registry replica (S3), served from a local cache
    of verified copies: an upload leaves its spooled file in the cache, and a cache miss, or a cached
    copy that no longer hashes right, is fetched again (verified) from the object store."""

    def __init__(self, objects: ObjectStore, cache_dir: Path, remembered_verifications: int = 4096) -> None:
        self.objects = objects
        self.cache_dir = cache_dir
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._verifications = _Verifications(remembered_verifications)

    def path(self, sha256: str) -> Path:
        return self.cache_dir / _key(sha256)

    def put(self, spooled: Path, sha256: str) -> None:
        self.objects.put(_key(sha256), spooled, sha256)  # stored (or already there) before it is named
        target = self.path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(spooled, target)

    def verify(self, sha256: str) -> Path:
        """A verified local copy of the artifact. Blocking: call it from a worker thread."""
        target = self.path(sha256)
        try:
            self._verifications.check(target, sha256)
            return target
        except NotFound:
            pass
        except FailedPrecondition:
            log.warning("the cached copy of artifact %s is corrupt: fetching it again", sha256[:12])
            target.unlink(missing_ok=True)
        try:
            self.objects.fetch(_key(sha256), target, sha256)
        except NotFound:
            raise NotFound(f"artifact {sha256} is missing from {self.objects.location}") from None
        self._verifications.check(target, sha256)  # remembers it: the next download costs a stat
        return target


def open_artifact_store(url: str, data_dir: Path, settings: ObjectStoreSettings) -> ArtifactStore:
    """The store `url` names (empty: `<data_dir>/artifacts`). A local directory holds the artifacts
    themselves; any other store is cached in `<data_dir>/artifact-cache`."""
    objects = open_object_store(url or str(data_dir / "artifacts"), settings)
    if isinstance(objects, LocalObjectStore):
        return LocalArtifactStore(objects.root)
    log.info("artifacts in %s, cached in %s", objects.location, data_dir / "artifact-cache")
    return CachedArtifactStore(objects, data_dir / "artifact-cache")
