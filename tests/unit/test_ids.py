"""Deterministic object ids (indexing/ids.py)."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from indexing.ids import object_id, sha256_hex


def test_object_id_matches_the_documented_rule():
    expected = uuid.uuid5(uuid.NAMESPACE_URL, "code:myrepo:src/a.py#3")
    assert object_id("code", "myrepo", "src/a.py", 3) == str(expected)
    # a canonical UUID string, version 5
    parsed = uuid.UUID(object_id("code", "myrepo", "src/a.py", 3))
    assert parsed.version == 5
    assert str(parsed) == object_id("code", "myrepo", "src/a.py", 3)


def test_object_id_known_value():
    # Pinned: the same chunk must get the same id on every machine and every release.
    assert object_id("c", "r", "p.py", 0) == "d3a78fb1-2e77-5c35-9e5d-8c1e5fe988ae"


def test_object_id_is_deterministic():
    assert object_id("code", "repo", "a/b.py", 7) == object_id("code", "repo", "a/b.py", 7)


@pytest.mark.parametrize(
    "other",
    [
        ("code2", "repo", "a/b.py", 7),
        ("code", "repo2", "a/b.py", 7),
        ("code", "repo", "a/c.py", 7),
        ("code", "repo", "a/b.py", 8),
        ("code", "repo", "b.py", 7),
    ],
)
def test_object_id_differs_by_each_component(other):
    assert object_id(*other) != object_id("code", "repo", "a/b.py", 7)


ids_part = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
path_segment = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="/\\"), min_size=1, max_size=8
).filter(lambda s: s not in (".", ".."))
rel_paths = st.lists(path_segment, min_size=1, max_size=4).map("/".join)


@settings(max_examples=100, deadline=None, database=None)
@given(ids_part, ids_part, rel_paths, st.integers(0, 10**6))
def test_property_object_id_rule(collection, repo, path, index):
    assert object_id(collection, repo, path, index) == str(
        uuid.uuid5(uuid.NAMESPACE_URL, f"{collection}:{repo}:{path}#{index}")
    )


@pytest.mark.parametrize(
    "path",
    ["src\\a.py", "/abs/a.py", "/a.py", "../a.py", "a/../b.py", "a/..", "..", ""],
)
def test_object_id_rejects_non_relative_posix_paths(path):
    with pytest.raises(ValueError, match="relative POSIX"):
        object_id("code", "repo", path, 0)


def test_object_id_accepts_dotted_names_that_are_not_parent_segments():
    # "..b.py" and "a..b" are ordinary names, not parent references.
    assert object_id("c", "r", "..b.py", 0) == str(uuid.uuid5(uuid.NAMESPACE_URL, "c:r:..b.py#0"))
    assert object_id("c", "r", "a..b/c.py", 1) == str(uuid.uuid5(uuid.NAMESPACE_URL, "c:r:a..b/c.py#1"))


@pytest.mark.parametrize("index", [-1, -100])
def test_object_id_rejects_negative_index(index):
    with pytest.raises(ValueError, match="chunk_index"):
        object_id("code", "repo", "a.py", index)


def test_sha256_hex():
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert sha256_hex(b"abc") == hashlib.sha256(b"abc").hexdigest()
    assert len(sha256_hex(b"x" * 1000)) == 64


def test_an_object_id_interns_no_part_of_its_path(monkeypatch):
    # Ids are minted once for each chunk of a sync (315,000 in a 10,000-path one): pathlib's
    # parsing interned every part of the path each time, and the interpreter's table of
    # interned strings never shrinks (docs/performance.md, D).
    import sys

    interned: list[str] = []
    real = sys.intern
    monkeypatch.setattr(sys, "intern", lambda s: interned.append(s) or real(s))
    object_id("code", "repo", "src/pkg/module.py", 3)
    assert interned == []


@pytest.mark.parametrize("path", ["..", "../a.py", "a/../b.py", "a/..", "./../a.py", "a//../b.py"])
def test_object_id_refuses_a_parent_segment_anywhere(path):
    with pytest.raises(ValueError, match="relative POSIX"):
        object_id("code", "repo", path, 0)
