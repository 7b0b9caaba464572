"""The embedding cache of a fleet, in PostgreSQL: a chunk one worker embedded is not embedded
again by another (the SQLite cache of the embedded mode lives on one machine's disk).

Vectors are stored as raw float32 bytes keyed by (model id, SHA-256 of the chunk text), as in
:class:`indexing.embed_cache.SQLiteEmbeddingCache`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from indexing.postgres import PgDatabase, open_migrated

#: The cache's table, migrated as its own component (``indexing.postgres.migrate``).
CACHE_SCHEMA: list[str] = [
    """CREATE TABLE IF NOT EXISTS embeddings (
        model text NOT NULL, text_sha256 text NOT NULL, vector bytea NOT NULL,
        PRIMARY KEY (model, text_sha256))""",
]
#: Keys per statement when vectors are read or written by the thousand.
_BATCH = 2000


class PostgresEmbeddingCache:
    """The :class:`~indexing.embed_cache.EmbeddingCache` of a fleet: one table shared by every
    worker. ``database`` is a DSN or the runtime's shared :class:`PgDatabase`.

    Storing a key again keeps the first vector (``ON CONFLICT DO NOTHING``): two workers that
    embedded the same text at once wrote the same vector anyway. Raises StoreError.
    """

    def __init__(self, database: str | PgDatabase) -> None:
        self.db = open_migrated(database, "embedding-cache", CACHE_SCHEMA, what="embedding cache")

    def get_many(self, model_id: str, text_hashes: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(text_hashes))
        for start in range(0, len(unique), _BATCH):
            rows = self.db.read("SELECT text_sha256, vector FROM embeddings WHERE model = %s AND text_sha256 = ANY(%s)",
                                [model_id, unique[start:start + _BATCH]])
            found.update({r["text_sha256"]: np.frombuffer(bytes(r["vector"]), dtype=np.float32) for r in rows})
        return found

    def put_many(self, model_id: str, vectors: Mapping[str, np.ndarray]) -> None:
        # In key order: two workers inserting overlapping keys then wait on each other's rows in
        # one order, never in a cycle (in any order, PostgreSQL found deadlocks between them).
        items = sorted(vectors.items())
        for start in range(0, len(items), _BATCH):
            part = items[start:start + _BATCH]
            hashes = [h for h, _ in part]
            blobs = [np.asarray(v, dtype=np.float32).tobytes() for _, v in part]
            self.db.write(lambda conn, hashes=hashes, blobs=blobs: conn.execute(
                "INSERT INTO embeddings (model, text_sha256, vector) "
                "SELECT %s, * FROM unnest(%s::text[], %s::bytea[]) ON CONFLICT DO NOTHING",
                [model_id, hashes, blobs]))

    def keys(self) -> Iterator[tuple[str, str]]:
        """Every key in key order, a page of :data:`_BATCH` at a time (keyset pagination on the
        primary key, so each page is one index range scan). Raises StoreError."""
        after = ("", "")
        while True:
            rows = self.db.read("SELECT model, text_sha256 FROM embeddings WHERE (model, text_sha256) > (%s, %s) "
                                "ORDER BY model, text_sha256 LIMIT %s", [*after, _BATCH])
            yield from ((r["model"], r["text_sha256"]) for r in rows)
            if len(rows) < _BATCH:
                return
            after = (rows[-1]["model"], rows[-1]["text_sha256"])

    def delete_many(self, model_id: str, text_hashes: Sequence[str]) -> int:
        """Delete those entries in key order (as :meth:`put_many` inserts: no deadlock between
        them). Raises StoreError."""
        unique = sorted(set(text_hashes))
        deleted = 0
        for start in range(0, len(unique), _BATCH):
            part = unique[start:start + _BATCH]
            deleted += self.db.write(lambda conn, part=part: conn.execute(
                "DELETE FROM embeddings WHERE model = %s AND text_sha256 = ANY(%s)", [model_id, part]).rowcount)
        return deleted

    def size_bytes(self) -> int:
        """The table with its index and TOAST data, in bytes (PostgreSQL's
        ``pg_total_relation_size``). Raises StoreError."""
        rows = self.db.read("SELECT pg_total_relation_size('embeddings') AS size")
        return int(rows[0]["size"] or 0)
