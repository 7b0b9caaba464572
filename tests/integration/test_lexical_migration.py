"""A LanceDB table written before the lexical index existed (no ``terms`` column, no full-text
index, no name vectors) is migrated when opened for a lexical search or a sync: the column is
filled from each row's path and content, the index built, the name vectors' column added (null:
never computed), and no other column (vectors, fences) changes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from indexing.lance_store import NAME_VECTOR, TERMS, LanceDBStore
from indexing.lexical import document_terms, query_terms
from indexing.store import SearchFilter

OLD_COLUMNS = ("id", "repo", "path", "chunk_index", "start_line", "end_line", "content", "language",
               "content_sha256", "commit", "indexed_at", "embedding_model", "fence")


def _old_table(uri: Path, rows: int) -> pa.Table:
    """The table as the store wrote it before this change: the old schema, ``rows`` rows."""
    contents = [f"def handler_{i}(request):\n    return respond_{i}(request)\n" for i in range(rows)]
    columns = {
        "id": [f"id-{i:05d}" for i in range(rows)], "repo": ["r"] * rows, "path": [f"pkg/mod_{i}.py" for i in range(rows)],
        "chunk_index": [0] * rows, "start_line": [1] * rows, "end_line": [2] * rows, "content": contents,
        "language": ["python"] * rows, "content_sha256": [hashlib.sha256(c.encode()).hexdigest() for c in contents],
        "commit": ["c"] * rows, "indexed_at": ["t"] * rows, "embedding_model": ["m"] * rows, "fence": [3] * rows,
    }
    vectors = np.random.default_rng(0).random((rows, 8), dtype=np.float32)
    data = pa.table({**columns, "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), 8)})
    lancedb.connect(str(uri)).create_table("codeindex", data=data)
    return data


@pytest.mark.parametrize("first_call", ["lexical_search", "ensure_collection"])
def test_a_table_from_before_the_lexical_index_is_migrated_on_first_use(tmp_path: Path, first_call: str) -> None:
    uri = tmp_path / "lancedb"
    before = _old_table(uri, 2500)  # more than one fill batch
    store = LanceDBStore(uri, "codeindex")
    if first_call == "ensure_collection":
        store.ensure_collection(8)
    hits = store.lexical_search(query_terms("handler_1234"), 3, SearchFilter(repo="r"))
    assert hits[0].id == "id-01234" and hits[0].path == "pkg/mod_1234.py"
    table = lancedb.connect(str(uri)).open_table("codeindex")
    after = table.to_arrow().sort_by("id")
    assert TERMS in after.schema.names
    assert after.select(list(OLD_COLUMNS)).equals(before.select(list(OLD_COLUMNS)))
    assert np.array_equal(after.column("vector").combine_chunks().flatten().to_numpy(),
                          before.column("vector").combine_chunks().flatten().to_numpy())
    assert after.column(TERMS).to_pylist() == [document_terms(p, c) for p, c in
                                               zip(before.column("path").to_pylist(), before.column("content").to_pylist())]
    assert [i.index_type for i in table.list_indices()] == ["FTS"]
    # The name vectors' column is added too, null in every row: never computed, those rows rank
    # by their vector alone (name_score 0) until their files are indexed again.
    assert after.column(NAME_VECTOR).null_count == 2500
    nearest = store.search(before.column("vector")[7].values.to_numpy(), 1)
    assert nearest[0].id == "id-00007" and nearest[0].name_score == 0.0
    LanceDBStore(uri, "codeindex").ensure_collection(8)  # once migrated, nothing more to do
    assert table.version == lancedb.connect(str(uri)).open_table("codeindex").version
