"""The state store contract, run against both implementations: SQLite (a file under tmp_path)
and PostgreSQL (the real server); then what only PostgreSQL has: processes, forks, reconnects,
connection errors that must not leak the password."""

from __future__ import annotations

import multiprocessing
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from dataclasses import asdict, replace
from pathlib import Path

import psycopg
import pytest

from indexing.errors import StaleFenceError, StoreError
from indexing.pg_state import PostgresStateStore
from indexing.state import CollectionMeta, FailureRecord, FileState, RepoRecord, RepoStats, RunRecord, SQLiteStateStore
from tests.conftest import free_port

TS = "2026-01-02T03:04:05.678+00:00"


def state(path: str, fence: int, sha: str = "a", size: int = 10, chunks: int = 2) -> FileState:
    return FileState(path=path, sha256=sha * 64, size=size, chunk_count=chunks, encoding="utf-8",
                     language="python", fence=fence, indexed_at=TS)


@pytest.fixture(params=["sqlite", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path):
    """A factory of stores over one database: ``make_store(readonly=False)``; ``.kind`` says which."""
    opened: list[PostgresStateStore] = []
    if request.param == "postgres":
        dsn = request.getfixturevalue("postgres_dsn")

        def make(readonly: bool = False):
            store = PostgresStateStore(dsn, readonly=readonly)
            opened.append(store)
            return store
    else:
        def make(readonly: bool = False):
            return SQLiteStateStore(tmp_path / "state" / "state.sqlite", readonly=readonly)
    make.kind = request.param
    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store):
    return make_store()


def test_collection_meta_first_writer_wins(store):
    assert store.collection_meta("code") is None
    first = CollectionMeta("code", "model-a", 384, "cosine")
    store.set_collection_meta(first)
    store.set_collection_meta(CollectionMeta("code", "model-b", 768, "dot"))
    assert store.collection_meta("code") == first


def test_grant_fence_counts_and_registers(store):
    assert store.get_repo("r") is None
    assert [store.grant_fence("r", "/src/r", "code") for _ in range(3)] == [1, 2, 3]
    store.grant_fence("r", "/moved/r", "other")
    assert store.get_repo("r") == RepoRecord("r", "/moved/r", "code", None, 4, 0)


def test_concurrent_grant_fence_from_threads_gives_distinct_consecutive_tokens(store):
    barrier = threading.Barrier(4)
    tokens: list[int] = []
    lock = threading.Lock()

    def grant() -> None:
        barrier.wait()
        mine = [store.grant_fence("r", "/src/r", "code") for _ in range(10)]
        with lock:
            tokens.extend(mine)

    threads = [threading.Thread(target=grant) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(tokens) == list(range(1, 41))
    assert store.get_repo("r").fence == 40


def test_commit_files_upserts_deletes_and_last_commit(store):
    fence = store.grant_fence("r", "/src/r", "code")
    store.commit_files("r", fence, [state("b.py", fence), state("a.py", fence), state("c.py", fence)], [], "c1")
    assert store.indexed_paths("r") == ["a.py", "b.py", "c.py"]
    fence = store.grant_fence("r", "/src/r", "code")
    store.commit_files("r", fence, [state("a.py", fence, sha="b", size=99, chunks=7)], ["c.py", "gone.py"], None)
    assert store.indexed_paths("r") == ["a.py", "b.py"]
    got = store.file_states("r", ["a.py", "b.py", "c.py", "a.py", "nope.py"])
    assert got == {"a.py": state("a.py", 2, sha="b", size=99, chunks=7), "b.py": state("b.py", 1)}
    assert store.file_states("r", []) == {}
    assert store.file_states("other", ["a.py"]) == {}
    repo = store.get_repo("r")
    assert (repo.last_commit, repo.fence, repo.committed_fence) == ("c1", 2, 2)  # None keeps the commit
    store.commit_files("r", fence, [], [], "c2")  # the same fence again: a retried commit
    assert store.get_repo("r").last_commit == "c2"


def test_commit_files_keeps_the_last_state_of_a_path_given_twice(store):
    fence = store.grant_fence("r", "/src/r", "code")
    store.commit_files("r", fence, [state("a.py", fence, sha="1"), state("a.py", fence, sha="2")], [], None)
    assert store.file_states("r", ["a.py"])["a.py"].sha256 == "2" * 64


def test_stale_fence_is_refused_and_changes_nothing(store):
    old = store.grant_fence("r", "/src/r", "code")
    new = store.grant_fence("r", "/src/r", "code")
    store.commit_files("r", new, [state("a.py", new)], [], "new-commit")
    before = (store.get_repo("r"), store.indexed_paths("r"), store.file_states("r", ["a.py", "b.py"]))
    with pytest.raises(StaleFenceError, match="stale"):
        store.commit_files("r", old, [state("a.py", old, sha="x"), state("b.py", old)], ["a.py"], "old-commit")
    assert (store.get_repo("r"), store.indexed_paths("r"), store.file_states("r", ["a.py", "b.py"])) == before


def test_commit_for_an_unregistered_repository_is_a_store_error(store):
    with pytest.raises(StoreError, match="not registered"):
        store.commit_files("never", 1, [state("a.py", 1)], [], None)


def test_commit_of_ten_thousand_states_is_fast(store, capsys):
    fence = store.grant_fence("big", "/src/big", "code")
    states = [state(f"pkg/mod_{i:05d}.py", fence, size=i) for i in range(10_000)]
    started = time.perf_counter()
    store.commit_files("big", fence, states, [], "c1")
    elapsed = time.perf_counter() - started
    with capsys.disabled():
        print(f"\n  commit_files of 10,000 states: {elapsed:.2f}s")
    assert elapsed < 5
    assert len(store.file_states("big", [s.path for s in states])) == 10_000


def test_runs_start_idempotent_advance_finish(store):
    run = RunRecord(id="run-1", repo_id="r", trigger="cli", files_total=5, started_at=TS)
    store.start_run(run)
    store.advance_run("run-1", 2)
    store.start_run(replace(run, trigger="redelivered"))  # a redelivered plan message restarts it
    store.advance_run("run-1", 3)
    store.advance_run("run-1", 1)
    assert store.get_run("run-1") == replace(run, trigger="redelivered", files_done=4)
    done = replace(run, status="succeeded", added=3, updated=1, deleted=1, unchanged=7, skipped=2, errors=0,
                   bytes=5_000_000_000, files_done=5, finished_at=TS, message="ok", shard_id="shard-1")
    store.finish_run(done)
    assert store.get_run("run-1") == done
    assert store.get_run("nope") is None
    assert [r.id for r in store.list_runs()] == ["run-1"]


def test_list_runs_newest_first_ties_in_insertion_order(store):
    for run_id, started in [("a", "2026-01-01T00:00:00.000+00:00"), ("b", "2026-01-03T00:00:00.000+00:00"),
                            ("c", "2026-01-02T00:00:00.000+00:00"), ("d", "2026-01-03T00:00:00.000+00:00")]:
        store.start_run(RunRecord(id=run_id, repo_id="r", trigger="cli", started_at=started))
    assert [r.id for r in store.list_runs()] == ["d", "b", "c", "a"]
    assert [r.id for r in store.list_runs(limit=2)] == ["d", "b"]
    fresh = RunRecord(id="now", repo_id="r", trigger="cli")
    store.start_run(fresh)
    assert store.list_runs(1)[0].started_at == fresh.started_at  # the same ISO text comes back


def test_failures_record_list_get_replay(store):
    store.record_failure("run-1", "codeindex.sync.plan", {"repo_id": "r", "b": 2, "a": Path("/x")}, "boom")
    store.record_failure(None, "codeindex.embed.batch", {}, "bang")
    newest, oldest = store.failures()
    assert isinstance(newest, FailureRecord)
    assert (newest.task, newest.run_id, newest.error, newest.replayed_at) == ("codeindex.embed.batch", None, "bang", None)
    assert oldest.arguments == '{"a": "/x", "b": 2, "repo_id": "r"}'
    assert isinstance(oldest.id, int) and oldest.id < newest.id
    assert len(oldest.created_at) == len(TS) and oldest.created_at.endswith("+00:00")
    assert store.failures(limit=1) == [newest]
    assert store.get_failure(oldest.id) == oldest
    assert store.get_failure(10_000) is None
    store.mark_failure_replayed(oldest.id)
    replayed = store.get_failure(oldest.id)
    assert replayed.replayed_at is not None and replayed.replayed_at >= replayed.created_at
    assert replace(replayed, replayed_at=None) == oldest


def test_run_retention_keeps_running_and_newer_runs(store):
    store.start_run(RunRecord(id="old-done", repo_id="r", trigger="cli", status="succeeded",
                              started_at="2026-01-01T00:00:00.000+00:00"))
    store.start_run(RunRecord(id="old-failed", repo_id="r", trigger="cli", status="failed",
                              started_at="2026-01-01T01:00:00.000+00:00"))
    store.start_run(RunRecord(id="old-running", repo_id="r", trigger="cli",
                              started_at="2026-01-01T00:00:00.000+00:00"))
    store.start_run(RunRecord(id="new-done", repo_id="r", trigger="cli", status="succeeded",
                              started_at="2026-02-01T00:00:00.000+00:00"))
    cutoff = "2026-01-15T00:00:00.000+00:00"
    assert store.expired_runs(cutoff, limit=1) == ["old-done"]
    assert store.expired_runs(cutoff, limit=10) == ["old-done", "old-failed"]
    assert store.delete_runs(["old-done", "old-failed", "old-running"]) == 2  # a running run is never deleted
    assert sorted(r.id for r in store.list_runs()) == ["new-done", "old-running"]
    assert store.expired_runs(cutoff, limit=10) == [] and store.delete_runs([]) == 0


def test_failure_retention_keeps_records_not_replayed(store):
    for task in ("a", "b"):
        store.record_failure(None, task, {"args": [], "kwargs": {}}, "boom")
    replayed, pending = sorted(store.failures(), key=lambda f: f.task)
    store.mark_failure_replayed(replayed.id)
    assert store.expired_failures("9999-01-01T00:00:00.000+00:00", limit=10) == [replayed.id]
    assert store.expired_failures("2000-01-01T00:00:00.000+00:00", limit=10) == []
    assert store.delete_failures([replayed.id, pending.id]) == 1
    assert [f.id for f in store.failures()] == [pending.id]


def test_repo_stats(store):
    fence = store.grant_fence("b-repo", "/src/b", "code")
    store.commit_files("b-repo", fence, [state("x.py", fence, size=10, chunks=2),
                                         state("y.py", fence, size=5_000_000_000, chunks=3)], [], "c9")
    store.grant_fence("a-repo", "/src/a", "code")
    stats = store.repo_stats()
    indexed_at = stats[1].indexed_at
    assert indexed_at is not None and datetime.fromisoformat(indexed_at) > datetime.now(UTC) - timedelta(minutes=1)
    assert stats == [
        RepoStats(repo_id="a-repo", root="/src/a", collection="code", last_commit=None, files=0, chunks=0, bytes=0),
        RepoStats(repo_id="b-repo", root="/src/b", collection="code", last_commit="c9", files=2, chunks=5,
                  bytes=5_000_000_010, indexed_at=indexed_at),
    ]
    assert all(type(getattr(row, k)) is int for row in store.repo_stats() for k in ("files", "chunks", "bytes"))


def test_a_repository_added_by_url_keeps_its_source_through_syncs(store):
    store.set_source("flask", "code", "https://example.com/pallets/flask.git", "main")
    record = store.get_repo("flask")
    assert (record.url, record.branch, record.root, record.fence, record.last_commit) == \
        ("https://example.com/pallets/flask.git", "main", "", 0, None)
    fence = store.grant_fence("flask", "", "code")
    assert fence == 1
    store.commit_files("flask", fence, [state("app.py", fence)], [], "c1")
    store.set_source("flask", "code", "https://example.com/pallets/flask.git", "stable")  # a new branch
    record = store.get_repo("flask")
    assert (record.url, record.branch, record.last_commit, record.committed_fence) == \
        ("https://example.com/pallets/flask.git", "stable", "c1", 1)
    [row] = store.repo_stats()
    assert (row.url, row.branch, row.files) == ("https://example.com/pallets/flask.git", "stable", 1)


def pg_tables(dsn: str) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]


def test_readonly_store_on_an_empty_database_reads_empty_and_never_writes(make_store, tmp_path, request):
    ro = make_store(readonly=True)
    assert ro.get_repo("r") is None and ro.indexed_paths("r") == [] and ro.list_runs() == []
    assert ro.file_states("r", ["a.py"]) == {} and ro.failures() == [] and ro.repo_stats() == []
    assert ro.collection_meta("code") is None
    for write in (lambda: ro.grant_fence("r", "/src/r", "code"),
                  lambda: ro.set_collection_meta(CollectionMeta("code", "m", 3, "cosine")),
                  lambda: ro.start_run(RunRecord(id="x", repo_id="r", trigger="cli")),
                  lambda: ro.record_failure(None, "t", {}, "e")):
        with pytest.raises(StoreError, match="read-only"):
            write()
    if make_store.kind == "sqlite":
        assert not (tmp_path / "state").exists()
    else:
        assert pg_tables(request.getfixturevalue("postgres_dsn")) == []


def test_readonly_store_reads_what_a_writer_wrote(make_store):
    writer = make_store()
    fence = writer.grant_fence("r", "/src/r", "code")
    writer.commit_files("r", fence, [state("a.py", fence)], [], "c1")
    ro = make_store(readonly=True)
    assert ro.indexed_paths("r") == ["a.py"] and ro.get_repo("r").last_commit == "c1"
    with pytest.raises(StoreError, match="read-only"):
        ro.commit_files("r", fence, [], ["a.py"], None)
    assert writer.indexed_paths("r") == ["a.py"]


# PostgreSQL only ---------------------------------------------------------------------------------


def backend_pid(store: PostgresStateStore) -> int:
    """The server process behind the connection the store's pool lends next."""
    return store.db.run(lambda conn: conn.info.backend_pid, transaction=False)


def _grant_many(store: PostgresStateStore, count: int, start: multiprocessing.Event, out) -> None:
    start.wait(10)
    out.put([store.grant_fence("r", "/src/r", "code") for _ in range(count)])


def test_postgres_forked_processes_get_distinct_tokens_and_never_share_the_parents_socket(postgres_dsn):
    store = PostgresStateStore(postgres_dsn)
    parent_backends = {backend_pid(store) for _ in range(4)}
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    children = [ctx.Process(target=_grant_many, args=(store, 25, start, out)) for _ in range(2)]
    for child in children:
        child.start()
    start.set()
    tokens = out.get(timeout=30) + out.get(timeout=30)
    for child in children:
        child.join(timeout=30)
        assert child.exitcode == 0
    assert sorted(tokens) == list(range(1, 51))
    # The parent's sessions survived its children: the same backends, no reconnect needed.
    assert {backend_pid(store) for _ in range(4)} <= parent_backends
    assert store.grant_fence("r", "/src/r", "code") == 51
    store.close()


def _terminate_all(dsn: str) -> int:
    """End every codeindex session on the test database (what a server restart does to them)."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        ended = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'codeindex' AND datname = current_database()").fetchone()[0]
    time.sleep(0.1)
    return ended


def test_postgres_reconnects_once_after_the_connection_broke(postgres_dsn, caplog):
    store = PostgresStateStore(postgres_dsn)
    fence = store.grant_fence("r", "/src/r", "code")
    before = {backend_pid(store) for _ in range(3)}
    # The pool tests a connection before lending it: a broken one is replaced, not used.
    assert _terminate_all(postgres_dsn) >= 1
    assert store.get_repo("r").fence == fence
    assert not {backend_pid(store) for _ in range(3)} & before
    # A connection that breaks while its work runs: the work runs once more on a fresh one.
    with caplog.at_level("WARNING", logger="codeindex.postgres"):
        assert store.db.run(_breaks_once(postgres_dsn, "SELECT 1"), transaction=False) == 2
        assert "connection lost, reconnecting" in caplog.text
        caplog.clear()
        # A transaction broken before its COMMIT was sent: nothing was committed, so it runs again.
        assert store.db.write(_breaks_once(postgres_dsn, "UPDATE repos SET updated_at = 'x' WHERE repo_id = 'r'")) == 2
        assert "connection lost, reconnecting" in caplog.text
    store.commit_files("r", fence, [state("a.py", fence)], [], "c1")
    assert store.indexed_paths("r") == ["a.py"]
    store.close()


def _breaks_once(dsn: str, statement: str):
    """Work that runs ``statement``, its first session ended under it; returns how many runs it took."""
    runs: list[int] = []

    def work(conn) -> int:
        runs.append(conn.info.backend_pid)
        if len(runs) == 1:
            with psycopg.connect(dsn, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", [conn.info.backend_pid])
            time.sleep(0.1)
        conn.execute(statement)
        return len(runs)

    return work


def test_postgres_readonly_connection_refuses_writes_in_the_server(postgres_dsn):
    PostgresStateStore(postgres_dsn).close()
    ro = PostgresStateStore(postgres_dsn, readonly=True)
    with pytest.raises(StoreError, match="read-only transaction") as refused:
        ro.db.run(lambda conn: conn.execute("DELETE FROM repos"), transaction=False)
    assert isinstance(refused.value.__cause__, psycopg.errors.ReadOnlySqlTransaction)
    ro.close()


def test_postgres_server_not_listening_is_a_quick_store_error_without_the_password():
    dsn = f"postgresql://codeindex:s3cr3t-pw@127.0.0.1:{free_port()}/state"
    started = time.monotonic()
    with pytest.raises(StoreError, match="cannot reach the state store") as caught:
        PostgresStateStore(dsn, connect_timeout=2)
    assert time.monotonic() - started < 3
    assert "s3cr3t-pw" not in str(caught.value) and "127.0.0.1" in str(caught.value)


def test_postgres_silent_server_times_out_at_connect_timeout():
    with socket.socket() as silent:  # accepts TCP connections, never answers the startup packet
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        dsn = f"host=127.0.0.1 port={silent.getsockname()[1]} dbname=state user=u password=s3cr3t-pw"
        started = time.monotonic()
        with pytest.raises(StoreError) as caught:
            PostgresStateStore(dsn, connect_timeout=1)
        assert time.monotonic() - started < 5
    assert "s3cr3t-pw" not in str(caught.value)


@pytest.mark.parametrize("dsn", ["postgresql://u:s3cr3t-pw@127.0.0.1:notaport/db",
                                 "host=127.0.0.1 password=s3cr3t-pw bogus_option=1",
                                 "not a dsn password=s3cr3t-pw"])
def test_postgres_malformed_dsn_is_a_store_error_without_the_password(dsn):
    with pytest.raises(StoreError) as caught:
        PostgresStateStore(dsn)
    assert "s3cr3t-pw" not in str(caught.value)
    assert caught.value.__cause__ is None


def test_postgres_store_outputs_match_sqlite_shapes(postgres_dsn, tmp_path):
    stores = [SQLiteStateStore(tmp_path / "s.sqlite"), PostgresStateStore(postgres_dsn)]
    views = []
    for s in stores:
        fence = s.grant_fence("r", "/src/r", "code")
        s.commit_files("r", fence, [state("a.py", fence)], [], "c1")
        s.start_run(RunRecord(id="run", repo_id="r", trigger="cli", started_at=TS))
        s.record_failure("run", "task", {"k": 1}, "err")
        failure = s.failures()[0]
        stats = [replace(r, indexed_at=type(r.indexed_at)) for r in s.repo_stats()]  # times differ, types may not
        views.append((asdict(s.get_run("run")), stats, s.file_states("r", ["a.py"]), s.get_repo("r"),
                      {k: type(v) for k, v in asdict(failure).items()}, replace(failure, created_at="")))
    assert views[0] == views[1]
    stores[1].close()


def test_sqlite_write_errors_are_store_errors(tmp_path) -> None:
    """A failing statement inside a SQLite write transaction surfaces as StoreError, not sqlite3.Error."""
    import sqlite3

    from indexing.errors import StoreError
    from indexing.state import RunRecord, SQLiteStateStore

    store = SQLiteStateStore(tmp_path / "state.sqlite")
    with pytest.raises(StoreError, match="state database"):
        with store._tx() as conn:
            conn.execute("INSERT INTO no_such_table VALUES (1)")
    # A second connection holding the write lock: BEGIN IMMEDIATE times out as StoreError.
    other = sqlite3.connect(tmp_path / "state.sqlite", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        slow = SQLiteStateStore(tmp_path / "state.sqlite", timeout=0.2)
        with pytest.raises(StoreError, match="locked"):
            slow.start_run(RunRecord(id="r", repo_id="x", trigger="t"))
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_sqlite_reader_opened_before_the_file_exists_sees_it_once_written(tmp_path) -> None:
    """What the CLI's progress bar does on a first sync: it opens the state read-only while the
    sync it follows has not created the file yet."""
    reader = SQLiteStateStore(tmp_path / "state.sqlite", readonly=True)
    assert reader.get_run("r") is None and not (tmp_path / "state.sqlite").exists()
    SQLiteStateStore(tmp_path / "state.sqlite").start_run(RunRecord(id="r", repo_id="x", trigger="t"))
    assert reader.get_run("r").status == "running"


def test_sqlite_error_inside_a_transaction_sqlite_already_rolled_back_is_reported(tmp_path) -> None:
    """After SQLITE_FULL or an I/O error SQLite rolls the transaction back itself; the error that
    caused it is what the user must see, not the failing ROLLBACK after it."""
    import sqlite3

    from indexing.errors import StoreError

    store = SQLiteStateStore(tmp_path / "state.sqlite")
    with pytest.raises(StoreError, match="database or disk is full"):
        with store._tx() as conn:
            conn.execute("ROLLBACK")  # what SQLite does by itself on SQLITE_FULL
            raise sqlite3.OperationalError("database or disk is full")
    store.start_run(RunRecord(id="after", repo_id="x", trigger="t"))  # the connection still works
    assert store.get_run("after") is not None
