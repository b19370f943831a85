"""Content-addressed objects in a local directory or an S3-compatible bucket, chosen by URL.

The registry's artifacts and ingest's Parquet segments are immutable and named by their digest, so
one small interface serves both:

    ObjectStore                   put-if-absent, verified fetch, exists
    ├── LocalObjectStore          a directory (the embedded default): `/path` or `file:///path`
    └── S3ObjectStore             `s3://bucket/prefix` on AWS S3, MinIO, Ceph, ... (the `s3` extra)

Guarantees, on both:

* **put-if-absent**: a key once written is never overwritten. S3 writes are conditional
  (`If-None-Match: *`); on a server that does not implement conditional writes, the store checks
  first and then writes, and since a key is the digest of its content, two writers racing write the
  same bytes: the race is harmless.
* **nothing half-written is visible**: a local object is written to a temporary file, fsynced and
  linked into place; an S3 object is one PUT, or above `multipart_threshold_bytes` a multipart
  upload that S3 makes visible only when it completes, and that is aborted on any failure. The
  bytes are hashed as they are sent and the upload is completed only if they hash to the sha256
  the caller named.
* **verified reads**: `fetch` writes to a temporary file while hashing and moves it into place only
  if the bytes hash to the expected sha256 (the caller's, or the one recorded with the object).
* **errors** are Cascade errors (`NotFound`, `FailedPrecondition` for corruption or a missing
  bucket, `Unavailable` for the rest) naming the bucket and key, never credentials; transient
  failures are retried by botocore within `max_attempts` (its standard retry mode), and a read
  cut off mid-stream is retried within the same budget.

Credentials come from the settings' `s3_access_key_id` with `s3_secret_access_key(_file)`, or else
from the standard AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws, an instance role).
"""

from __future__ import annotations

import base64
import errno
import hashlib
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr

from cascade.errors import CascadeError, FailedPrecondition, InvalidArgument, NotFound, Unavailable

__all__ = [
    "LocalObjectStore",
    "ObjectStore",
    "ObjectStoreSettings",
    "S3ObjectStore",
    "file_sha256",
    "open_object_store",
]

log = logging.getLogger(__name__)

_BLOCK = 1024 * 1024
_SHA256_METADATA = "sha256"  # recorded with every S3 object (x-amz-meta-sha256)


class ObjectStore(Protocol):
    @property
    def location(self) -> str:
        """Where the objects live, fit for logs: a path or s3://bucket/prefix (never credentials)."""
        ...

    def put(self, key: str, source: Path, sha256: str, *, consume: bool = False) -> bool:
        """Store the file's bytes under `key` unless the key exists; True if this call wrote it.
        `consume`: the caller is done with `source` (it may be moved, and is gone afterwards)."""
        ...

    def fetch(self, key: str, target: Path, sha256: str | None = None) -> None:
        """Write the object to `target` (atomically) after checking it hashes to `sha256`, or to the
        sha256 recorded when it was stored."""
        ...

    def exists(self, key: str) -> bool: ...

    def local_file(self, key: str) -> Path | None:
        """The object's own file when it lies on this machine (a local store), else None."""
        ...


class ObjectStoreSettings(BaseModel):
    """The S3 fields of a service's settings (mixed into its settings class, so they carry its prefix:
    CASCADE_REGISTRY_S3_ENDPOINT_URL, CASCADE_INGEST_S3_REGION, ...)."""

    s3_endpoint_url: str = Field(
        "", description="S3-compatible endpoint (MinIO, Ceph, ...), e.g. http://minio:9000; empty: AWS S3."
    )
    s3_region: str = Field("", description="Region of the bucket; empty: the AWS chain's (or us-east-1).")
    s3_access_key_id: str = Field(
        "", description="Access key id; empty: the standard AWS chain (env, ~/.aws, instance role)."
    )
    s3_secret_access_key: SecretStr = Field(SecretStr(""), description="Secret key of s3_access_key_id.")
    s3_secret_access_key_file: Path | None = Field(
        None, description="File holding the secret key (a mounted secret); read at start-up, wins."
    )
    s3_multipart_threshold_bytes: int = Field(
        64 * 1024 * 1024, ge=5 * 1024 * 1024, description="Objects this large or larger upload in parts."
    )
    s3_part_bytes: int = Field(
        16 * 1024 * 1024, ge=5 * 1024 * 1024, description="Size of each part of a multipart upload."
    )
    s3_max_attempts: int = Field(
        5, ge=1, description="Tries of one S3 request on a transient failure (throttling, 5xx, network)."
    )
    s3_timeout_seconds: float = Field(30.0, gt=0, description="Connect and read timeout of one S3 request.")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def open_object_store(url: str, settings: ObjectStoreSettings) -> ObjectStore:
    """The store a URL names: `s3://bucket[/prefix]`, `file:///path` or a plain path."""
    parts = urlsplit(url)
    if parts.scheme == "s3":
        return S3ObjectStore.from_settings(parts.netloc, parts.path.strip("/"), settings)
    if parts.scheme == "file":
        return LocalObjectStore(Path(parts.path))
    if parts.scheme and len(parts.scheme) > 1:  # one letter: a Windows drive, still a path
        raise InvalidArgument(f"object store URL scheme {parts.scheme!r} is not s3 or file")
    return LocalObjectStore(Path(url))


def _checked_key(key: str) -> str:
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in key.split("/")):
        raise InvalidArgument(f"object key {key!r} is not a relative path of plain names")
    return key


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_verified(target: Path, blocks: Any, expected: str, what: str) -> None:
    """Write an iterable of byte blocks next to `target`, then move it into place only if the bytes
    hash to `expected`; a crash or a mismatch leaves nothing at `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=".fetch-")
    temporary = Path(name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for block in blocks:
                digest.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != expected:
            raise FailedPrecondition(
                f"{what} is corrupt: its bytes hash to {digest.hexdigest()}, not {expected}"
            )
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _file_blocks(path: Path) -> Any:
    with path.open("rb") as source:
        while block := source.read(_BLOCK):
            yield block


class LocalObjectStore:
    """Objects as files under `root/<key>`; written by linking a complete, fsynced file into place,
    so a key appears whole or not at all, and never twice."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def location(self) -> str:
        return str(self.root)

    def path(self, key: str) -> Path:
        return self.root / _checked_key(key)

    def local_file(self, key: str) -> Path | None:
        path = self.path(key)
        return path if path.exists() else None

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def put(self, key: str, source: Path, sha256: str, *, consume: bool = False) -> bool:
        target = self.path(key)
        if target.exists():
            if consume:
                source.unlink(missing_ok=True)
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = source if consume else self._copy_beside(source, target)
        try:
            with staged.open("rb") as written:
                os.fsync(written.fileno())
            try:
                os.link(staged, target)  # fails if the key exists: put-if-absent, atomically
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                return self.put(key, source, sha256)  # another file system: copy beside, then link
            _fsync_dir(target.parent)
            return True
        finally:
            if staged != source or consume:
                staged.unlink(missing_ok=True)

    @staticmethod
    def _copy_beside(source: Path, target: Path) -> Path:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=".put-")
        with os.fdopen(fd, "wb") as out, source.open("rb") as data:
            shutil.copyfileobj(data, out, _BLOCK)
        return Path(name)

    def fetch(self, key: str, target: Path, sha256: str | None = None) -> None:
        path = self.path(key)
        if not path.exists():
            raise NotFound(f"object {key} is missing from {self.location}")
        expected = sha256 or file_sha256(path)  # a local file records no digest of its own
        _write_verified(target, _file_blocks(path), expected, f"object {key} in {self.location}")


class S3ObjectStore:
    """Objects under `s3://bucket/prefix/<key>`, each with its sha256 recorded (x-amz-meta-sha256)."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        multipart_threshold_bytes: int = 64 * 1024 * 1024,
        part_bytes: int = 16 * 1024 * 1024,
        max_attempts: int = 5,
    ) -> None:
        if not bucket:
            raise InvalidArgument("an s3:// URL needs a bucket: s3://bucket/prefix")
        self._client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.multipart_threshold_bytes = multipart_threshold_bytes
        self.part_bytes = part_bytes
        self.max_attempts = max_attempts
        # None until a conditional write was tried; False when the server refused If-None-Match.
        self._conditional_writes: bool | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, bucket: str, prefix: str, settings: ObjectStoreSettings) -> S3ObjectStore:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise FailedPrecondition("an s3:// store needs boto3: pip install 'cascade-mlops[s3]'") from None
        # botocore's DEBUG records quote each signed request's headers (the access key id and a
        # signature): a service's DEBUG level, set on the root logger later, must not pass them on.
        quoted_headers = logging.getLogger("botocore")
        if quoted_headers.level < logging.INFO:  # NOTSET (0) too: it would follow the root
            quoted_headers.setLevel(logging.INFO)
        secret = (
            settings.s3_secret_access_key_file.read_text().strip()
            if settings.s3_secret_access_key_file
            else settings.s3_secret_access_key.get_secret_value()
        )
        credentials = (
            {"aws_access_key_id": settings.s3_access_key_id, "aws_secret_access_key": secret}
            if settings.s3_access_key_id
            else {}
        )
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.s3_endpoint_url or None,
            region_name=settings.s3_region or None,
            config=Config(
                retries={"max_attempts": settings.s3_max_attempts, "mode": "standard"},
                connect_timeout=settings.s3_timeout_seconds,
                read_timeout=settings.s3_timeout_seconds,
                # Compatible servers (MinIO, Ceph) are often reached by an address, not a DNS name.
                s3={"addressing_style": "path"} if settings.s3_endpoint_url else {},
            ),
            **credentials,
        )
        return cls(
            client,
            bucket,
            prefix,
            settings.s3_multipart_threshold_bytes,
            settings.s3_part_bytes,
            settings.s3_max_attempts,
        )

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def _key(self, key: str) -> str:
        key = _checked_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def local_file(self, key: str) -> Path | None:
        return None

    def exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            if _status(exc) == 404 and _code(exc) != "NoSuchBucket":
                return False
            raise self._error(exc, key, "checking") from None
        return True

    # -- writes --------------------------------------------------------------------------------
    def put(self, key: str, source: Path, sha256: str, *, consume: bool = False) -> bool:
        try:
            if self._conditional_writes is False and self.exists(key):
                return False
            if source.stat().st_size < self.multipart_threshold_bytes:
                written = self._put_whole(key, source, sha256)
            else:
                written = self._put_in_parts(key, source, sha256)
        finally:
            if consume:
                source.unlink(missing_ok=True)
        if written:
            log.debug("stored %s in %s", key, self.location)
        return written

    def _conditional(self) -> dict[str, str]:
        return {} if self._conditional_writes is False else {"IfNoneMatch": "*"}

    def _refused_condition(self, exc: Exception) -> bool:
        """Whether the server does not implement If-None-Match (then it is never sent again)."""
        if self._conditional_writes is None and _status(exc) == 501:
            with self._lock:
                self._conditional_writes = False
            log.warning("%s does not implement conditional writes: checking before writing", self.location)
            return True
        return False

    def _put_whole(self, key: str, source: Path, sha256: str) -> bool:
        data = source.read_bytes()  # below the multipart threshold, so bounded
        if hashlib.sha256(data).hexdigest() != sha256:
            raise FailedPrecondition(f"object {key}: the file to store does not hash to {sha256}")
        try:
            self._client.put_object(
                Bucket=self.bucket,
                Key=self._key(key),
                Body=data,
                Metadata={_SHA256_METADATA: sha256},
                # The server checks the bytes it received (S3 and most compatibles do).
                ChecksumSHA256=base64.b64encode(bytes.fromhex(sha256)).decode(),
                **self._conditional(),
            )
        except Exception as exc:
            if _status(exc) == 412:
                return False  # already there: put-if-absent
            if self._refused_condition(exc):
                return self.put(key, source, sha256)
            raise self._error(exc, key, "storing") from None
        self._conditional_writes = self._conditional_writes is not False
        return True

    def _put_in_parts(self, key: str, source: Path, sha256: str) -> bool:
        """A multipart upload: invisible until completed, and aborted on any failure."""
        full_key = self._key(key)
        try:
            upload_id = self._client.create_multipart_upload(
                Bucket=self.bucket, Key=full_key, Metadata={_SHA256_METADATA: sha256}
            )["UploadId"]
        except Exception as exc:
            raise self._error(exc, key, "starting the upload of") from None
        try:
            parts = self._upload_parts(full_key, upload_id, source, sha256, key)
            try:
                self._client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=full_key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                    **self._conditional(),
                )
            except Exception as exc:
                if _status(exc) == 412:
                    self._abort(full_key, upload_id)
                    return False
                if self._refused_condition(exc):
                    self._abort(full_key, upload_id)
                    return self.put(key, source, sha256)
                raise self._error(exc, key, "completing the upload of") from None
        except BaseException:
            self._abort(full_key, upload_id)
            raise
        self._conditional_writes = self._conditional_writes is not False
        return True

    def _upload_parts(
        self, full_key: str, upload_id: str, source: Path, sha256: str, key: str
    ) -> list[dict[str, Any]]:
        digest = hashlib.sha256()
        parts: list[dict[str, Any]] = []
        with source.open("rb") as data:
            while block := data.read(self.part_bytes):
                digest.update(block)
                number = len(parts) + 1
                try:
                    answer = self._client.upload_part(
                        Bucket=self.bucket, Key=full_key, UploadId=upload_id, PartNumber=number, Body=block
                    )
                except Exception as exc:
                    raise self._error(exc, key, f"uploading part {number} of") from None
                parts.append({"ETag": answer["ETag"], "PartNumber": number})
        if digest.hexdigest() != sha256:
            raise FailedPrecondition(
                f"object {key}: the file sent hashes to {digest.hexdigest()}, not {sha256}; upload aborted"
            )
        return parts

    def _abort(self, full_key: str, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=full_key, UploadId=upload_id)
        except Exception as exc:  # the bucket's lifecycle rule for incomplete uploads is the backstop
            log.warning(
                "could not abort an upload to %s: %s", self.location, _code(exc) or type(exc).__name__
            )

    # -- reads ---------------------------------------------------------------------------------
    def fetch(self, key: str, target: Path, sha256: str | None = None) -> None:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import ReadTimeoutError, ResponseStreamingError

        what = f"object {key} in {self.location}"
        for attempt in range(1, self.max_attempts + 1):
            try:
                answer = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            except Exception as exc:
                raise self._error(exc, key, "reading") from None
            expected = sha256 or answer.get("Metadata", {}).get(_SHA256_METADATA)
            if not expected:
                answer["Body"].close()
                raise FailedPrecondition(f"{what} has no recorded sha256 to verify it by")
            try:
                _write_verified(target, _body_blocks(answer["Body"]), expected, what)
                return
            except (ResponseStreamingError, ReadTimeoutError, BotoConnectionError) as exc:
                if attempt == self.max_attempts:
                    raise Unavailable(
                        f"reading {what} broke off {attempt} times ({type(exc).__name__})"
                    ) from None
                log.info("reading %s broke off (%s); reading it again", what, type(exc).__name__)
        raise AssertionError("unreachable")

    # -- errors --------------------------------------------------------------------------------
    def _error(self, exc: Exception, key: str, doing: str) -> CascadeError:
        """A Cascade error naming the bucket, key and S3's error code; never the exception's text,
        which for a signing failure may quote the request."""
        if isinstance(exc, CascadeError):
            return exc
        code = _code(exc) or type(exc).__name__
        what = f"{doing} object {key} in {self.location}"
        if code == "NoSuchBucket":
            return FailedPrecondition(f"{what}: the bucket {self.bucket} does not exist")
        if code in ("NoSuchKey", "404", "NotFound"):
            return NotFound(f"{what}: no such object")
        return Unavailable(f"{what} failed: {code}")


def _body_blocks(body: IO[bytes]) -> Any:
    try:
        while block := body.read(_BLOCK):
            yield block
    finally:
        body.close()


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _status(exc: BaseException) -> int:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    return 0
