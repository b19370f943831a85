"""cascade.objectstore against a real S3 API (moto's server, a separate process) and on local
directories: put-if-absent, verified reads, multipart uploads, concurrent writers of one key,
interrupted uploads that leave nothing visible, and errors that never carry credentials."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from cascade.errors import CascadeError, FailedPrecondition, NotFound, Unavailable
from cascade.objectstore import (
    LocalObjectStore,
    ObjectStore,
    ObjectStoreSettings,
    S3ObjectStore,
    open_object_store,
)
from tests.s3_server import (
    ACCESS_KEY_ID,
    S3_PORTS_WITH_AUTH,
    SECRET_ACCESS_KEY,
    S3Server,
    run_moto_server,
    s3_server_fixture,  # noqa: F401  (the fixture s3_server)
)

MIB = 1024 * 1024


def _file(tmp_path: Path, data: bytes, name: str = "source") -> tuple[Path, str]:
    path = tmp_path / name
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return open_object_store(str(tmp_path / "objects"), ObjectStoreSettings())
    server: S3Server = request.getfixturevalue("s3_server")
    return open_object_store(f"s3://{server.new_bucket()}/some/prefix", server.settings())


def _s3(server: S3Server, **settings: Any) -> S3ObjectStore:
    store = open_object_store(f"s3://{server.new_bucket()}/p", server.settings(**settings))
    assert isinstance(store, S3ObjectStore)
    return store


def test_the_url_chooses_the_store(tmp_path: Path, s3_server: S3Server) -> None:
    assert isinstance(open_object_store(str(tmp_path / "a"), ObjectStoreSettings()), LocalObjectStore)
    assert isinstance(open_object_store(f"file://{tmp_path}/b", ObjectStoreSettings()), LocalObjectStore)
    remote = open_object_store("s3://bucket/a/prefix/", s3_server.settings())
    assert remote.location == "s3://bucket/a/prefix"
    with pytest.raises(CascadeError, match="not s3 or file"):
        open_object_store("gs://bucket/x", ObjectStoreSettings())


def test_a_key_is_written_once_and_read_back_verified(store: ObjectStore, tmp_path: Path) -> None:
    source, sha256 = _file(tmp_path, b"model bytes" * 1000)
    assert not store.exists("ab/key")
    assert store.put("ab/key", source, sha256) is True
    other, other_sha256 = _file(tmp_path, b"other bytes", "other")
    assert store.put("ab/key", other, other_sha256) is False  # put-if-absent: the first stays
    assert store.exists("ab/key")
    store.fetch("ab/key", tmp_path / "copy", sha256)
    assert (tmp_path / "copy").read_bytes() == b"model bytes" * 1000
    store.fetch("ab/key", tmp_path / "copy2")  # verified by the digest recorded with it
    assert (tmp_path / "copy2").read_bytes() == b"model bytes" * 1000
    assert source.exists()  # not consumed unless asked


def test_a_missing_key_is_not_found(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        store.fetch("no/such", tmp_path / "copy", "0" * 64)
    assert not (tmp_path / "copy").exists()


def test_keys_that_could_escape_the_store_are_refused(store: ObjectStore, tmp_path: Path) -> None:
    source, sha256 = _file(tmp_path, b"x")
    for key in ("../outside", "/absolute", "a//b", ""):
        with pytest.raises(CascadeError, match="not a relative path"):
            store.put(key, source, sha256)


def test_an_object_corrupted_behind_the_stores_back_is_refused(s3_server: S3Server, tmp_path: Path) -> None:
    store = _s3(s3_server)
    source, sha256 = _file(tmp_path, b"model bytes" * 1000)
    store.put("k", source, sha256)
    # Rewritten in place, its recorded digest kept: only hashing the bytes read can tell.
    s3_server.client().put_object(
        Bucket=store.bucket, Key="p/k", Body=b"model bytez" * 1000, Metadata={"sha256": sha256}
    )
    for expected in (sha256, None):
        with pytest.raises(FailedPrecondition, match="corrupt"):
            store.fetch("k", tmp_path / "copy", expected)
        assert not (tmp_path / "copy").exists()  # nothing half-verified left where a reader looks
        assert not list(tmp_path.glob(".fetch-*"))


def test_a_local_object_corrupted_on_disk_is_refused(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    source, sha256 = _file(tmp_path, b"model bytes" * 1000)
    store.put("k", source, sha256)
    store.path("k").write_bytes(b"model bytez" * 1000)
    with pytest.raises(FailedPrecondition, match="corrupt"):
        store.fetch("k", tmp_path / "copy", sha256)


def test_a_large_object_is_uploaded_in_parts_and_reads_back_whole(
    s3_server: S3Server, tmp_path: Path
) -> None:
    store = _s3(s3_server, s3_multipart_threshold_bytes=5 * MIB, s3_part_bytes=5 * MIB)
    data = os.urandom(12 * MIB + 123)
    source, sha256 = _file(tmp_path, data)
    assert store.put("big", source, sha256) is True
    head = s3_server.client().head_object(Bucket=store.bucket, Key="p/big")
    assert head["ETag"].strip('"').endswith("-3")  # a multipart object's ETag counts its parts
    assert head["Metadata"]["sha256"] == sha256
    assert store.put("big", source, sha256) is False  # conditional on completion too
    store.fetch("big", tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == data


def test_a_multipart_upload_whose_bytes_do_not_match_is_aborted_unseen(
    s3_server: S3Server, tmp_path: Path
) -> None:
    store = _s3(s3_server, s3_multipart_threshold_bytes=5 * MIB, s3_part_bytes=5 * MIB)
    source, _ = _file(tmp_path, os.urandom(11 * MIB))
    with pytest.raises(FailedPrecondition, match="upload aborted"):
        store.put("big", source, "0" * 64)  # e.g. the file changed after it was hashed
    client = s3_server.client()
    assert "Contents" not in client.list_objects_v2(Bucket=store.bucket)
    assert "Uploads" not in client.list_multipart_uploads(Bucket=store.bucket)
    assert not store.exists("big")


def test_an_upload_killed_midway_leaves_no_object(s3_server: S3Server, tmp_path: Path) -> None:
    """A writer SIGKILLed after sending two of its parts: S3 shows nothing under the key."""
    bucket = s3_server.new_bucket()
    source, sha256 = _file(tmp_path, os.urandom(16 * MIB))
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from pydantic import SecretStr
        from cascade.objectstore import ObjectStoreSettings, S3ObjectStore

        settings = ObjectStoreSettings(
            s3_endpoint_url={s3_server.endpoint_url!r}, s3_region="us-east-1",
            s3_access_key_id={ACCESS_KEY_ID!r}, s3_secret_access_key=SecretStr({SECRET_ACCESS_KEY!r}),
            s3_multipart_threshold_bytes={5 * MIB}, s3_part_bytes={5 * MIB},
        )
        store = S3ObjectStore.from_settings({bucket!r}, "p", settings)
        send = store._client.upload_part

        def send_then_stall(**request):
            answer = send(**request)
            if request["PartNumber"] == 2:
                print("two parts sent", flush=True)
                time.sleep(600)  # killed here
            return answer

        store._client.upload_part = send_then_stall
        store.put("big", Path({str(source)!r}), {sha256!r})
        """
    )
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "two parts sent"
    finally:
        writer.kill()
        writer.wait()
    client = s3_server.client()
    uploads = client.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert [upload["Key"] for upload in uploads] == ["p/big"]  # begun, two parts in...
    assert "Contents" not in client.list_objects_v2(Bucket=bucket)  # ...and nothing visible
    store = S3ObjectStore.from_settings(bucket, "p", s3_server.settings())
    assert not store.exists("big")
    assert store.put("big", source, sha256) is True  # a later writer completes it
    store.fetch("big", tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == source.read_bytes()


@pytest.mark.parametrize("size", [4096, 6 * MIB], ids=["whole", "multipart"])
def test_concurrent_writers_of_one_key_store_it_once(s3_server: S3Server, tmp_path: Path, size: int) -> None:
    store = _s3(s3_server, s3_multipart_threshold_bytes=5 * MIB, s3_part_bytes=5 * MIB)
    source, sha256 = _file(tmp_path, os.urandom(size))
    with ThreadPoolExecutor(8) as pool:
        written = list(pool.map(lambda _: store.put("same", source, sha256), range(8)))
    if size < 5 * MIB:
        assert written.count(True) == 1  # the conditional write let exactly one through
    else:  # moto checks If-None-Match on completion non-atomically; S3 lets one through
        assert True in written
    assert "Uploads" not in s3_server.client().list_multipart_uploads(Bucket=store.bucket)
    store.fetch("same", tmp_path / "copy", sha256)
    assert (tmp_path / "copy").read_bytes() == source.read_bytes()


def test_concurrent_local_writers_of_one_key_store_it_once(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    source, sha256 = _file(tmp_path, os.urandom(4096))
    with ThreadPoolExecutor(8) as pool:
        written = list(pool.map(lambda _: store.put("same", source, sha256), range(8)))
    assert written.count(True) == 1
    assert sorted(p.name for p in store.path("same").parent.iterdir()) == ["same"]  # no temporaries


def test_without_conditional_writes_a_check_before_writing_keeps_the_first(
    s3_server: S3Server, tmp_path: Path
) -> None:
    store = _s3(s3_server)
    store._conditional_writes = False  # as after a server answered 501 to If-None-Match
    source, sha256 = _file(tmp_path, b"first")
    assert store.put("k", source, sha256) is True
    other, other_sha256 = _file(tmp_path, b"second", "other")
    assert store.put("k", other, other_sha256) is False
    store.fetch("k", tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == b"first"


def _assert_secret_free(text: str) -> None:
    assert SECRET_ACCESS_KEY not in text
    assert ACCESS_KEY_ID not in text


def test_refused_credentials_are_unavailable_and_never_quoted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """moto checks signatures when its IAM auth is on: these keys are unknown to it."""
    caplog.set_level(logging.DEBUG)
    source, sha256 = _file(tmp_path, b"x")
    with run_moto_server(S3_PORTS_WITH_AUTH, {"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as server:
        store = open_object_store("s3://some-bucket/p", server.settings(s3_max_attempts=1))
        failures: list[Callable[[], object]] = [
            lambda: store.put("k", source, sha256),
            lambda: store.fetch("k", tmp_path / "copy", sha256),
            lambda: store.exists("k"),
        ]
        for failing in failures:
            with pytest.raises(Unavailable) as refused:
                failing()
            assert "InvalidAccessKeyId" in str(refused.value) or "403" in str(refused.value)
            _assert_secret_free(str(refused.value))
            assert refused.value.__cause__ is None and refused.value.__context__ is not None
    _assert_secret_free(caplog.text)


def test_a_secret_from_a_file_is_used_and_an_unreachable_endpoint_is_unavailable(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET_ACCESS_KEY + "\n")
    settings = ObjectStoreSettings(
        s3_endpoint_url="http://127.0.0.1:26549",  # nothing listens there (outside the servers' ports)
        s3_region="us-east-1",
        s3_access_key_id=ACCESS_KEY_ID,
        s3_secret_access_key=SecretStr("overridden"),
        s3_secret_access_key_file=secret_file,
        s3_max_attempts=2,
        s3_timeout_seconds=2,
    )
    store = open_object_store("s3://bucket/p", settings)
    assert isinstance(store, S3ObjectStore)
    assert store._client._request_signer._credentials.secret_key == SECRET_ACCESS_KEY
    with pytest.raises(Unavailable, match="s3://bucket/p") as unreachable:
        store.exists("k")
    _assert_secret_free(str(unreachable.value))
    assert "overridden" not in repr(settings)


def test_a_missing_bucket_is_a_failed_precondition(s3_server: S3Server, tmp_path: Path) -> None:
    store = open_object_store("s3://no-such-bucket-here/p", s3_server.settings())
    source, sha256 = _file(tmp_path, b"x")
    with pytest.raises(FailedPrecondition, match="no-such-bucket-here does not exist"):
        store.put("k", source, sha256)
