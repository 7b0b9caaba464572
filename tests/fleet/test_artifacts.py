"""Index artifacts in a fleet: push and pull run as ``codeindex.artifact.*`` tasks on the
repository's owner, the artifacts live in S3 (moto over HTTP), and a pull writes the snapshot
into the shared state and store under a fencing token newer than any sync's."""

from __future__ import annotations

import json
import uuid

from tests.conftest import git
from tests.fleet.conftest import assert_index_exact, make_repo
from tests.s3 import MOTO_SECRET_KEY, s3_server  # noqa: F401 - the session fixture, used by name


def test_push_and_pull_run_on_the_owner_with_artifacts_in_s3(fleet, s3_server) -> None:  # noqa: F811
    bucket = f"codeindex-artifacts-{uuid.uuid4().hex[:10]}"
    s3_server.store(bucket).ensure_bucket()
    fleet.env.update({"CODEINDEX_ARTIFACT_URI": f"s3://{bucket}/team", "CODEINDEX_S3_ENDPOINT_URL": s3_server.url,
                      "CODEINDEX_S3_REGION": s3_server.region, "CODEINDEX_S3_ACCESS_KEY_ID": s3_server.access_key,
                      "CODEINDEX_S3_SECRET_ACCESS_KEY": s3_server.secret_key})
    fleet.start_worker("a")
    root = make_repo(fleet.workdir, "proj", celery_files=10, kombu_files=8)
    fleet.cli("repo", "add", str(root), "--json")
    fleet.sync(root, "--all")
    before = fleet.export("proj")

    pushed = json.loads(fleet.cli("artifact", "push", "--repo", "proj", "--json").stdout)
    assert pushed["uri"].startswith(f"s3://{bucket}/team/artifacts/") and pushed["branch"] == "main"
    assert "codeindex.artifact.push" in fleet.log("worker-a")
    listed = json.loads(fleet.cli("artifact", "list", "--json").stdout)["artifacts"]
    assert [a["id"] for a in listed] == [pushed["id"]] and listed[0]["index_stats"]["chunks"] == len(before)
    assert MOTO_SECRET_KEY not in json.dumps(listed) + json.dumps(pushed)

    target = sorted(root.rglob("*.py"))[0]
    target.write_text(target.read_text() + "\ndef after_the_artifact():\n    return 1\n")
    git(root, "commit", "-qam", "after the artifact")
    fleet.sync(root, "--all")
    assert fleet.export("proj") != before

    pulled = json.loads(fleet.cli("artifact", "pull", pushed["id"], "--repo", "proj", "--json").stdout)
    assert pulled["chunks"] == len(before) and "codeindex.artifact.pull" in fleet.log("worker-a")
    assert fleet.export("proj") == before
    assert fleet.state().get_repo("proj").last_commit == pushed["commit"]
    # the install's fencing token is below the next sync's: that sync brings the index to HEAD exactly
    fleet.sync(root, "--detect-changes")
    assert_index_exact(fleet, root, fleet.workdir)
