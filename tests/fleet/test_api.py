"""The HTTP trigger on real processes: `codeindex api` (uvicorn on a loopback port), two workers,
beat, Redis and PostgreSQL. A repository added, synced and searched over HTTP gives what the CLI
gives; a signed GitHub push webhook built from a real pushed commit makes exactly one sync run;
unsigned, tampered and duplicate deliveries, missing or weak tokens, oversized and malformed
bodies enqueue nothing."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx
import pytest

from api.auth import hash_token
from api.webhooks import github_signature
from tests.conftest import free_port, git
from tests.fleet.conftest import make_repo, wait_for
from tests.history import differences, fresh_export, make_history

WRITE, READ = "ci_write_" + uuid.uuid4().hex, "ci_read_" + uuid.uuid4().hex
SECRET = "webhook secret " + uuid.uuid4().hex
MAX_BODY = 64 * 1024


@pytest.fixture
def api(fleet, tmp_path: Path):
    """Two workers, beat and `codeindex api` on a free loopback port; an httpx client on it."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# scope sha256 name\nwrite {hash_token(WRITE)} ci\nread {hash_token(READ)} dashboards\n")
    fleet.start_worker("a")
    fleet.start_worker("b")
    fleet.start_beat()
    port = free_port()
    fleet.beats.append(fleet._spawn(["api", "--port", str(port)], "api", {
        "CODEINDEX_API_TOKENS_FILE": str(tokens), "CODEINDEX_GITHUB_WEBHOOK_SECRET": SECRET,
        "CODEINDEX_GITLAB_WEBHOOK_TOKEN": SECRET,
        "CODEINDEX_API_MAX_BODY_BYTES": str(MAX_BODY)}))
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    def healthy() -> bool:
        try:
            return client.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    wait_for(healthy, 60, "the API to answer /healthz")
    yield client
    client.close()
    assert SECRET not in fleet.log("api"), "the webhook secret appeared in the API's log"
    assert WRITE not in fleet.log("api") and READ not in fleet.log("api"), "a token appeared in the API's log"


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def finished_run(client: httpx.Client, location: str, timeout: float = 120) -> dict:
    """Poll ``location`` until the run is no longer queued or running; its document."""
    def done():
        doc = client.get(location, headers=auth(READ)).json()
        return doc if doc["status"] not in ("queued", "running") else None
    return wait_for(done, timeout, f"run {location} to finish", every=0.3)


def runs_and_queued(fleet) -> tuple[int, int]:
    """How many runs the state holds, and how many messages wait in any queue of the broker."""
    redis = fleet.redis()
    queued = sum(redis.llen(k) for k in redis.scan_iter("*") if redis.type(k) == b"list")
    return len(fleet.state().list_runs(1000)), queued


def push_payload(history, before: str, after: str) -> bytes:
    """A push event as GitHub sends it (the fields codeindex reads, and some it does not)."""
    return json.dumps({
        "ref": f"refs/heads/{history.branch}", "before": before, "after": after, "created": False,
        "repository": {"name": "lib", "full_name": "org/lib", "clone_url": history.url,
                       "html_url": "https://github.invalid/org/lib"},
        "pusher": {"name": "dev"}, "head_commit": {"id": after, "message": "change"},
    }).encode()


def signed(body: bytes, delivery: str, secret: str = SECRET) -> dict:
    return {"X-GitHub-Event": "push", "X-GitHub-Delivery": delivery, "Content-Type": "application/json",
            "X-Hub-Signature-256": github_signature(secret.encode(), body)}


def test_add_sync_and_search_over_http_give_what_the_cli_gives_and_a_signed_push_makes_one_run(
        api: httpx.Client, fleet, tmp_path: Path):
    history = make_history(tmp_path, "lib", celery_files=12, kombu_files=8)
    added = api.post("/v1/repos", json={"url": history.url, "name": "lib"}, headers=auth(WRITE))
    assert added.status_code == 202, added.text
    assert added.headers["Location"] == f"/v1/runs/{added.json()['run_id']}"
    run = finished_run(api, added.headers["Location"])
    assert run["status"] == "succeeded" and run["counts"]["added"] > 0, run
    assert {f["action"] for f in run["files"]} == {"ADD"} and run["commit"] == history.commits[-1]

    repo = api.get("/v1/repos/lib", headers=auth(READ)).json()
    assert (repo["url"], repo["branch"], repo["last_commit"]) == (history.url, "main", history.commits[-1])
    assert repo["shard_id"] in ("a", "b") and repo["freshness_seconds"] is not None
    assert [r["repo_id"] for r in api.get("/v1/repos", headers=auth(READ)).json()] == ["lib"]

    # A commit pushed, then synced over HTTP: exactly what a fresh full index of that commit holds.
    (history.work / "added_over_http.py").write_text("def added_over_http():\n    return 'http'\n")
    head = history.commit("a change synced over HTTP")
    sync = api.post("/v1/repos/lib/sync", json={"detect": True}, headers=auth(WRITE))
    assert sync.status_code == 202, sync.text
    run = finished_run(api, sync.headers["Location"])
    assert run["status"] == "succeeded" and run["counts"]["added"] == 1 and run["commit"] == head, run
    assert [f["path"] for f in run["files"] if f["action"] == "ADD"] == ["added_over_http.py"]
    assert not differences(fleet.export("lib"), fresh_export(history.url, head, tmp_path, "lib"))

    # Search: the same hits as `codeindex search --json`.
    over_http = api.get("/v1/search", params={"q": "added over http", "k": 5}, headers=auth(READ)).json()
    by_cli = json.loads(fleet.cli("search", "added over http", "-k", "5", "--json").stdout)
    assert over_http == by_cli and over_http[0]["path"] == "added_over_http.py"

    # A signed push webhook of a real pushed commit: one run, which indexes the pushed commit.
    (history.work / "added_by_push.py").write_text("def added_by_push():\n    return 'push'\n")
    before, after = head, history.commit("a change a webhook announces")
    body = push_payload(history, before, after)
    delivery = str(uuid.uuid4())
    runs_before, _ = runs_and_queued(fleet)
    answer = api.post("/v1/webhooks/github", content=body, headers=signed(body, delivery))
    assert answer.status_code == 202, answer.text
    run = finished_run(api, f"/v1/runs/{answer.json()['run_id']}")
    assert run["status"] == "succeeded" and run["commit"] == after and run["trigger"] == "webhook:github", run
    assert api.get("/v1/repos/lib", headers=auth(READ)).json()["last_commit"] == after
    assert runs_and_queued(fleet) == (runs_before + 1, 0)

    # The same delivery again, and deliveries that are not GitHub's: nothing enqueued.
    again = api.post("/v1/webhooks/github", content=body, headers=signed(body, delivery))
    assert again.status_code == 200 and again.json()["duplicate"] is True
    tampered = body.replace(b"change", b"chaNge")
    for headers, content in [(signed(body, str(uuid.uuid4()), "wrong secret"), body),
                             ({k: v for k, v in signed(body, str(uuid.uuid4())).items()
                               if k != "X-Hub-Signature-256"}, body),
                             (signed(body, str(uuid.uuid4())), tampered)]:
        refused = api.post("/v1/webhooks/github", content=content, headers=headers)
        assert refused.status_code == 401, refused.text
    ping = api.post("/v1/webhooks/github", content=b"{}", headers={**signed(b"{}", str(uuid.uuid4())),
                                                                      "X-GitHub-Event": "ping"})
    assert ping.status_code == 200 and ping.json() == {"pong": True}
    other = push_payload(history, before, after).replace(b"refs/heads/main", b"refs/heads/feature")
    ignored = api.post("/v1/webhooks/github", content=other, headers=signed(other, str(uuid.uuid4())))
    assert ignored.status_code == 200 and "ignored" in ignored.json()
    time.sleep(1.0)  # anything wrongly enqueued would have reached the broker and the runs table by now
    assert runs_and_queued(fleet) == (runs_before + 1, 0)

    # Shards over HTTP, readiness.
    assert sorted(s["shard_id"] for s in api.get("/v1/shards", headers=auth(READ)).json()) == ["a", "b"]
    ready = api.get("/readyz", headers=auth(READ))
    assert ready.status_code == 200 and ready.json()["checks"] == {"redis": "ok", "postgresql": "ok",
                                                                   "vector_store": "ok"}
    metrics = api.get("/metrics", headers=auth(READ)).text
    assert 'codeindex_webhook_deliveries_total{outcome="enqueued",source="github"} 1.0' in metrics
    assert 'codeindex_webhook_deliveries_total{outcome="unauthorized",source="github"} 3.0' in metrics
    assert "codeindex_shard_load" in metrics


def test_tokens_scopes_and_bad_bodies_are_refused_and_enqueue_nothing(api: httpx.Client, fleet, tmp_path: Path):
    history = make_history(tmp_path, "lib", celery_files=4, kombu_files=2)
    added = api.post("/v1/repos", json={"url": history.url, "name": "lib"}, headers=auth(WRITE))
    assert finished_run(api, added.headers["Location"])["status"] == "succeeded"
    before = runs_and_queued(fleet)

    assert api.get("/healthz").status_code == 200  # the one route without a token
    for route in ("/v1/repos", "/readyz", "/metrics", "/v1/shards"):
        assert api.get(route).status_code == 401
    sync = "/v1/repos/lib/sync"
    none = api.post(sync, json={"all": True})
    assert none.status_code == 401 and none.headers["WWW-Authenticate"].startswith("Bearer")
    assert api.post(sync, json={"all": True}, headers=auth("ci_not_a_token")).status_code == 401
    assert api.post(sync, json={"all": True}, headers={"Authorization": WRITE}).status_code == 401  # no scheme
    weak = api.post(sync, json={"all": True}, headers=auth(READ))
    assert weak.status_code == 403 and "write" in weak.json()["detail"]
    assert api.post("/v1/shards/a/drain", headers=auth(READ)).status_code == 403

    big = api.post(sync, content=b'{"paths": ["' + b"a" * MAX_BODY + b'"]}', headers={
        **auth(WRITE), "Content-Type": "application/json"})
    assert big.status_code == 413
    for body in (b"{not json", b'{"all": "yes please"}', b'{"all": true, "detect": true}', b'{"paths": "a.py"}',
                 b'{"changes": {"repositories": [{"modified": ["a.py"]}]}}'):
        bad = api.post(sync, content=body, headers={**auth(WRITE), "Content-Type": "application/json"})
        assert bad.status_code == 422 and bad.json()["detail"], (body, bad.text)
    json_list = {"changes": {"repositories": [{"path": str(history.work), "modified": ["a.py"]}]}}
    refused = api.post(sync, json=json_list, headers=auth(WRITE))
    assert refused.status_code == 422 and "JSON change list" in refused.json()["detail"]
    assert api.post("/v1/repos/nope/sync", json={"all": True}, headers=auth(WRITE)).status_code == 404
    assert api.post("/v1/repos", json={"url": "https://user:pw@github.invalid/x.git"},
                    headers=auth(WRITE)).status_code == 422
    assert api.get("/v1/runs/no-such-run", headers=auth(READ)).status_code == 404
    gitlab = json.dumps({"ref": "refs/heads/feature", "checkout_sha": "0" * 40,
                         "project": {"git_http_url": history.url}}).encode()
    hook = {"X-Gitlab-Event": "Push Hook", "Idempotency-Key": str(uuid.uuid4())}
    assert api.post("/v1/webhooks/gitlab", content=gitlab, headers={**hook, "X-Gitlab-Token": "wrong"}).status_code == 401
    assert api.post("/v1/webhooks/gitlab", content=gitlab, headers=hook).status_code == 401
    other_branch = api.post("/v1/webhooks/gitlab", content=gitlab, headers={**hook, "X-Gitlab-Token": SECRET})
    assert other_branch.status_code == 200 and "ignored" in other_branch.json()
    time.sleep(1.0)
    assert runs_and_queued(fleet) == before

    # A listed path over HTTP reads as a line piped into `codeindex sync --stdin` does.
    (history.work / "listed.py").write_text("LISTED = 1\n")
    head = history.commit("listed")
    listed = api.post(sync, json={"paths": ["listed.py"]}, headers=auth(WRITE))
    run = finished_run(api, listed.headers["Location"])
    assert run["status"] == "succeeded" and [f["path"] for f in run["files"]] == ["listed.py"], run
    assert git(history.work, "rev-parse", "HEAD").strip() == head

    # A repository added by path takes the JSON change list, naming itself and nothing else.
    tree, other = make_repo(tmp_path, "tree", 4, 2), make_repo(tmp_path, "other", 2, 2)
    added = api.post("/v1/repos", json={"path": str(tree)}, headers=auth(WRITE))
    assert added.status_code == 202 and added.json()["repo_id"] == "tree", added.text
    assert finished_run(api, added.headers["Location"])["status"] == "succeeded"
    before = runs_and_queued(fleet)
    (other / "stranger.py").write_text("STRANGER = 1\n")
    foreign = {"changes": {"repositories": [{"path": str(other), "added": ["stranger.py"]}]}}
    refused = api.post("/v1/repos/tree/sync", json=foreign, headers=auth(WRITE))
    assert refused.status_code == 422 and "other than 'tree'" in refused.json()["detail"], refused.text
    time.sleep(1.0)
    assert runs_and_queued(fleet) == before
    (tree / "own.py").write_text("OWN = 1\n")
    own = {"changes": {"repositories": [{"path": str(tree), "added": ["own.py"]}]}}
    run = finished_run(api, api.post("/v1/repos/tree/sync", json=own, headers=auth(WRITE)).headers["Location"])
    assert run["status"] == "succeeded" and [f["path"] for f in run["files"]] == ["own.py"], run


def test_the_api_refuses_to_start_without_tokens_or_with_a_malformed_one(fleet, tmp_path: Path):
    refused = fleet.cli("api", "--port", str(free_port()), check=False, timeout=60)
    assert refused.returncode == 2 and refused.stderr.startswith("error: no API tokens"), refused.stderr
    pasted = "ci_" + uuid.uuid4().hex  # a token pasted where its hash belongs
    malformed = fleet.cli("api", "--port", str(free_port()), check=False, timeout=60,
                          extra_env={"CODEINDEX_API_TOKENS": f"write:{pasted}"})
    assert malformed.returncode == 2 and "not a hex SHA-256" in malformed.stderr
    assert pasted not in malformed.stderr + malformed.stdout
