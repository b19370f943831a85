"""The artifact store's verification: corruption and loss are refused, and a remembered
verification never hides a later change to the file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from cascade.errors import FailedPrecondition, NotFound
from cascade.services.registry.artifacts import LocalArtifactStore


def _stored(tmp_path: Path, data: bytes) -> tuple[LocalArtifactStore, str]:
    store = LocalArtifactStore(tmp_path / "artifacts")
    sha256 = hashlib.sha256(data).hexdigest()
    spooled = tmp_path / "upload"
    spooled.write_bytes(data)
    store.put(spooled, sha256)
    return store, sha256


def test_an_intact_artifact_verifies_and_a_missing_one_is_not_found(tmp_path: Path) -> None:
    store, sha256 = _stored(tmp_path, b"model bytes" * 1000)
    assert store.verify(sha256) == store.path(sha256)
    store.path(sha256).unlink()
    with pytest.raises(NotFound, match="missing"):
        store.verify(sha256)


def test_a_file_changed_after_a_successful_verification_is_hashed_again(tmp_path: Path) -> None:
    data = b"model bytes" * 1000
    store, sha256 = _stored(tmp_path, data)
    path = store.verify(sha256)
    stat = path.stat()
    with path.open("r+b") as stored:  # one bit flipped, same size
        stored.seek(len(data) // 2)
        stored.write(bytes([data[len(data) // 2] ^ 0x01]))
    # Even with its mtime put back, the rewrite changed the file's ctime: no stale "verified".
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(FailedPrecondition, match="corrupt"):
        store.verify(sha256)


def test_the_store_remembers_only_a_bounded_number_of_verifications(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts", remembered_verifications=2)
    digests = []
    for number in range(3):
        data = f"artifact {number}".encode()
        digests.append(hashlib.sha256(data).hexdigest())
        (tmp_path / "upload").write_bytes(data)
        store.put(tmp_path / "upload", digests[-1])
        store.verify(digests[-1])
    assert list(store._verified) == digests[1:]
