"""Object storage behind one interface: :class:`S3ObjectStore` for any S3-compatible endpoint
(AWS, MinIO, moto) and :class:`LocalObjectStore`, the embedded default, as files under a
directory. Keys are relative ``/``-separated names; both stores accept and refuse the same ones.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit
from urllib.request import url2pathname

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from indexing.errors import ObjectNotFoundError, StoreError, UsageError

#: S3's limits: a key of at most 1024 bytes (UTF-8), user metadata of at most 2 KB, and a
#: SigV4 presigned URL valid for at most 7 days (AWS S3 docs, "Object key naming", "Object
#: metadata", "Sharing objects with presigned URLs").
MAX_KEY_BYTES = 1024
MAX_METADATA_BYTES = 2048
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
#: The metadata entry both stores set to the hex SHA-256 of the object's content.
SHA256_METADATA = "sha256"
_CHUNK = 1024 * 1024
_SIDECAR = ".meta.json"
#: Metadata names travel as ``x-amz-meta-<name>`` HTTP headers: an HTTP token, kept simple.
_METADATA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a store knows about one object without reading it.

    ``key`` is relative to the store, ``size`` in bytes. ``etag`` identifies this version of
    the object (S3's ETag without quotes, an MD5 only for single-part uploads; for the local
    store a stamp of the file). ``metadata`` holds the user metadata (keys lowercased), with
    ``sha256`` set by the store on every write; :meth:`ObjectStore.list` leaves it empty.
    """

    key: str
    size: int
    etag: str
    last_modified: datetime | None
    metadata: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None

    @property
    def sha256(self) -> str | None:
        """The hex SHA-256 of the content as stored at write time, or None (unknown)."""
        return self.metadata.get(SHA256_METADATA)


@runtime_checkable
class ObjectStore(Protocol):
    """Bytes under keys. Every method raises :class:`StoreError` when the store fails and for a
    key that :func:`check_key` refuses; :class:`ObjectNotFoundError` for a missing object."""

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream",
            metadata: Mapping[str, str] | None = None, if_absent: bool = False) -> bool:
        """Write ``data`` under ``key`` (replacing it, atomically for readers) and return True.

        ``metadata``: ASCII strings, keys lowercased (S3 lowercases them), 2 KB in all;
        ``sha256`` is always the content's digest. ``if_absent``: write only when no object
        has the key (S3's conditional put, ``If-None-Match: *``); of several writers racing
        for one key exactly one gets True, and the others False with the winner's content kept.
        """
        ...

    def get(self, key: str) -> bytes:
        """The whole content of ``key``; :class:`ObjectNotFoundError` when absent."""
        ...

    def head(self, key: str) -> ObjectInfo | None:
        """Size, etag, last modification and metadata of ``key``, or None when absent."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key``; an absent key is not an error."""
        ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """The objects whose key starts with ``prefix`` (a string prefix, not only a folder),
        sorted by key, metadata not included (``head`` gives it: listing does not read it)."""
        ...

    def presigned_url(self, key: str, expires_s: int) -> str:
        """A URL that a reader without credentials can GET the content from for ``expires_s``
        seconds (1 to 7 days). The object need not exist yet."""
        ...

    def copy(self, src: str, dst: str) -> None:
        """Copy ``src`` to ``dst`` with its content type and metadata; missing ``src``:
        :class:`ObjectNotFoundError`."""
        ...

    def put_file(self, key: str, path: str | Path) -> None:
        """Write the file at ``path`` under ``key``, streamed (never whole in memory)."""
        ...

    def get_file(self, key: str, path: str | Path) -> None:
        """Write the content of ``key`` to ``path`` (parents created), streamed; ``path`` is
        replaced only once the whole content arrived. :class:`ObjectNotFoundError` when absent."""
        ...

    def describe(self) -> str:
        """The store, for messages and logs: where it is, never a credential."""
        ...


def sha256_file(path: str | Path) -> str:
    """The hex SHA-256 of the file at ``path``, read in 1 MiB chunks. Raises OSError."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_key(key: str) -> str:
    """``key`` when both stores accept it: non-empty, at most 1024 UTF-8 bytes, relative, no
    NUL, and no empty, ``.`` or ``..`` segment (on disk those would escape the root or alias
    another key). Raises :class:`StoreError` naming the rule."""
    if not isinstance(key, str) or not key:
        raise StoreError(f"object key {key!r} is empty or not a string")
    if "\x00" in key:
        raise StoreError(f"object key {key!r} contains a NUL character")
    if key.startswith("/"):
        raise StoreError(f"object key {key!r} is absolute; keys are relative to the store")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise StoreError(f"object key {key!r} has an empty, '.' or '..' segment")
    if len(key.encode("utf-8", "surrogateescape")) > MAX_KEY_BYTES:
        raise StoreError(f"object key {key[:40]!r}... is longer than {MAX_KEY_BYTES} bytes")
    return key


def _check_prefix(prefix: str) -> str:
    """``prefix`` when it is one a listing may use: its whole segments follow :func:`check_key`."""
    if "\x00" in prefix or prefix.startswith("/"):
        raise StoreError(f"listing prefix {prefix!r} is absolute or contains a NUL character")
    folder = prefix.rpartition("/")[0]
    if folder:
        check_key(folder)
    return prefix


def _check_metadata(metadata: Mapping[str, str] | None, sha256: str) -> dict[str, str]:
    """The metadata as stored: keys lowercased, ``sha256`` set. S3 sends it as HTTP headers,
    so it must be printable ASCII; both stores refuse the rest, to behave alike."""
    stored = {}
    for name, value in (metadata or {}).items():
        if not (isinstance(name, str) and _METADATA_NAME.fullmatch(name) and isinstance(value, str)
                and value.isascii() and value.isprintable()):
            raise StoreError(f"metadata entry {name!r}: {value!r} is not a header-safe name with a printable "
                             "ASCII value")
        stored[name.lower()] = value
    stored[SHA256_METADATA] = sha256
    if sum(len(n) + len(v) for n, v in stored.items()) > MAX_METADATA_BYTES:
        raise StoreError(f"metadata is larger than S3's {MAX_METADATA_BYTES} bytes")
    return stored


def _check_expiry(expires_s: int) -> int:
    if not 1 <= expires_s <= MAX_PRESIGN_SECONDS:
        raise StoreError(f"a presigned URL lasts 1 to {MAX_PRESIGN_SECONDS} seconds (7 days), not {expires_s}")
    return int(expires_s)


def _file_chunks(path: str | Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            yield chunk


class S3ObjectStore:
    """Objects in ``bucket`` under ``prefix`` (``a/b``: keys are stored as ``a/b/<key>``) at any
    S3-compatible endpoint (``endpoint_url``; None: AWS's for ``region``).

    ``access_key``/``secret_key`` None: the standard AWS credential chain. ``connect_timeout``
    and ``read_timeout`` (seconds) bound every request; ``max_attempts`` counts the first try
    (botocore's "standard" retry mode, which backs off and retries throttling, 5xx and
    connection errors). Every boto3/botocore error becomes a :class:`StoreError` that names the
    operation, the key and :meth:`describe`, with the credentials scrubbed; a missing bucket
    says so. Thread-safe (boto3 clients are); a forked child opens its own client, as sockets
    must not be shared across processes.
    """

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None, region: str | None = None,
                 access_key: str | None = None, secret_key: str | None = None, connect_timeout: float = 5.0,
                 read_timeout: float = 60.0, max_attempts: int = 3) -> None:
        if not bucket or "/" in bucket:
            raise UsageError(f"S3 bucket name {bucket!r} is empty or contains '/'")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        if self.prefix:
            check_key(self.prefix)
        self._secrets = {s for s in (access_key, secret_key) if s}
        self._session = boto3.session.Session(aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                                              region_name=region)
        self._config = Config(
            connect_timeout=connect_timeout, read_timeout=read_timeout,
            retries={"mode": "standard", "max_attempts": max_attempts}, signature_version="s3v4",
            # MinIO, moto and most S3-compatible servers serve no per-bucket host names.
            s3={"addressing_style": "path"} if endpoint_url else None,
            # boto3 1.36 began sending CRC checksums on every upload, which several
            # S3-compatible servers reject; "when_required" is the behaviour before it.
            request_checksum_calculation="when_required", response_checksum_validation="when_required",
        )
        self._endpoint_url, self._max_attempts = endpoint_url, max_attempts
        # 8 MiB parts (boto3's default threshold and part size), 4 in flight: fewer than the
        # client's 10 pooled connections, so a transfer never waits for a connection.
        self._transfer = TransferConfig(multipart_threshold=8 * 1024 * 1024, multipart_chunksize=8 * 1024 * 1024,
                                        max_concurrency=4, use_threads=True)
        self._lock = threading.Lock()
        self._client_pid, self._client_obj = os.getpid(), self._new_client()
        self._endpoint = _without_userinfo(self._client_obj.meta.endpoint_url)
        self._where = f"s3://{self.bucket}/{self.prefix} at {self._endpoint}"

    def _new_client(self):
        try:
            return self._session.client("s3", endpoint_url=self._endpoint_url, config=self._config)
        except (BotoCoreError, ValueError) as exc:
            raise StoreError(f"cannot configure the S3 client for bucket {self.bucket}: "
                             f"{self._scrub(str(exc))}") from None

    @property
    def _client(self):
        if self._client_pid != os.getpid():
            with self._lock:
                if self._client_pid != os.getpid():
                    self._client_obj, self._client_pid = self._new_client(), os.getpid()
        return self._client_obj

    def describe(self) -> str:
        """``s3://bucket/prefix at <endpoint>``; no credential."""
        return self._where

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{check_key(key)}" if self.prefix else check_key(key)

    def _scrub(self, text: str) -> str:
        secrets = set(self._secrets)
        try:
            # Keys found by the credential chain (None given) are kept out of messages too.
            creds = self._session.get_credentials()
            frozen = creds.get_frozen_credentials() if creds else None
        except (BotoCoreError, AttributeError):
            frozen = None
        if frozen is not None:
            secrets.update(s for s in (frozen.access_key, frozen.secret_key, frozen.token) if s)
        for secret in sorted(secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text.strip()

    def _bucket_missing(self) -> bool:
        """True when a HEAD of the bucket answers 404: a HEAD of an object answers 404 both for
        a missing key and a missing bucket, without an error code to tell them apart."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket", "NotFound")
        except BotoCoreError:
            return False
        return False

    def _error(self, op: str, key: str, exc: Exception) -> StoreError:
        """The StoreError for ``exc`` from operation ``op`` on ``key``."""
        if isinstance(exc, Boto3Error) and isinstance(exc.__context__, ClientError):
            exc = exc.__context__  # boto3's upload_file wraps the ClientError in S3UploadFailedError
        code = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else None
        if code in ("404", "NotFound", "NoSuchBucket", "NoSuchKey"):
            if code == "NoSuchBucket" or (code in ("404", "NotFound") and self._bucket_missing()):
                return StoreError(f"bucket {self.bucket} does not exist at {self._endpoint} "
                                  "(create it, or call S3ObjectStore.ensure_bucket)")
            return ObjectNotFoundError(f"no object {key!r} in {self.describe()}")
        subject = f" of {key!r}" if key else ""
        return StoreError(f"S3 {op}{subject} failed at {self.describe()}: {self._scrub(str(exc))}")

    def _call(self, op: str, key: str, fn, /, **kwargs):
        """``fn(**kwargs)``, its errors translated by :meth:`_error`."""
        try:
            return fn(**kwargs)
        except (ClientError, BotoCoreError, Boto3Error) as exc:
            raise self._error(op, key, exc) from None

    def ensure_bucket(self) -> None:
        """Create the bucket when it does not exist (tests, a first run); concurrent creators
        all succeed. Raises StoreError (e.g. the name is taken by another account)."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise self._error("HeadBucket", "", exc) from None
        except BotoCoreError as exc:
            raise self._error("HeadBucket", "", exc) from None
        region = self._client.meta.region_name
        # AWS refuses a LocationConstraint of us-east-1 and requires one for every other region.
        extra = {} if region in (None, "us-east-1", "aws-global") else {
            "CreateBucketConfiguration": {"LocationConstraint": region}}
        try:
            self._client.create_bucket(Bucket=self.bucket, **extra)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._error("CreateBucket", "", exc) from None
            self._call("HeadBucket", "", self._client.head_bucket, Bucket=self.bucket)  # taken by someone else?
        except BotoCoreError as exc:
            raise self._error("CreateBucket", "", exc) from None

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream",
            metadata: Mapping[str, str] | None = None, if_absent: bool = False) -> bool:
        """See :meth:`ObjectStore.put`. A 409 ConditionalRequestConflict (another conditional
        write of the key in flight) is retried, as the S3 docs on conditional writes ask."""
        kwargs = {"Bucket": self.bucket, "Key": self._full(key), "Body": data, "ContentType": content_type,
                  "Metadata": _check_metadata(metadata, hashlib.sha256(data).hexdigest())}
        if if_absent:
            kwargs["IfNoneMatch"] = "*"
        for attempt in itertools.count(1):
            try:
                self._client.put_object(**kwargs)
                return True
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if if_absent and code == "PreconditionFailed":
                    return False
                if not (if_absent and code == "ConditionalRequestConflict" and attempt < self._max_attempts):
                    raise self._error("PutObject", key, exc) from None
                time.sleep(0.1 * 2**attempt)
            except (BotoCoreError, Boto3Error) as exc:
                raise self._error("PutObject", key, exc) from None

    def get(self, key: str) -> bytes:
        """See :meth:`ObjectStore.get`."""
        full = self._full(key)
        try:
            return self._client.get_object(Bucket=self.bucket, Key=full)["Body"].read()
        except (ClientError, BotoCoreError, Boto3Error) as exc:
            raise self._error("GetObject", key, exc) from None

    def head(self, key: str) -> ObjectInfo | None:
        """See :meth:`ObjectStore.head`."""
        try:
            response = self._call("HeadObject", key, self._client.head_object, Bucket=self.bucket, Key=self._full(key))
        except ObjectNotFoundError:
            return None
        return ObjectInfo(key=key, size=response["ContentLength"], etag=response.get("ETag", "").strip('"'),
                          last_modified=_utc(response.get("LastModified")),
                          metadata=dict(response.get("Metadata", {})),
                          content_type=response.get("ContentType"))

    def delete(self, key: str) -> None:
        """See :meth:`ObjectStore.delete`."""
        self._call("DeleteObject", key, self._client.delete_object, Bucket=self.bucket, Key=self._full(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """See :meth:`ObjectStore.list`; S3 lists keys in UTF-8 byte order, which is code point order."""
        full = f"{self.prefix}/{_check_prefix(prefix)}" if self.prefix else _check_prefix(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                for obj in page.get("Contents", []):
                    yield ObjectInfo(key=obj["Key"][strip:], size=obj["Size"], etag=obj.get("ETag", "").strip('"'),
                                     last_modified=_utc(obj.get("LastModified")))
        except (ClientError, BotoCoreError, Boto3Error) as exc:
            raise self._error("ListObjectsV2", prefix, exc) from None

    def presigned_url(self, key: str, expires_s: int) -> str:
        """See :meth:`ObjectStore.presigned_url`: a SigV4 URL (``X-Amz-Expires=<expires_s>``),
        signed locally without a request (boto3 ``generate_presigned_url("get_object")``). It
        carries the access key id (``X-Amz-Credential``), not the secret: a bearer token until
        it expires, to be kept out of logs."""
        return self._call("GeneratePresignedUrl", key, self._client.generate_presigned_url, ClientMethod="get_object",
                          Params={"Bucket": self.bucket, "Key": self._full(key)}, ExpiresIn=_check_expiry(expires_s))

    def copy(self, src: str, dst: str) -> None:
        """See :meth:`ObjectStore.copy`: boto3's managed copy, multipart above 8 MiB (CopyObject
        is limited to 5 GB), which keeps the content type and metadata either way."""
        self._call("Copy", src, self._client.copy, CopySource={"Bucket": self.bucket, "Key": self._full(src)},
                   Bucket=self.bucket, Key=self._full(dst), Config=self._transfer)

    def put_file(self, key: str, path: str | Path) -> None:
        """See :meth:`ObjectStore.put_file`: boto3 ``upload_file``, multipart above 8 MiB. Reads
        the file twice: once for its SHA-256 (the metadata goes with the first request)."""
        full = self._full(key)
        try:
            digest = sha256_file(path)
        except OSError as exc:
            raise StoreError(f"cannot read {path} to upload it as {key!r}: {exc.strerror}") from None
        try:
            self._call("PutFile", key, self._client.upload_file, Filename=str(path), Bucket=self.bucket, Key=full,
                       ExtraArgs={"Metadata": _check_metadata(None, digest), "ContentType": "application/octet-stream"},
                       Config=self._transfer)
        except OSError as exc:  # the file changed under the upload
            raise StoreError(f"cannot read {path} to upload it as {key!r}: {exc.strerror or exc}") from None

    def get_file(self, key: str, path: str | Path) -> None:
        """See :meth:`ObjectStore.get_file`: boto3 ``download_file``, which writes a temporary
        file beside ``path`` and renames it into place."""
        full = self._full(key)
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._call("GetFile", key, self._client.download_file, Bucket=self.bucket, Key=full, Filename=str(path),
                       Config=self._transfer)
        except OSError as exc:
            raise StoreError(f"cannot write {path} to download {key!r} into it: {exc.strerror or exc}") from None


def _utc(moment: datetime | None) -> datetime | None:
    """``moment`` in UTC: botocore parses HEAD dates as UTC and listing dates as local time."""
    return moment.astimezone(timezone.utc) if moment is not None else None


def _without_userinfo(url: str) -> str:
    """``url`` without a ``user:password@`` part."""
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl() if "@" in parts.netloc else url


class LocalObjectStore:
    """Objects as files under ``root`` (created on the first write): key ``a/b`` is
    ``<root>/a/b``, its content type and metadata in ``<root>/a/b.meta.json``.

    Writes go to a temporary file in the target's folder (``.tmp-*``), are fsynced, then
    renamed into place (``os.replace``), so readers see the old or the new content, never a
    part. ``if_absent`` links the finished file into place (``os.link`` fails when the key
    exists), which gives exactly one winner among racing threads and processes. The sidecar is
    written after the object and records the object's etag: metadata is only reported for the
    version it was written with, so a crash between the two, or two overwrites racing, leave an
    object without metadata, never with another version's. Besides :func:`check_key`, keys may
    not have a segment starting with ``.`` (temporary files) nor end in ``.meta.json``; a key
    cannot be both an object and a folder (``a`` and ``a/b``). Emptied folders are kept: a
    concurrent writer may be about to use them.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def describe(self) -> str:
        """The root as a ``file://`` URL."""
        return self.root.as_uri()

    def _path(self, key: str) -> Path:
        parts = check_key(key).split("/")
        if any(part.startswith(".") for part in parts) or key.endswith(_SIDECAR):
            raise StoreError(f"object key {key!r} is reserved in the local store (a segment starting with '.', "
                             f"or a name ending in {_SIDECAR})")
        return self.root.joinpath(*parts)

    def _fail(self, op: str, key: str, exc: OSError) -> StoreError:
        return StoreError(f"local {op} of {key!r} failed in {self.describe()}: {exc.strerror or exc}")

    def _write_temp(self, folder: Path, chunks: Iterable[bytes]) -> tuple[Path, str, os.stat_result]:
        """``chunks`` in a new fsynced temporary file in ``folder``: its path, hex SHA-256, stat."""
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".tmp-", dir=folder)
        try:
            with os.fdopen(fd, "wb") as out:
                os.fchmod(out.fileno(), 0o644)  # mkstemp's 0600 would hide objects from other readers
                digest = hashlib.sha256()
                for chunk in chunks:
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
                return Path(name), digest.hexdigest(), os.fstat(out.fileno())
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise

    def _commit(self, path: Path, chunks: Iterable[bytes], content_type: str, metadata: Mapping[str, str] | None,
                if_absent: bool) -> bool:
        """Write ``chunks`` to ``path`` and its sidecar; False when ``if_absent`` and it exists."""
        tmp, digest, st = self._write_temp(path.parent, chunks)
        try:
            sidecar = {"etag": _etag(st), "content_type": content_type, "metadata": _check_metadata(metadata, digest)}
            if if_absent:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    if path.is_dir():
                        raise IsADirectoryError(errno.EISDIR, "a folder of other keys has this name") from None
                    return False
            else:
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self._write_sidecar(path, sidecar)
        return True

    def _write_sidecar(self, path: Path, sidecar: dict) -> None:
        tmp, _, _ = self._write_temp(path.parent, [json.dumps(sidecar, sort_keys=True).encode()])
        try:
            os.replace(tmp, path.with_name(path.name + _SIDECAR))
        finally:
            tmp.unlink(missing_ok=True)

    def _sidecar(self, path: Path, etag: str) -> dict:
        """The sidecar of ``path`` when it was written for version ``etag``, else ``{}``."""
        try:
            sidecar = json.loads(path.with_name(path.name + _SIDECAR).read_bytes())
        except (OSError, ValueError):
            return {}
        return sidecar if isinstance(sidecar, dict) and sidecar.get("etag") == etag else {}

    def _info(self, key: str, path: Path, st: os.stat_result, with_metadata: bool = True) -> ObjectInfo:
        etag = _etag(st)
        sidecar = self._sidecar(path, etag) if with_metadata else {}
        return ObjectInfo(key=key, size=st.st_size, etag=etag,
                          last_modified=datetime.fromtimestamp(st.st_mtime, tz=timezone.utc),
                          metadata=dict(sidecar.get("metadata", {})), content_type=sidecar.get("content_type"))

    def _open(self, key: str, path: Path):
        """``path`` opened for reading; ObjectNotFoundError when it is no object."""
        try:
            fh = open(path, "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFoundError(f"no object {key!r} in {self.describe()}") from None
        except OSError as exc:
            raise self._fail("read", key, exc) from None
        return fh

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream",
            metadata: Mapping[str, str] | None = None, if_absent: bool = False) -> bool:
        """See :meth:`ObjectStore.put`."""
        path = self._path(key)
        try:
            return self._commit(path, [data], content_type, metadata, if_absent)
        except OSError as exc:
            raise self._fail("put", key, exc) from None

    def get(self, key: str) -> bytes:
        """See :meth:`ObjectStore.get`."""
        with self._open(key, self._path(key)) as fh:
            try:
                return fh.read()
            except OSError as exc:
                raise self._fail("read", key, exc) from None

    def head(self, key: str) -> ObjectInfo | None:
        """See :meth:`ObjectStore.head`."""
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise self._fail("head", key, exc) from None
        return self._info(key, path, st) if stat.S_ISREG(st.st_mode) else None

    def delete(self, key: str) -> None:
        """See :meth:`ObjectStore.delete`."""
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
            path.with_name(path.name + _SIDECAR).unlink(missing_ok=True)
        except NotADirectoryError:
            return
        except OSError as exc:
            raise self._fail("delete", key, exc) from None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """See :meth:`ObjectStore.list`: a walk of the prefix's folder, temporary files and
        sidecars left out."""
        folder = _check_prefix(prefix).rpartition("/")[0]
        start = self._path(folder) if folder else self.root
        found = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            base = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                key = name if base == "." else f"{base}/{name}"
                if not name.startswith(".") and not name.endswith(_SIDECAR) and key.startswith(prefix):
                    found.append(key)
        for key in sorted(found):
            path = self.root / key
            try:
                st = path.stat()
            except FileNotFoundError:
                continue  # deleted since the walk
            except OSError as exc:
                raise self._fail("list", key, exc) from None
            yield self._info(key, path, st, with_metadata=False)

    def presigned_url(self, key: str, expires_s: int) -> str:
        """See :meth:`ObjectStore.presigned_url`: the file's ``file://`` URL, which readers on
        this machine (or sharing its file system) can open; it does not expire."""
        _check_expiry(expires_s)
        return self._path(key).as_uri()

    def copy(self, src: str, dst: str) -> None:
        """See :meth:`ObjectStore.copy`: the metadata is that of the version copied."""
        src_path, dst_path = self._path(src), self._path(dst)
        with self._open(src, src_path) as fh:
            try:
                sidecar = self._sidecar(src_path, _etag(os.fstat(fh.fileno())))
                metadata = {n: v for n, v in sidecar.get("metadata", {}).items() if n != SHA256_METADATA}
                self._commit(dst_path, iter(lambda: fh.read(_CHUNK), b""),
                             sidecar.get("content_type", "application/octet-stream"), metadata, False)
            except OSError as exc:
                raise self._fail("copy", f"{src} -> {dst}", exc) from None

    def put_file(self, key: str, path: str | Path) -> None:
        """See :meth:`ObjectStore.put_file`: one pass over the file, hashed while copied."""
        target = self._path(key)
        try:
            self._commit(target, _file_chunks(path), "application/octet-stream", None, False)
        except OSError as exc:
            raise StoreError(f"cannot store {path} as {key!r} in {self.describe()}: {exc.strerror or exc}") from None

    def get_file(self, key: str, path: str | Path) -> None:
        """See :meth:`ObjectStore.get_file`."""
        destination = Path(path)
        with self._open(key, self._path(key)) as fh:
            try:
                tmp, _, _ = self._write_temp(destination.parent, iter(lambda: fh.read(_CHUNK), b""))
                try:
                    os.replace(tmp, destination)
                finally:
                    tmp.unlink(missing_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot copy {key!r} from {self.describe()} to {path}: "
                                 f"{exc.strerror or exc}") from None


def _etag(st: os.stat_result) -> str:
    """A local file's version stamp: inode, modification time (ns) and size, as nginx derives
    ETags; renames keep all three, any rewrite changes the inode."""
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


def object_store_from_uri(uri: str, **s3_options) -> ObjectStore:
    """The store ``uri`` names: ``s3://bucket/prefix`` an :class:`S3ObjectStore` (built with
    ``s3_options``: endpoint_url, region, access_key, secret_key, timeouts, max_attempts),
    ``file:///path`` or a plain path a :class:`LocalObjectStore` (``s3_options`` unused).
    Raises UsageError for another scheme or an ``s3://`` URI without a bucket."""
    parts = urlsplit(uri)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise UsageError(f"object store URI {uri!r} names no bucket (s3://bucket/prefix)")
        return S3ObjectStore(parts.netloc, parts.path.strip("/"), **s3_options)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise UsageError(f"object store URI {uri!r} names a remote host; use a local path")
        return LocalObjectStore(url2pathname(parts.path))
    if "://" in uri:
        raise UsageError(f"object store URI {uri!r}: the scheme {parts.scheme!r} is not s3:// or file://")
    return LocalObjectStore(uri)
