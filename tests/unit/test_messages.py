"""The chord's messages without their default fields (indexing/messages.py: as_message)."""

from __future__ import annotations

from indexing.messages import (
    Action, BatchJob, CommitJob, ContentStrategy, FileContent, FileResult, PlannedFile, as_message,
)

CONTEXT = dict(run_id="r1", repo_id="repo", root="/src/repo", collection="code", fence=7, commit="a" * 40)
ADDED = PlannedFile(path="src/a.py", action=Action.ADD, size=120)
UPDATED = PlannedFile(path="src/b.py", action=Action.UPDATE, size=80, sha256="b" * 64, old_chunks=3)


def test_a_message_leaves_out_the_fields_at_their_defaults():
    assert as_message(ADDED) == {"path": "src/a.py", "action": "ADD", "size": 120}
    result = FileResult(path="src/a.py", ok=True, sha256="c" * 64, size=120, chunk_count=2, embedded=2)
    assert as_message(result) == {"path": "src/a.py", "ok": True, "sha256": "c" * 64, "size": 120,
                                  "chunk_count": 2, "embedded": 2}
    # the context is required: always there (Flower, the dead-letter records and the breakers read it)
    job = as_message(BatchJob(**CONTEXT, files=[ADDED]))
    assert {k: job[k] for k in CONTEXT} == CONTEXT and "schema_version" not in job and "contents" not in job


def test_every_message_reads_back_as_it_was_sent():
    content = FileContent(strategy=ContentStrategy.INLINE, checksum="d" * 64, size=5, content="hello",
                          content_encoding="utf-8")
    sent = [
        BatchJob(**CONTEXT, files=[ADDED, UPDATED]),
        BatchJob(**CONTEXT, files=[ADDED], schema_version=2, contents={"src/a.py": content}),
        CommitJob(**CONTEXT, advance_commit=True, trigger="cli", started_at="2026-12-07T00:00:00+00:00",
                  files=[ADDED, UPDATED, PlannedFile(path="gone.py", action=Action.DELETE, old_chunks=2)]),
        FileResult(path="x.bin", ok=False, reason="binary", skipped=True),
    ]
    for model in sent:
        assert type(model).model_validate(as_message(model)) == model
