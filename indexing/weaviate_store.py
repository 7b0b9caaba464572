"""The Weaviate vector store: one Weaviate collection (optionally one tenant of it) behind the
:class:`~indexing.store.VectorStore` protocol, for fleets that share a Weaviate server.

The request building (filters, properties, the fence rule, result mapping) is in small pure
functions at module level, so that what would be sent can be checked without a server.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from indexing.errors import StoreError, UsageError
from indexing.lexical import document_terms
from indexing.store import EXPORT_FIELDS, SearchFilter, SearchHit, StoredChunk, VectorObject, name_similarity
from indexing.store import Compaction

log = logging.getLogger("codeindex.weaviate")

if TYPE_CHECKING:
    from weaviate import WeaviateClient
    from weaviate.collections import Collection
    from weaviate.collections.classes.config import Property
    from weaviate.collections.classes.data import DataObject
    from weaviate.collections.classes.filters import _Filters
    from weaviate.collections.classes.internal import Object

#: The server's cap on the objects one query returns or one ``delete_many`` deletes
#: (``QUERY_MAXIMUM_RESULTS``, default 10,000; weaviate-client v4 docs: "Delete objects",
#: ``BatchDeleteResponse.results.limit``). A server configured lower makes the listing of
#: ``chunk_indexes`` fail with a StoreError rather than return part of the answer.
QUERY_MAXIMUM_RESULTS = 10_000
#: Ids per ``contains_any`` filter (fence reads and deletes), well under the cap above.
ID_BATCH = 1000
#: Paths per ``contains_any`` filter of ``chunk_indexes``.
PATH_BATCH = 100
#: Objects per ``insert_many`` request (one gRPC message: 500 chunks of code and vectors).
INSERT_BATCH = 500
#: Objects per page of the cursor iterator (``collection.iterator(cache_size=...)``).
PAGE = 1000
#: The name of the collection's chunk vector (``Configure.Vectors.self_provided`` names it so).
VECTOR_NAME = "default"
#: The named vector holding each object's name vector (:attr:`VectorObject.name_vector`), read
#: back with the hits of a search, never searched itself (a flat index: no graph to build). An
#: object that defines nothing, or whose names were never computed, has none.
NAMES_VECTOR = "names"

_TEXT_FIELDS = ("repo", "path", "language", "content_sha256", "commit", "indexed_at", "embedding_model", "names_sha256")
_INT_FIELDS = ("chunk_index", "start_line", "end_line", "fence")
_PROPERTIES = ("repo", "path", "chunk_index", "start_line", "end_line", "content", "language",
               "content_sha256", "commit", "indexed_at", "embedding_model", "fence", "names_sha256")
#: The property BM25 searches: :func:`indexing.lexical.document_terms` of the object.
TERMS = "terms"
_HIT_PROPERTIES = ("repo", "path", "chunk_index", "start_line", "end_line", "content", "language")
_INVENTORY_PROPERTIES = ("repo", "path", "chunk_index", "content", "content_sha256")
#: Weaviate's rule for class names (weaviate-client v4 docs: "Collection definition"): a capital,
#: then letters, digits and underscores.
_CLASS_NAME = re.compile(r"[A-Z][_0-9A-Za-z]*")
#: Weaviate's rule for tenant names (weaviate-client v4 docs: "Multi-tenancy operations").
_TENANT_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _class_name(collection: str) -> str:
    """The Weaviate class of the codeindex collection ``collection``: its first letter capitalised
    (``"codeindex"`` -> ``"Codeindex"``, ``"my_index"`` -> ``"My_index"``), the rest unchanged.

    Weaviate capitalises a class name's first letter itself (``weaviate.util._capitalize_first_letter``),
    so ``codeindex`` and ``Codeindex`` name the same class on the server, and so do they here.
    Raises UsageError for a name Weaviate cannot hold (it must then match ``[A-Z][_0-9A-Za-z]*``).
    """
    name = collection[:1].upper() + collection[1:]
    if not _CLASS_NAME.fullmatch(name):
        raise UsageError(f"collection name {collection!r} cannot be a Weaviate class: use letters, digits "
                         "and underscores, starting with a letter")
    return name


def _connection_params(url: str) -> dict[str, Any]:
    """The arguments of ``weaviate.connect_to_custom`` for ``url``.

    ``url`` is ``http[s]://host[:port]`` (port default 80/443) for the REST API; the gRPC API is
    on the same host at port 50051, with the same security, unless the query says otherwise:
    ``http://weaviate:8080?grpc_port=50052&grpc_host=weaviate-grpc``. Raises UsageError for
    another form (no credentials in the URL: the API key is its own setting).
    """
    parts = urlsplit(url)
    try:
        port = parts.port
        query = parse_qs(parts.query, strict_parsing=bool(parts.query))
        grpc_port = int(query.get("grpc_port", ["50051"])[-1])
    except ValueError:
        raise UsageError("the Weaviate URL has a malformed port or query; expected "
                         "http[s]://host[:port][?grpc_port=N&grpc_host=H]") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        raise UsageError("the Weaviate URL must be http[s]://host[:port] without credentials "
                         "(the API key is a setting of its own)")
    secure = parts.scheme == "https"
    return {
        "http_host": parts.hostname, "http_port": port or (443 if secure else 80), "http_secure": secure,
        "grpc_host": query.get("grpc_host", [parts.hostname])[-1], "grpc_port": grpc_port, "grpc_secure": secure,
    }


def _uuid(object_id: str) -> str:
    """``object_id`` in the canonical form Weaviate answers with (lowercase, dashed).

    Raises ValueError for an id that is no UUID (codeindex ids are uuid5 strings, indexing/ids.py).
    """
    return str(uuid.UUID(object_id))


def _chunks(values: Sequence, size: int) -> Iterator[list]:
    """``values`` in consecutive lists of at most ``size`` items."""
    for start in range(0, len(values), size):
        yield list(values[start : start + size])


def _schema() -> list[Property]:
    """The properties of the collection (DESIGN.md, "The data").

    The text properties that filters compare whole (repo, path, ...) are tokenized as one
    token (``Tokenization.FIELD``): with the default ``word`` tokenization ``path = "a/b.py"``
    would also match ``b/a.py``. FIELD trims surrounding whitespace, so values differing only in
    it compare equal on the server; the reads that return properties compare exactly again here.
    ``fence`` has a range index for the ``fence <= token`` filters of deletes. ``terms`` (the
    code-aware terms of indexing/lexical.py) is the one property BM25 searches, split at
    whitespace only (``Tokenization.WHITESPACE``) so that ``get_user`` stays one token.
    """
    from weaviate.classes.config import DataType, Property, Tokenization  # lazy: weaviate costs 0.5 s to import

    text = [Property(name=name, data_type=DataType.TEXT, tokenization=Tokenization.FIELD) for name in _TEXT_FIELDS]
    ints = [Property(name=name, data_type=DataType.INT, index_range_filters=name == "fence") for name in _INT_FIELDS]
    content = Property(name="content", data_type=DataType.TEXT, index_filterable=False)
    return [*text, *ints, content, _terms_property()]


def _terms_property() -> Property:
    """The ``terms`` property (see :func:`_schema`): searchable, never filtered on."""
    from weaviate.classes.config import DataType, Property, Tokenization  # lazy: see _schema

    return Property(name=TERMS, data_type=DataType.TEXT, tokenization=Tokenization.WHITESPACE,
                    index_filterable=False, index_searchable=True)


def _properties(obj: VectorObject) -> dict[str, Any]:
    """The Weaviate properties of ``obj``: every field but ``id`` (the object's uuid) and ``vector``,
    and its full-text ``terms``."""
    props = {name: (int(getattr(obj, name)) if name in _INT_FIELDS else getattr(obj, name)) for name in _PROPERTIES}
    props[TERMS] = document_terms(obj.path, obj.content)
    return props


def _data_object(obj: VectorObject, with_names: bool = True) -> DataObject:
    """What ``insert_many`` sends for ``obj``: its properties, its id as the uuid and its vector
    under :data:`VECTOR_NAME`, as a list of floats (weaviate-python-client#1002: NumPy arrays
    were once dropped silently by ``insert_many``), and its name vector under
    :data:`NAMES_VECTOR` when it has a non-zero one and ``with_names`` (the collection has that
    vector)."""
    from weaviate.classes.data import DataObject  # lazy: see _schema

    vectors = {VECTOR_NAME: np.asarray(obj.vector, dtype=np.float32).tolist()}
    if with_names and obj.name_vector is not None and np.any(obj.name_vector):
        vectors[NAMES_VECTOR] = np.asarray(obj.name_vector, dtype=np.float32).tolist()
    return DataObject(properties=_properties(obj), uuid=_uuid(obj.id), vector=vectors)


def _names_vector_config():
    """The :data:`NAMES_VECTOR` named vector: self-provided, cosine, a flat index."""
    from weaviate.classes.config import Configure, VectorDistances  # lazy: see _schema

    return Configure.Vectors.self_provided(
        name=NAMES_VECTOR, vector_index_config=Configure.VectorIndex.flat(distance_metric=VectorDistances.COSINE))


def _name_vector_of(obj: Object) -> np.ndarray | None:
    """The name vector an answer's object carries (asked with ``include_vector``), or None."""
    vector = (obj.vector or {}).get(NAMES_VECTOR)
    return None if vector is None else np.asarray(vector, dtype=np.float32)


def _writable(objects: Iterable[VectorObject], stored: Mapping[str, int]) -> list[VectorObject]:
    """The fence rule of an upsert: of ``objects``, those to write given ``stored``
    (``{canonical id: fence}`` of the objects the store holds).

    An object is written when nothing is stored under its id or the stored fence is at most its
    own (equal fences rewrite, as LanceDB's ``target.fence <= source.fence``). Of several objects
    with one id, the one with the highest fence (the last among equals) is the candidate.
    """
    newest: dict[str, VectorObject] = {}
    for obj in objects:
        key = _uuid(obj.id)
        if key not in newest or newest[key].fence <= obj.fence:
            newest[key] = obj
    return [obj for key, obj in newest.items() if stored.get(key, obj.fence) <= obj.fence]


def _id_filter(ids: Sequence[str]) -> _Filters:
    """``Filter.by_id().contains_any(ids)`` for one batch of 1 to :data:`ID_BATCH` ids.

    Raises ValueError for an empty or oversized batch (callers split with ``_chunks``) or an id
    that is no UUID.
    """
    from weaviate.classes.query import Filter  # lazy: see _schema

    if not 0 < len(ids) <= ID_BATCH:
        raise ValueError(f"an id filter takes 1 to {ID_BATCH} ids, got {len(ids)}")
    return Filter.by_id().contains_any([_uuid(i) for i in ids])


def _delete_filter(ids: Sequence[str], fence: int) -> _Filters:
    """The objects of ``ids`` (one batch, see :func:`_id_filter`) whose fence is at most ``fence``."""
    from weaviate.classes.query import Filter  # lazy: see _schema

    return _id_filter(ids) & Filter.by_property("fence").less_or_equal(int(fence))


def _repo_filter(repo: str) -> _Filters:
    """The objects of repository ``repo`` (compared whole: ``repo`` is FIELD-tokenized, see _schema)."""
    from weaviate.classes.query import Filter  # lazy: see _schema

    return Filter.by_property("repo").equal(repo)


def _search_filter(filters: SearchFilter | None) -> _Filters | None:
    """The Weaviate filter of ``filters`` (None when it admits everything): ``repo`` and
    ``language`` compared whole, the path glob as ``like`` (Weaviate's ``*`` matches any
    characters and ``?`` one, as SearchFilter's ``*`` and ``?`` do; ``**`` is ``*``) on the
    pattern or beneath it (weaviate-client v4 docs: "Filters", ``Filter.by_property().like``)."""
    from weaviate.classes.query import Filter  # lazy: see _schema

    if filters is None:
        return None
    parts = []
    if filters.repo:
        parts.append(_repo_filter(filters.repo))
    if filters.language:
        parts.append(Filter.by_property("language").equal(filters.language))
    if filters.path:
        glob = re.sub(r"\*+", "*", re.sub(r"\*\*/", "*", filters.path.strip("/")))
        parts.append(Filter.by_property("path").like(glob) | Filter.by_property("path").like(glob + "/*"))
    return Filter.all_of(parts) if len(parts) > 1 else (parts[0] if parts else None)


def _paths_filter(repo: str, paths: Sequence[str]) -> _Filters:
    """The objects of ``repo`` whose path is one of ``paths`` (1 to :data:`PATH_BATCH` of them)."""
    from weaviate.classes.query import Filter  # lazy: see _schema

    if not 0 < len(paths) <= PATH_BATCH:
        raise ValueError(f"a path filter takes 1 to {PATH_BATCH} paths, got {len(paths)}")
    return _repo_filter(repo) & Filter.by_property("path").contains_any(list(paths))


def _score(distance: float) -> float:
    """Cosine similarity from Weaviate's cosine distance (``1 - cos``, 0..2): ``1 - distance``."""
    return 1.0 - float(distance)


def _hit(obj: Object, query: np.ndarray | None = None) -> SearchHit:
    """The :class:`SearchHit` of one object of a ``near_vector`` answer (asked with
    ``MetadataQuery(distance=True)``; without a distance it raises ValueError), with the cosine
    of ``query`` and the object's name vector when both are there (else 0.0)."""
    if obj.metadata.distance is None:
        raise ValueError("the search answer carries no distance; ask for MetadataQuery(distance=True)")
    props = obj.properties
    names = name_similarity(query, _name_vector_of(obj)) if query is not None else 0.0
    return SearchHit(id=str(obj.uuid), repo=props["repo"], path=props["path"], chunk_index=int(props["chunk_index"]),
                     start_line=int(props["start_line"]), end_line=int(props["end_line"]), content=props["content"],
                     language=props["language"], score=_score(obj.metadata.distance), name_score=names)


def _lexical_hit(obj: Object) -> SearchHit:
    """The :class:`SearchHit` of one object of a ``bm25`` answer (asked with
    ``MetadataQuery(score=True)``; without a score it raises ValueError)."""
    if obj.metadata.score is None:
        raise ValueError("the search answer carries no score; ask for MetadataQuery(score=True)")
    props = obj.properties
    return SearchHit(id=str(obj.uuid), repo=props["repo"], path=props["path"], chunk_index=int(props["chunk_index"]),
                     start_line=int(props["start_line"]), end_line=int(props["end_line"]), content=props["content"],
                     language=props["language"], score=float(obj.metadata.score))


def _stored_chunk(obj: Object) -> StoredChunk:
    """The :class:`StoredChunk` of one object read with the inventory's properties."""
    props = obj.properties
    return StoredChunk(id=str(obj.uuid), path=props["path"], chunk_index=int(props["chunk_index"]),
                       content=props["content"], content_sha256=props["content_sha256"])


def _export_row(obj: Object, with_vectors: bool) -> dict:
    """One row of ``export``: :data:`EXPORT_FIELDS` (and ``vector``, a list of floats)."""
    row: dict[str, Any] = {"id": str(obj.uuid)}
    for name in EXPORT_FIELDS[1:]:
        value = obj.properties.get(name)
        if name == "names_sha256":
            value = value or ""  # an object written before name vectors has none
        row[name] = int(value) if name in _INT_FIELDS else value
    if with_vectors:
        row["vector"] = [float(x) for x in obj.vector[VECTOR_NAME]]
    return row


def _admits(filters: SearchFilter | None, obj: Object) -> bool:
    """Whether an answer's object has exactly the filtered repo and language (FIELD tokenization
    trims whitespace on the server, so ``"a "`` matched ``"a"`` there; see _schema)."""
    if filters is None:
        return True
    props = obj.properties
    return (not filters.repo or props["repo"] == filters.repo) and (
        not filters.language or props["language"] == filters.language)


class WeaviateStore:
    """A Weaviate collection (class :func:`_class_name` of ``collection``) holding :class:`VectorObject`.

    ``client_factory`` returns a connected ``WeaviateClient`` (its timeouts are the factory's
    business); otherwise ``url`` (see :func:`_connection_params`) and ``api_key`` are used with
    ``weaviate.connect_to_custom`` and ``AdditionalConfig(timeout=Timeout(init=, query=,
    insert=timeout_s))``, so every call has a timeout of ``timeout_s`` seconds (weaviate-client v4
    docs: "Custom connections"). The connection is opened on first use. With ``tenant``, the
    collection is multi-tenant and this store reads and writes that tenant only
    (``collection.with_tenant``; docs: "Multi-tenancy operations"); ``drop`` removes the tenant.

    Objects: the Weaviate uuid is the codeindex id (a uuid5 string), the properties those of
    :func:`_schema`, the vector self-provided (no vectorizer), indexed with HNSW and cosine
    distance. Needs Weaviate 1.27 or later (weaviate-client 4.24's minimum).

    Every failure of Weaviate (``WeaviateBaseError`` and its subclasses, socket errors) becomes a
    :class:`StoreError` naming the operation and the class, never containing the API key.
    Raises UsageError at construction for a malformed URL, collection or tenant name.

    Concurrent writers: Weaviate has no conditional write, so an upsert reads the stored fences
    and then writes (see :meth:`upsert`); between the read and the write a second writer can
    land. In codeindex the writers of one repository hold its Redis repository lock
    (workers/locks.py), which closes that window; this store alone does not.
    """

    def __init__(self, client_factory: Callable[[], WeaviateClient] | None = None, *, url: str | None = None,
                 api_key: str | None = None, collection: str, tenant: str | None = None,
                 timeout_s: float = 30.0) -> None:
        if (client_factory is None) == (url is None):
            raise UsageError("a Weaviate store needs either a client factory or a URL, not both")
        if tenant is not None and not _TENANT_NAME.fullmatch(tenant):
            raise UsageError(f"tenant name {tenant!r} is not a Weaviate tenant name ([A-Za-z0-9_-], 1 to 64)")
        if timeout_s <= 0:
            raise UsageError(f"the Weaviate timeout must be positive, got {timeout_s}")
        self.collection, self.class_name, self.tenant = collection, _class_name(collection), tenant
        self.timeout_s = timeout_s
        self._factory = client_factory
        self._params = _connection_params(url) if url is not None else None
        self._api_key = api_key
        self._client: WeaviateClient | None = None
        self._handle: Collection | None = None
        self._names: bool | None = None  # whether the collection has NAMES_VECTOR; None: not read yet
        self._lock = threading.Lock()

    # --- connection and errors ----------------------------------------------------------------

    @contextmanager
    def _failing(self, operation: str):
        """Turn a Weaviate failure inside the block into a StoreError for ``operation``, with the
        API key blanked out (and the original not chained when it contained the key)."""
        from weaviate.exceptions import WeaviateBaseError  # lazy: see _schema

        try:
            yield
        except (WeaviateBaseError, OSError) as exc:
            text, cause = str(exc) or type(exc).__name__, exc
            if self._api_key and self._api_key in text:
                text, cause = text.replace(self._api_key, "***"), None
            where = self.class_name + (f" (tenant {self.tenant})" if self.tenant else "")
            raise StoreError(f"Weaviate {operation} on collection {where} failed: {text}") from cause

    def _connect(self) -> WeaviateClient:
        """The client, connected on first use (raises StoreError when the server cannot be reached)."""
        with self._lock:
            if self._client is None:
                with self._failing("connect"):
                    self._client = self._factory() if self._factory is not None else self._open_client()
            return self._client

    def _open_client(self) -> WeaviateClient:
        import weaviate  # lazy: see _schema
        from weaviate.classes.init import AdditionalConfig, Auth, Timeout  # lazy: see _schema

        timeout = Timeout(init=self.timeout_s, query=self.timeout_s, insert=self.timeout_s)
        return weaviate.connect_to_custom(**self._params, additional_config=AdditionalConfig(timeout=timeout),
                                          auth_credentials=Auth.api_key(self._api_key) if self._api_key else None)

    def close(self) -> None:
        """Close the client this store opened (or got from its factory); a later call reconnects."""
        with self._lock:
            client, self._client, self._handle = self._client, None, None
        if client is not None:
            with self._failing("close"):
                client.close()

    def _open(self) -> Collection | None:
        """The collection (scoped to the tenant), or None when it (or the tenant) does not exist.
        A found handle is kept: the existence checks are REST calls."""
        if self._handle is None:
            client = self._connect()
            with self._failing("open"):
                if not client.collections.exists(self.class_name):
                    return None
                handle = client.collections.use(self.class_name)
                if self.tenant is not None:
                    if not handle.tenants.exists(self.tenant):
                        return None
                    handle = handle.with_tenant(self.tenant)
            self._handle = handle
        return self._handle

    def _require(self) -> Collection:
        handle = self._open()
        if handle is None:
            what = f"tenant {self.tenant} of " if self.tenant else ""
            raise StoreError(f"{what}Weaviate collection {self.class_name} does not exist (ensure_collection first)")
        return handle

    # --- the protocol -------------------------------------------------------------------------

    def ensure_collection(self, dimension: int) -> None:
        """Create the collection (and the tenant) if missing; a concurrent creator winning is fine.

        ``collections.create(name, properties=_schema(), vector_config=Configure.Vectors.self_provided(
        vector_index_config=Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE)))``
        (weaviate-client v4 docs: "Manage collections", "Vectorizer and vector index config").
        Weaviate takes a vector index's dimension from its first vector and rejects vectors of
        another length, so ``dimension`` (> 0) is not declared. The collection has two named
        vectors: :data:`VECTOR_NAME` (HNSW) and :data:`NAMES_VECTOR` (flat, never searched). A
        collection made before the lexical index gets its ``terms`` property
        (``collection.config.add_property``), one made before name vectors its
        :data:`NAMES_VECTOR` (``collection.config.add_vector``; a server too old to add a vector
        to a collection keeps it without, and its objects rank by their vector alone). Raises
        StoreError.
        """
        if dimension <= 0:
            raise ValueError(f"dimension must be positive, got {dimension}")
        if (handle := self._open()) is not None:
            from weaviate.exceptions import WeaviateBaseError  # lazy: see _schema

            with self._failing("add the terms property"):
                config = handle.config.get()
                known = {prop.name for prop in config.properties}
                if TERMS not in known:
                    handle.config.add_property(_terms_property())
                if "names_sha256" not in known:
                    handle.config.add_property(next(p for p in _schema() if p.name == "names_sha256"))
                self._names = NAMES_VECTOR in (config.vector_config or {})
                if not self._names:
                    try:
                        handle.config.add_vector(vector_config=_names_vector_config())
                        self._names = True
                    except WeaviateBaseError as exc:
                        log.warning("Weaviate collection %s: cannot add the %s vector (%s); its objects rank by "
                                    "their vector alone", self.class_name, NAMES_VECTOR, exc)
            return
        from weaviate.classes.config import Configure, VectorDistances  # lazy: see _schema
        from weaviate.exceptions import WeaviateBaseError  # lazy: see _schema

        client = self._connect()
        with self._failing("create"):
            if not client.collections.exists(self.class_name):
                vectors = Configure.Vectors.self_provided(
                    name=VECTOR_NAME,
                    vector_index_config=Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE))
                tenancy = Configure.multi_tenancy(enabled=True) if self.tenant else None
                try:
                    client.collections.create(self.class_name, properties=_schema(),
                                              vector_config=[vectors, _names_vector_config()],
                                              multi_tenancy_config=tenancy)
                except WeaviateBaseError:
                    if not client.collections.exists(self.class_name):
                        raise
            if self.tenant is not None:
                tenants = client.collections.use(self.class_name).tenants
                if not tenants.exists(self.tenant):
                    try:
                        tenants.create(self.tenant)
                    except WeaviateBaseError:
                        if not tenants.exists(self.tenant):
                            raise
        self._require()

    def upsert(self, objects: Sequence[VectorObject]) -> int:
        """Insert or replace ``objects`` by id unless the stored object has a newer fence; returns
        the number written.

        Weaviate has no conditional write, so the stored fences of those ids are read first
        (``query.fetch_objects(filters=Filter.by_id().contains_any(ids))``, :data:`ID_BATCH` ids a
        query) and only the objects :func:`_writable` keeps are sent, :data:`INSERT_BATCH` per
        ``data.insert_many`` (a batch import replaces the object of an existing uuid). The read and
        the write are two steps: a concurrent writer between them is not seen (the repository
        lock closes that window, see the class). Raises StoreError when the collection is missing
        or any object fails, naming how many failed and the first error (weaviate-client v4 docs:
        "Batch import", ``BatchObjectReturn.errors`` / ``batch.failed_objects``); objects of the
        batches before were written, and a retry writes them again harmlessly.
        """
        if not objects:
            return 0
        handle = self._require()
        written = 0
        with self._failing(f"upsert of {len(objects)} objects"):
            names = self._has_names(handle)
            todo = _writable(objects, self._stored_fences(handle, list(dict.fromkeys(_uuid(o.id) for o in objects))))
            for batch in _chunks(todo, INSERT_BATCH):
                result = handle.data.insert_many([_data_object(obj, names) for obj in batch])
                if result.errors:
                    first = next(iter(result.errors.values())).message
                    raise StoreError(f"Weaviate upsert into {self.class_name}: {len(result.errors)} of {len(batch)} "
                                     f"objects failed ({written} written before); first error: {first}")
                written += len(batch)
        return written

    def _has_names(self, handle: Collection) -> bool:
        """Whether the collection has the :data:`NAMES_VECTOR` (its configuration read once)."""
        if self._names is None:
            self._names = NAMES_VECTOR in (handle.config.get().vector_config or {})
        return self._names

    def _stored_fences(self, handle: Collection, ids: Sequence[str]) -> dict[str, int]:
        """``{id: fence}`` of the stored objects among ``ids`` (canonical ids)."""
        fences: dict[str, int] = {}
        for part in _chunks(ids, ID_BATCH):
            answer = handle.query.fetch_objects(filters=_id_filter(part), limit=len(part), return_properties=["fence"])
            fences.update((str(obj.uuid), int(obj.properties["fence"])) for obj in answer.objects)
        return fences

    def settle(self, *, final: bool = True) -> None:
        """Nothing to bring up to date: Weaviate maintains its BM25 index on every write."""

    def delete(self, ids: Sequence[str], fence: int) -> None:
        """Delete the objects ``ids`` whose fence is at most ``fence``.

        ``data.delete_many(where=_delete_filter(part, fence))`` per :data:`ID_BATCH` ids, repeated
        until it matches nothing: the server deletes at most ``QUERY_MAXIMUM_RESULTS`` objects a
        call (weaviate-client v4 docs: "Delete objects", ``DeleteManyReturn``). Raises StoreError
        when the collection is missing, an object fails to be deleted (``failed > 0``) or a call
        matches objects but deletes none.
        """
        if not ids:
            return
        handle = self._require()
        with self._failing(f"delete of {len(ids)} objects"):
            for part in _chunks(list(dict.fromkeys(_uuid(i) for i in ids)), ID_BATCH):
                where = _delete_filter(part, fence)
                while True:
                    result = handle.data.delete_many(where=where)
                    if result.failed:
                        raise StoreError(f"Weaviate delete from {self.class_name}: {result.failed} of "
                                         f"{result.matches} matched objects failed to be deleted")
                    if result.matches == 0:
                        break
                    if result.successful == 0:
                        raise StoreError(f"Weaviate delete from {self.class_name} matched {result.matches} "
                                         "objects and deleted none")

    def chunk_indexes(self, repo: str, paths: Sequence[str]) -> dict[str, list[int]]:
        """``{path: sorted chunk indexes}`` of the objects stored for those of ``paths`` in ``repo``.

        ``query.fetch_objects(filters=_paths_filter(...), limit=QUERY_MAXIMUM_RESULTS)`` per
        :data:`PATH_BATCH` paths; an answer that fills the limit may be cut, so that batch is
        split in halves and asked again. Raises StoreError when one path alone has that many
        chunks, or when Weaviate fails.
        """
        handle = self._open() if paths else None
        if handle is None:
            return {}
        found: dict[str, list[int]] = {}
        with self._failing(f"listing of the chunks of {len(paths)} paths"):
            for part in _chunks(list(dict.fromkeys(paths)), PATH_BATCH):
                self._collect_indexes(handle, repo, part, found)
        return {path: sorted(indexes) for path, indexes in found.items()}

    def _collect_indexes(self, handle: Collection, repo: str, paths: list[str], found: dict[str, list[int]]) -> None:
        answer = handle.query.fetch_objects(filters=_paths_filter(repo, paths), limit=QUERY_MAXIMUM_RESULTS,
                                            return_properties=["repo", "path", "chunk_index"])
        if len(answer.objects) >= QUERY_MAXIMUM_RESULTS:
            if len(paths) == 1:
                raise StoreError(f"{paths[0]} has {QUERY_MAXIMUM_RESULTS} or more chunks in {self.class_name}, "
                                 "more than one Weaviate query returns")
            half = len(paths) // 2
            self._collect_indexes(handle, repo, paths[:half], found)
            self._collect_indexes(handle, repo, paths[half:], found)
            return
        wanted = set(paths)
        for obj in answer.objects:
            props = obj.properties
            if props["repo"] == repo and props["path"] in wanted:  # exact, see _schema
                found.setdefault(props["path"], []).append(int(props["chunk_index"]))

    def inventory(self, repo: str) -> Iterator[StoredChunk]:
        """Yield every object of ``repo`` with its content. Raises StoreError when it cannot be read.

        Reads the whole collection (or tenant) with the cursor API, ``collection.iterator``, which
        takes no filter (weaviate-client v4 docs: "Read all objects"), and keeps ``repo``'s objects:
        a collection shared by many repositories reads them all; a tenant per repository does not.
        """
        handle = self._open()
        if handle is None:
            return
        with self._failing(f"inventory of {repo}"):
            for obj in handle.iterator(return_properties=list(_INVENTORY_PROPERTIES), cache_size=PAGE):
                if obj.properties["repo"] == repo:
                    yield _stored_chunk(obj)

    def objects(self, repo: str) -> Iterator[VectorObject]:
        """Every object of ``repo`` with its vector: the cursor iterator over the collection (or
        tenant), as :meth:`inventory` reads it, keeping ``repo``'s objects. Raises StoreError."""
        handle = self._open()
        if handle is None:
            return
        with self._failing(f"objects of {repo}"):
            for obj in handle.iterator(include_vector=True, return_properties=list(_PROPERTIES), cache_size=PAGE):
                props = obj.properties
                if props["repo"] == repo:
                    yield VectorObject(id=str(obj.uuid), **{n: int(props[n]) if n in _INT_FIELDS else props.get(n) or ""
                                                            for n in _PROPERTIES},
                                       vector=np.asarray(obj.vector[VECTOR_NAME], dtype=np.float32),
                                       name_vector=_name_vector_of(obj))

    def compact(self, keep_seconds: float, *, dry_run: bool = False) -> Compaction:
        """Nothing to do: Weaviate compacts its segments itself, in the background, and keeps
        no versions of a collection to remove."""
        return Compaction(self.collection, 0, 0, [], None, None)

    def drop(self) -> None:
        """Delete the whole collection (``collections.delete``) or, with a tenant, only the tenant
        (``tenants.remove``: the other tenants' data stays). Raises StoreError."""
        client = self._connect()
        with self._failing("drop"):
            if client.collections.exists(self.class_name):
                if self.tenant is None:
                    client.collections.delete(self.class_name)
                else:
                    tenants = client.collections.use(self.class_name).tenants
                    if tenants.exists(self.tenant):
                        tenants.remove([self.tenant])
        self._handle = None
        self._names = None

    def search(self, vector: np.ndarray, k: int, filters: SearchFilter | None = None) -> list[SearchHit]:
        """The ``k`` objects nearest to ``vector`` (cosine) among those ``filters`` admits, best
        first; ``score`` is ``1 - distance``.

        ``query.near_vector(near_vector=..., limit=k, filters=_search_filter(filters),
        target_vector=VECTOR_NAME, return_metadata=MetadataQuery(distance=True))`` (weaviate-client
        v4 docs: "Vector similarity search"; Weaviate's cosine distance is ``1 - cos``).
        Raises StoreError.
        """
        handle = self._open()
        if handle is None or k <= 0:
            return []
        from weaviate.classes.query import MetadataQuery  # lazy: see _schema

        query = np.asarray(vector, dtype=np.float32)
        with self._failing("search"):
            answer = handle.query.near_vector(
                near_vector=query.tolist(), limit=k,
                filters=_search_filter(filters), target_vector=VECTOR_NAME,
                include_vector=[NAMES_VECTOR] if self._has_names(handle) else False,
                return_metadata=MetadataQuery(distance=True), return_properties=list(_HIT_PROPERTIES))
        return [_hit(obj, query) for obj in answer.objects if _admits(filters, obj)]

    def lexical_search(self, terms: str, k: int, filters: SearchFilter | None = None) -> list[SearchHit]:
        """The ``k`` objects whose ``terms`` best match ``terms`` (Weaviate's BM25) among those
        ``filters`` admits, best first; ``score`` is BM25's.

        ``query.bm25(query=terms, query_properties=["terms"], limit=k, filters=_search_filter(filters),
        return_metadata=MetadataQuery(score=True))`` (weaviate-client v4 docs: "Keyword (BM25)
        search"). Objects written before the ``terms`` property existed have none until they are
        written again (``codeindex sync --all`` of an unchanged repository does not rewrite them;
        drop and re-sync, or ``verify --repair`` after deleting them). Raises StoreError.
        """
        handle = self._open()
        if handle is None or k <= 0 or not terms.strip():
            return []
        from weaviate.classes.query import MetadataQuery  # lazy: see _schema

        with self._failing("lexical search"):
            answer = handle.query.bm25(
                query=terms, query_properties=[TERMS], limit=k, filters=_search_filter(filters),
                return_metadata=MetadataQuery(score=True), return_properties=list(_HIT_PROPERTIES))
        return [_lexical_hit(obj) for obj in answer.objects if _admits(filters, obj)]

    def count(self, repo: str | None = None) -> int:
        """Number of objects, in the collection (tenant) or in ``repo``:
        ``aggregate.over_all(total_count=True, filters=_repo_filter(repo))`` (weaviate-client v4
        docs: "Aggregate data"). A repository name differing from ``repo`` only in surrounding
        whitespace counts too (see _schema). Raises StoreError."""
        handle = self._open()
        if handle is None:
            return 0
        with self._failing("count"):
            answer = handle.aggregate.over_all(total_count=True, filters=_repo_filter(repo) if repo else None)
        return int(answer.total_count or 0)

    def export(self, with_vectors: bool = False) -> Iterator[dict]:
        """Yield every object as a dict of :data:`EXPORT_FIELDS` (and ``vector``), sorted by id.

        Read with the cursor iterator (weaviate-client v4 docs: "Read all objects") and sorted
        here, in memory, as the LanceDB store sorts its table: the order is then the one this
        protocol promises whatever order the server's shards answer in. Raises StoreError.
        """
        handle = self._open()
        if handle is None:
            return
        with self._failing("export"):
            rows = [_export_row(obj, with_vectors)
                    for obj in handle.iterator(include_vector=with_vectors, return_properties=list(EXPORT_FIELDS[1:]),
                                               cache_size=PAGE)]
        rows.sort(key=lambda row: row["id"])
        yield from rows
