"""Object storage behind one interface: :class:`indexing.s3_objects.S3ObjectStore` for any
S3-compatible endpoint (AWS, MinIO, moto) and :class:`LocalObjectStore`, the embedded default,
as files under a directory. Keys are relative ``/``-separated names; both stores accept and
refuse the same ones. This module does not import boto3 (see ``indexing.s3_objects``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol, runtime_checkable

from indexing import metrics
from indexing.errors import ObjectNotFoundError, StoreError

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
            with metrics.transfer("upload", "local"):
                return self._commit(path, [data], content_type, metadata, if_absent)
        except OSError as exc:
            raise self._fail("put", key, exc) from None

    def get(self, key: str) -> bytes:
        """See :meth:`ObjectStore.get`."""
        with metrics.transfer("download", "local"), self._open(key, self._path(key)) as fh:
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
            with metrics.transfer("upload", "local"):
                self._commit(target, _file_chunks(path), "application/octet-stream", None, False)
        except OSError as exc:
            raise StoreError(f"cannot store {path} as {key!r} in {self.describe()}: {exc.strerror or exc}") from None

    def get_file(self, key: str, path: str | Path) -> None:
        """See :meth:`ObjectStore.get_file`."""
        destination = Path(path)
        with metrics.transfer("download", "local"), self._open(key, self._path(key)) as fh:
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
