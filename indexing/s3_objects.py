"""S3 behind :class:`indexing.objects.ObjectStore`: :class:`S3ObjectStore` for any
S3-compatible endpoint (AWS, MinIO, moto), through boto3. A module of its own so that boto3
and botocore (0.15 s to import) load only where an ``s3://`` store is used
(:func:`object_store_from_uri`, here for that reason); the embedded mode never imports them.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from indexing import metrics
from indexing.errors import ObjectNotFoundError, StoreError, UsageError
from indexing.objects import (
    LocalObjectStore, ObjectInfo, ObjectStore, _check_expiry, _check_metadata, _check_prefix, check_key,
    sha256_file,
)


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
                with metrics.transfer("upload", "s3"):
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
            with metrics.transfer("download", "s3"):
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
            with metrics.transfer("upload", "s3"):
                self._call("PutFile", key, self._client.upload_file, Filename=str(path), Bucket=self.bucket, Key=full,
                           ExtraArgs={"Metadata": _check_metadata(None, digest),
                                      "ContentType": "application/octet-stream"}, Config=self._transfer)
        except OSError as exc:  # the file changed under the upload
            raise StoreError(f"cannot read {path} to upload it as {key!r}: {exc.strerror or exc}") from None

    def get_file(self, key: str, path: str | Path) -> None:
        """See :meth:`ObjectStore.get_file`: boto3 ``download_file``, which writes a temporary
        file beside ``path`` and renames it into place."""
        full = self._full(key)
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with metrics.transfer("download", "s3"):
                self._call("GetFile", key, self._client.download_file, Bucket=self.bucket, Key=full,
                           Filename=str(path), Config=self._transfer)
        except OSError as exc:
            raise StoreError(f"cannot write {path} to download {key!r} into it: {exc.strerror or exc}") from None


def _utc(moment: datetime | None) -> datetime | None:
    """``moment`` in UTC: botocore parses HEAD dates as UTC and listing dates as local time."""
    return moment.astimezone(timezone.utc) if moment is not None else None


def _without_userinfo(url: str) -> str:
    """``url`` without a ``user:password@`` part."""
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl() if "@" in parts.netloc else url


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
