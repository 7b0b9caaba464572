"""`codeindex flower` on a real fleet: basic auth on every page and API call, the sync's tasks
under their stable names in the page a real browser (headless Chromium) renders with
credentials and nothing of it without, a refusal to start without authentication, and no
password in any log, command line or start environment."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.fleet.conftest import Fleet, make_repo, wait_for

CHROMIUM = "/usr/bin/chromium"
# Headless, and nothing that reaches for a network this machine does not have (scripts/test
# installs Debian's chromium when it is missing).
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=5000", "--window-size=1280,560", "--hide-scrollbars")
NAMES = ("codeindex.sync.plan", "codeindex.embed.batch", "codeindex.sync.commit")
#: Where the screenshot goes for docs/operations.md when CODEINDEX_TEST_SAVE_SCREENSHOTS=1.
DOCS_IMAGE = Path(__file__).resolve().parents[2] / "docs" / "images" / "flower-tasks.png"


def status(url: str, user: str | None = None, password: str | None = None) -> int | None:
    """The HTTP status of GET ``url`` (with basic auth when ``user`` is given); None when down."""
    request = urllib.request.Request(url)
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def text(url: str) -> str:
    """The body of GET ``url`` without credentials; empty when it fails."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()
    except OSError:
        return ""


def get_json(url: str, user: str, password: str) -> object:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def chromium(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium on ``url`` with a new empty profile; ``args``: --dump-dom, --screenshot."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: scripts/test installs Debian's chromium package")
    profile = tmp_path / f"chromium-{uuid.uuid4().hex[:8]}"
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url],
                          capture_output=True, text=True, timeout=90, cwd=tmp_path, check=True)


@pytest.fixture
def fleet(fleet: Fleet) -> Fleet:
    """The fleet, with no Flower authentication from this machine's environment."""
    for name in [n for n in fleet.env if n.upper().startswith(("FLOWER_", "CODEINDEX_FLOWER_"))]:
        del fleet.env[name]
    return fleet


def start_flower(fleet: Fleet, port: int, *args: str, extra_env: dict | None = None,
                 log: str = "flower") -> subprocess.Popen:
    """Start ``codeindex flower --port PORT ARGS`` (stopped with the fleet); see :func:`listening`."""
    proc = fleet._spawn(["flower", "--port", str(port), *args], log, extra_env)
    fleet.beats.append(proc)  # stopped with the rest
    return proc


def listening(fleet: Fleet, proc: subprocess.Popen, port: int, log: str = "flower") -> None:
    """Wait until the Flower of ``proc`` answers its health check (no auth) on ``port``."""
    wait_for(lambda: status(f"http://127.0.0.1:{port}/healthcheck") == 200 or proc.poll() is not None, 60,
             "flower to listen")
    assert proc.poll() is None, fleet.log(log)


def test_flower_refuses_to_start_without_authentication(fleet) -> None:
    port = free_port()
    insecure = start_flower(fleet, port, "--insecure", log="flower-insecure")
    refused = fleet.cli("flower", "--port", str(free_port()), check=False, timeout=60)
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: codeindex flower refuses to start without "
                                                   "authentication"), refused.stderr
    # A user without a password is refused as well, and the message does not quote it.
    bad = fleet.cli("flower", check=False, timeout=60, extra_env={"CODEINDEX_FLOWER_BASIC_AUTH": "ann-without-pw"})
    assert bad.returncode == 2 and "ann-without-pw" not in bad.stderr, bad.stderr
    assert bad.stderr.startswith("error: CODEINDEX_FLOWER_BASIC_AUTH: user 1 is not user:password"), bad.stderr

    listening(fleet, insecure, port, "flower-insecure")
    assert status(f"http://127.0.0.1:{port}/") == 200


def test_flower_behind_basic_auth_shows_the_sync_tasks(fleet, tmp_path: Path) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    users = tmp_path / "flower-users"
    users.write_text(f"ann:{password}\nbob:{uuid.uuid4().hex}\n")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    flower = start_flower(fleet, port, extra_env={"CODEINDEX_FLOWER_BASIC_AUTH_FILE": str(users)})
    fleet.start_worker("a")
    listening(fleet, flower, port)
    # Flower's /metrics needs no credentials (docs/operations.md): it shows when Flower has
    # subscribed to the worker's events, which a task's events must not race.
    wait_for(lambda: re.search(r'flower_worker_online\{worker="a@[^"]+"\} 1\.0', text(base + "/metrics")), 30,
             "flower to receive the worker's events")
    root = make_repo(tmp_path, "flowered", 6, 4)
    added = fleet.sync(root, "--all")["added"]
    assert added >= 10
    # Nothing changed: this plan returns its summary itself; the first replaced itself with the
    # chord whose body kept its task id, which Flower (tasks keyed by id) shows as the commit.
    assert fleet.sync(root, "--all")["unchanged"] == added

    # (a) every page and API call asks for credentials; Flower's probes do not.
    for path in ("/", "/tasks", "/api/tasks", "/api/workers"):
        assert status(base + path) == 401, path
        assert status(base + path, "ann", "wrong") == 401, path
        assert status(base + path, "eve", password) == 401, path
    assert status(base + "/api/tasks", "ann", password) == 200
    assert status(base + "/healthcheck") == 200 and status(base + "/metrics") == 200  # docs/operations.md

    def names() -> set[str]:
        tasks = get_json(base + "/api/tasks", "ann", password)
        return {task["name"] for task in tasks.values() if task.get("state") == "SUCCESS"}

    wait_for(lambda: names() >= set(NAMES), 30, "flower to receive the sync's task events")

    # (b) a browser that logs in sees the tasks under their stable names.
    page = f"http://ann:{password}@127.0.0.1:{port}/tasks"
    dom = chromium(tmp_path, page, "--dump-dom").stdout
    assert "<title>Tasks · Flower</title>" in dom, dom[:2000]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", dom.split("<tbody>", 1)[1], flags=re.S)
    shown = {name for row in rows for name in NAMES if f">{name}<" in row and ">SUCCESS<" in row}
    assert shown == set(NAMES), rows
    shot = tmp_path / "flower-tasks.png"
    chromium(tmp_path, page, f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    if os.environ.get("CODEINDEX_TEST_SAVE_SCREENSHOTS"):
        shutil.copyfile(shot, DOCS_IMAGE)

    # (c) the same browser without credentials gets nothing of the page. Headless Chromium has no
    # login dialog to cancel: on Flower's 401 challenge (only a challenge gives this error) it
    # abandons the load, so there is no DOM to dump and no screenshot is written.
    for args in (["--dump-dom"], [f"--screenshot={tmp_path / 'flower-no-credentials.png'}"]):
        refused = chromium(tmp_path, f"{base}/tasks", *args)
        assert "Page load failed: net::ERR_INVALID_AUTH_CREDENTIALS" in refused.stderr, refused.stderr
        assert refused.stdout == "", refused.stdout[:2000]
    assert not (tmp_path / "flower-no-credentials.png").exists()

    # (d) the password is in no log line, nor on Flower's command line or in its start environment.
    for pid_file in (f"/proc/{flower.pid}/cmdline", f"/proc/{flower.pid}/environ"):
        assert password.encode() not in Path(pid_file).read_bytes(), pid_file
    flower.terminate()
    assert flower.wait(timeout=20) == 0  # Flower's SIGTERM handler: a clean exit
    logs = {log.name: log.read_text(errors="replace") for log in fleet.logs.glob("*.log")}
    assert "Visit me at" in logs["flower.log"] and "worker-a.log" in logs
    assert not [name for name, text in logs.items() if password in text]
