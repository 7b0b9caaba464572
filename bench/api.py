#!/usr/bin/env python
"""Load on the HTTP trigger's push webhook, bounded and on loopback only (issue 12, item 4).

    .venv/bin/python bench/api.py [--deliveries 500] [--clients 20] [--seconds 60] [--json PATH]

A private Redis, a fresh PostgreSQL database, one registered shard (``bench``: no worker
consumes its queue, so every enqueued sync stays there to be counted) and one repository added
by URL; then ``codeindex api`` on a free loopback port. ``--deliveries`` GitHub push deliveries
are sent by ``--clients`` concurrent clients, spread evenly over ``--seconds``: 60 % valid and
new, 20 % duplicates of a valid one (half of them sent at the same moment as their original,
from another client), 20 % invalid (a wrong secret, no signature, a body altered after
signing). Then every message in the shard's queue is decoded: each valid delivery must have
been enqueued exactly once (its run id in the queue once), no invalid or duplicate one at all,
nothing lost. Prints latency percentiles per kind (target: p99 under 50 ms per delivery).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from fleet import Redis, base_env, create_database, drop_all_databases, free_port, kill_all, spawn  # noqa: E402

from api.auth import hash_token  # noqa: E402
from api.webhooks import github_signature  # noqa: E402

CLI = str(Path(sys.executable).with_name("codeindex"))
SECRET = "bench secret " + uuid.uuid4().hex
READ = "bench-read-" + uuid.uuid4().hex


def payload(url: str, n: int) -> bytes:
    after = f"{n:040x}"
    return json.dumps({"ref": "refs/heads/main", "before": "0" * 40, "after": after,
                       "repository": {"name": "lib", "clone_url": url}, "head_commit": {"id": after}}).encode()


def plan(n: int, url: str) -> list[dict]:
    """The deliveries in sending order: kind, delivery id, body, headers, and the slot (its
    send time in units of the gap) which, for half the duplicates, is their original's."""
    out, valid = [], []
    for i in range(n):
        slot = i
        kind = ("valid", "valid", "valid", "duplicate", "invalid")[i % 5]
        if kind == "duplicate" and not valid:
            kind = "valid"
        if kind == "valid":
            body, delivery = payload(url, i), str(uuid.uuid4())
            headers = {"X-Hub-Signature-256": github_signature(SECRET.encode(), body)}
            valid.append((delivery, body, headers, i))
        elif kind == "duplicate":
            delivery, body, headers, slot = valid[-1] if i % 10 == 3 else valid[len(valid) // 2]
        else:
            body, delivery = payload(url, i), str(uuid.uuid4())
            headers = [{"X-Hub-Signature-256": github_signature(b"wrong", body)}, {},
                       {"X-Hub-Signature-256": github_signature(SECRET.encode(), body)}][i % 3]
            body = body.replace(b"main", b"mainx") if i % 3 == 2 else body
        out.append({"kind": kind, "delivery": delivery, "body": body, "slot": slot,
                    "headers": {**headers, "X-GitHub-Event": "push", "X-GitHub-Delivery": delivery,
                                "Content-Type": "application/json"}})
    return out


def queued_runs(client, queue: str) -> list[str]:
    """The run ids of the plan messages waiting in ``queue`` (kombu's Redis list, JSON envelopes)."""
    runs = []
    for raw in client.lrange(queue, 0, -1):
        envelope = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        runs.append(args[0]["run_id"])
    return runs


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"n": len(values), "p50_ms": round(statistics.median(ordered) * 1000, 1),
            "p95_ms": round(pick(0.95) * 1000, 1), "p99_ms": round(pick(0.99) * 1000, 1),
            "max_ms": round(ordered[-1] * 1000, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deliveries", type=int, default=500)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="codeindex-api-bench-"))
    try:
        run(args, work)
    finally:
        kill_all()
        drop_all_databases()


def run(args, work: Path) -> None:
    from indexing.pg_state import PostgresStateStore
    from workers.registry import ShardRegistry

    redis = Redis(work / "redis")
    dsn = create_database()
    registry = ShardRegistry(dsn)
    registry.register("bench", "bench", "127.0.0.1", 100)
    url = (work / "lib.git").as_uri()
    state = PostgresStateStore(dsn)
    state.set_source("lib", "codeindex", url, "main")
    registry.close()
    state.close()
    port = free_port()
    env = {**base_env(), "CODEINDEX_BROKER_URL": redis.url, "CODEINDEX_RESULT_BACKEND": redis.url,
           "CODEINDEX_STATE_URL": dsn, "CODEINDEX_HOME": str(work / "home"), "CODEINDEX_EMBEDDER": "hashing",
           "CODEINDEX_API_TOKENS": f"read:{hash_token(READ)}", "CODEINDEX_GITHUB_WEBHOOK_SECRET": SECRET}
    api = spawn([CLI, "api", "--port", str(port), "--loglevel", "WARNING"], env, work / "api.log")
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or api.poll() is not None:
            sys.exit(f"the API did not start: {(work / 'api.log').read_text()[-2000:]}")
        time.sleep(0.1)

    deliveries = plan(args.deliveries, url)
    gap = args.seconds / max(1, len(deliveries))
    latencies: dict[str, list[float]] = {"valid": [], "duplicate": [], "invalid": []}
    answers: list[tuple[dict, int, dict]] = []
    lock = threading.Lock()
    clients = [httpx.Client(base_url=base, timeout=10) for _ in range(args.clients)]
    started = time.monotonic()

    def send(index: int) -> None:
        item = deliveries[index]
        time.sleep(max(0.0, started + item["slot"] * gap - time.monotonic()))
        client = clients[index % len(clients)]
        t0 = time.perf_counter()
        response = client.post("/v1/webhooks/github", content=item["body"], headers=item["headers"])
        elapsed = time.perf_counter() - t0
        with lock:
            latencies[item["kind"]].append(elapsed)
            answers.append((item, response.status_code, response.json()))

    with ThreadPoolExecutor(max_workers=args.clients) as pool:
        list(pool.map(send, range(len(deliveries))))
    wall = time.monotonic() - started
    for client in clients:
        client.close()

    queued = queued_runs(redis.client, "shard.bench")
    accepted = [doc["run_id"] for item, status, doc in answers if status == 202]
    valid_ids = {item["delivery"] for item in deliveries if item["kind"] == "valid"}
    wrongly = [(item["kind"], status) for item, status, _ in answers
               if (item["kind"] == "invalid" and status != 401)]
    checks = {
        "valid deliveries": len(valid_ids),
        "accepted (202)": len(accepted),
        "messages in the shard queue": len(queued),
        "each valid delivery enqueued exactly once": len(accepted) == len(valid_ids) == len(set(queued)) == len(queued)
        and set(accepted) == set(queued),
        "invalid deliveries refused (401)": not wrongly,
        "duplicates answered as duplicates": sum(1 for item, status, doc in answers
                                                 if item["kind"] == "duplicate" and doc.get("duplicate"))
        + sum(1 for item, status, doc in answers if item["kind"] == "valid" and doc.get("duplicate")),
    }
    report = {"deliveries": len(deliveries), "clients": args.clients, "seconds": round(wall, 1),
              "latency": {kind: percentiles(v) for kind, v in latencies.items()},
              "all": percentiles([x for v in latencies.values() for x in v]), "checks": checks}
    print(f"{len(deliveries)} webhook deliveries from {args.clients} clients in {wall:.1f} s (loopback)")
    for kind, figures in report["latency"].items():
        print(f"  {kind:<10} {figures}")
    print(f"  {'all':<10} {report['all']}  target p99 < 50 ms: "
          f"{'pass' if report['all'].get('p99_ms', 1e9) < 50 else 'MISS'}")
    for name, value in checks.items():
        print(f"  {name}: {value}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    ok = checks["each valid delivery enqueued exactly once"] and checks["invalid deliveries refused (401)"]
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
