"""The LanceDB store on an S3 endpoint that went down after the table was opened: every call
raises StoreError (which tasks retry and the breakers count), never Lance's own RuntimeError.
A bare ``table.schema`` read outside the store's error handling once let a RuntimeError escape
an upsert, and a fleet's batch failed for good during an S3 outage instead of retrying."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from indexing.errors import StoreError
from indexing.lance_store import LanceDBStore
from indexing.lexical import query_terms
from indexing.store import VectorObject
from tests.s3 import MOTO_ACCESS_KEY, MOTO_SECRET_KEY, MotoServer

DIM = 8


def _objects(n: int) -> list[VectorObject]:
    rng = np.random.default_rng(1)
    return [VectorObject(id=f"id-{i}", repo="r", path=f"m{i}.py", chunk_index=0, start_line=1, end_line=2,
                         content=f"def handler_{i}(): pass", language="python", content_sha256=f"{i:064x}",
                         commit="c", indexed_at="t", embedding_model="m", fence=1,
                         vector=rng.random(DIM, dtype=np.float32), name_vector=rng.random(DIM, dtype=np.float32),
                         names_sha256=f"{i:064x}") for i in range(n)]


@pytest.fixture
def down_store():
    import boto3

    server = MotoServer()
    server.start()
    bucket = f"down-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=server.url, region_name="us-east-1", aws_access_key_id=MOTO_ACCESS_KEY,
                 aws_secret_access_key=MOTO_SECRET_KEY).create_bucket(Bucket=bucket)
    options = {"aws_endpoint": server.url, "aws_region": "us-east-1", "aws_access_key_id": MOTO_ACCESS_KEY,
               "aws_secret_access_key": MOTO_SECRET_KEY, "allow_http": "true", "connect_timeout": "1s",
               "timeout": "2s", "client_max_retries": "0", "client_retry_timeout": "1"}
    store = LanceDBStore(f"s3://{bucket}/lancedb", "codeindex", storage_options=options)
    store.ensure_collection(DIM)
    store.upsert(_objects(3))
    assert store.count() == 3
    server.stop()  # the table is open; the endpoint now refuses connections
    yield store
    server.stop()


@pytest.mark.parametrize("call", ["upsert", "inventory", "objects", "export", "search", "lexical_search", "count",
                                  "ensure_collection", "delete"])
def test_every_call_on_a_down_endpoint_raises_store_error(down_store: LanceDBStore, call: str) -> None:
    calls = {
        "upsert": lambda: down_store.upsert(_objects(2)),
        "inventory": lambda: list(down_store.inventory("r")),
        "objects": lambda: list(down_store.objects("r")),
        "export": lambda: list(down_store.export()),
        "search": lambda: down_store.search(np.ones(DIM, dtype=np.float32), 3),
        "lexical_search": lambda: down_store.lexical_search(query_terms("handler_1"), 3),
        "count": lambda: down_store.count("r"),
        "ensure_collection": lambda: down_store.ensure_collection(DIM),
        "delete": lambda: down_store.delete(["id-1"], 5),
    }
    with pytest.raises(StoreError):
        calls[call]()
