"""S3 for tests, over real HTTP: moto's server mode on loopback (:class:`MotoServer`), or the
endpoint that ``CODEINDEX_TEST_S3_ENDPOINT`` names (a real MinIO, say); and pytest fixtures
that give each test a fresh bucket (``s3_server``, session-wide, and ``s3_store``)."""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import boto3
import pytest
from botocore.config import Config

from indexing.s3_objects import S3ObjectStore
from tests.conftest import free_port

#: The credentials given to moto, which accepts any: tests assert that messages never show them.
MOTO_ACCESS_KEY = "AKIACODEINDEXTESTKEY"
MOTO_SECRET_KEY = "codeindex-test-secret-never-shown"


class MotoServer:
    """moto's ``ThreadedMotoServer`` on 127.0.0.1 at ``port`` (a free one by default), in this
    process; ``url`` is its endpoint.

    moto keeps its state (buckets, objects) in module-level backends of this process, not in
    the server (moto 5.2): :meth:`stop` closes the listening socket, so clients get "connection
    refused", and :meth:`start` serves again on the same port with every bucket and object
    written before still there. A stopped server is a down endpoint, not an emptied one.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = None

    def start(self) -> None:
        """Listen on ``url``; RuntimeError when that fails (the port taken) within 10 s."""
        from moto.server import ThreadedMotoServer  # lazy: seconds to import, and spawned test processes import us

        # werkzeug logs one INFO line per request to stderr, which buries a failing test's output.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        # ThreadedMotoServer.start waits without a timeout for a server thread that dies when it
        # cannot bind: start it from a thread we can stop waiting for.
        starter = threading.Thread(target=server.start, daemon=True)
        starter.start()
        starter.join(10)
        if starter.is_alive():
            raise RuntimeError(f"moto did not start listening on {self.url} (is the port taken?)")
        self._server = server

    def stop(self) -> None:
        """Stop listening (idempotent); the state stays, see the class docstring."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def restart(self) -> None:
        """Stop, then serve again on the same port (same state)."""
        self.stop()
        self.start()


@dataclass(frozen=True)
class S3Endpoint:
    """An S3 endpoint for tests; ``server`` is None for an external one (which tests cannot stop)."""

    url: str
    access_key: str | None
    secret_key: str | None = field(repr=False)
    region: str
    server: MotoServer | None = None

    def store(self, bucket: str, prefix: str = "", **options) -> S3ObjectStore:
        """An :class:`S3ObjectStore` on this endpoint (``options``: timeouts, max_attempts)."""
        return S3ObjectStore(bucket, prefix, endpoint_url=self.url, region=self.region, access_key=self.access_key,
                             secret_key=self.secret_key, **options)

    def drop_bucket(self, bucket: str) -> None:
        """Delete ``bucket`` and everything in it (every prefix); an absent bucket is fine."""
        client = boto3.client("s3", endpoint_url=self.url, region_name=self.region,
                              aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                              config=Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 2},
                                            s3={"addressing_style": "path"}))
        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for obj in page.get("Contents", []):
                    client.delete_object(Bucket=bucket, Key=obj["Key"])
            client.delete_bucket(Bucket=bucket)
        except client.exceptions.NoSuchBucket:
            pass


def s3_endpoint_for_tests() -> S3Endpoint:
    """The endpoint ``CODEINDEX_TEST_S3_ENDPOINT`` names, with ``CODEINDEX_TEST_S3_ACCESS_KEY``,
    ``CODEINDEX_TEST_S3_SECRET_KEY`` (unset: the AWS credential chain) and
    ``CODEINDEX_TEST_S3_REGION`` (default us-east-1); else a
    started :class:`MotoServer` (the caller stops ``.server``)."""
    region = os.environ.get("CODEINDEX_TEST_S3_REGION", "us-east-1")
    if url := os.environ.get("CODEINDEX_TEST_S3_ENDPOINT"):
        return S3Endpoint(url, os.environ.get("CODEINDEX_TEST_S3_ACCESS_KEY") or None,
                          os.environ.get("CODEINDEX_TEST_S3_SECRET_KEY") or None, region)
    server = MotoServer()
    server.start()
    return S3Endpoint(server.url, MOTO_ACCESS_KEY, MOTO_SECRET_KEY, region, server)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Endpoint]:
    """The session's S3 endpoint (see :func:`s3_endpoint_for_tests`)."""
    endpoint = s3_endpoint_for_tests()
    yield endpoint
    if endpoint.server is not None:
        endpoint.server.stop()


@pytest.fixture
def s3_store(s3_server: S3Endpoint) -> Iterator[S3ObjectStore]:
    """An :class:`S3ObjectStore` on a bucket of its own (prefix ``objects``), dropped afterwards."""
    store = s3_server.store(f"codeindex-test-{uuid.uuid4().hex[:12]}", "objects")
    store.ensure_bucket()
    yield store
    s3_server.drop_bucket(store.bucket)
