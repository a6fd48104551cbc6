"""Issue 27, resources: state 5's command creates real EC2 key pairs and security groups
on moto's EC2 API (moto_server on 127.0.0.1) with the aws CLI, and registers them; a
worker killed with SIGKILL is taken over; `monitor gc` deletes what the abandoned attempt
made and keeps the rest, `cancel --cleanup` the rest; dry runs delete nothing; failing
cleanups are retried; a collector killed mid-cleanup, and two collectors at once, never
record a deletion twice. Every deletion is checked against EC2 itself."""

from __future__ import annotations

import json
import os
import signal
import sys
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from test_slack import Receiver, slack  # noqa: F401  (slack is a fixture)
from test_sync import free_port, moto_command, start, stop

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"
VENV_BIN = Path(sys.executable).parent
BUILD = "img-ec2"

# Creates a key pair and a security group named for the attempt, and registers both
# with a cleanup that deletes them (and a check that describes them).
CREATE = r"""
set -eu
kp="bs-$BUILDSTATE_BUILD_ID-a$BUILDSTATE_ATTEMPT"
aws ec2 create-key-pair --key-name "$kp" >/dev/null
update-state "$BUILDSTATE_BUILD_ID" resource add key-pair "$kp" --attempt "$BUILDSTATE_ATTEMPT" \
  --cleanup 'aws ec2 delete-key-pair --key-name "$BUILDSTATE_RESOURCE_ID"' \
  --check 'aws ec2 describe-key-pairs --key-names "$BUILDSTATE_RESOURCE_ID"' >/dev/null
sg=$(aws ec2 create-security-group --group-name "$kp" --description "buildstate test" --query GroupId --output text)
update-state "$BUILDSTATE_BUILD_ID" resource add security-group "$sg" --attempt "$BUILDSTATE_ATTEMPT" \
  --prop name="$kp" --cleanup 'aws ec2 delete-security-group --group-id "$BUILDSTATE_RESOURCE_ID"' >/dev/null
echo created > "created-$BUILDSTATE_ATTEMPT"
"""


@pytest.fixture(scope="module")
def ec2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("moto-ec2")
    port = free_port()
    proc = start(moto_command(port), port, tmp, "moto_server")
    try:
        yield {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_PAGER": "",
        }
    finally:
        stop(proc)


def env_for(ec2: dict[str, str], db: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUILDSTATE_", "AWS_"))}
    env.update(ec2)
    env["BUILDSTATE_DB"] = str(db)
    env["PATH"] = f"{TARGET}:{VENV_BIN}:{env['PATH']}"
    return env


def run(env: dict[str, str], cwd: Path, *args: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(args), env=env, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)
    if check is not None:
        assert r.returncode == check, f"{args}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def key_pairs(env: dict[str, str], cwd: Path) -> set[str]:
    out = run(env, cwd, "aws", "ec2", "describe-key-pairs", "--query", "KeyPairs[].KeyName", "--output", "json").stdout
    return {k for k in json.loads(out) if k.startswith(f"bs-{BUILD}")}


def groups(env: dict[str, str], cwd: Path) -> set[str]:
    out = run(env, cwd, "aws", "ec2", "describe-security-groups", "--query", "SecurityGroups[].GroupName", "--output", "json").stdout
    return {g for g in json.loads(out) if g.startswith(f"bs-{BUILD}")}


def ledger(env: dict[str, str], cwd: Path, build: str = BUILD) -> list[dict]:
    return json.loads(run(env, cwd, "check-state", build, "--resources", "--json").stdout)["resources"]


def deletions(env: dict[str, str], cwd: Path, build: str = BUILD) -> list[tuple[str, str]]:
    events = json.loads(run(env, cwd, "check-state", build, "--json", "--history", check=None).stdout)["history"]
    return [(e["resource"]["type"], e["resource"]["id"]) for e in events if e["kind"] == "resource" and e["resource"]["op"] == "delete"]


def test_gc_deletes_what_a_killed_worker_left_and_keeps_the_rest(ec2: dict[str, str], tmp_path: Path) -> None:
    env = env_for(ec2, tmp_path / "state.db")
    (tmp_path / "create.sh").write_text(CREATE)
    run(env, tmp_path, "init-state", BUILD, "--cloud", "aws", "--image", "rhel9")
    # Worker 1 creates its resources, then hangs; it is killed with SIGKILL (no chance to
    # record anything) and its lease runs out.
    w1 = subprocess.Popen(["run-state", BUILD, "5", "--lease-ttl", "1s", "--", "sh", "-c", "sh create.sh && sleep 600"], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "created-1").exists():
        assert w1.poll() is None and time.monotonic() < deadline, w1.communicate()
        time.sleep(0.1)
    os.killpg(w1.pid, signal.SIGKILL)
    w1.wait()
    time.sleep(1.5)
    # Worker 2 takes over: it makes its own, and state 5 completes.
    run(env, tmp_path, "run-state", BUILD, "5", "--", "sh", "create.sh")
    assert key_pairs(env, tmp_path) == {f"bs-{BUILD}-a1", f"bs-{BUILD}-a2"}
    by_attempt = {(r["type"], r["attempt"]): r for r in ledger(env, tmp_path)}
    assert by_attempt[("key-pair", 1)]["orphaned"].startswith("attempt 1 of state 5 was taken over"), by_attempt
    assert by_attempt[("key-pair", 2)]["orphaned"] is None

    # A dry run says what it would delete, and deletes nothing.
    dry = json.loads(run(env, tmp_path, "monitor", "gc", "--older-than", "0s", "--dry-run", "--json").stdout)
    assert sorted((r["type"], r["outcome"]) for r in dry["resources"]) == [("key-pair", "would_delete"), ("security-group", "would_delete")]
    assert len(key_pairs(env, tmp_path)) == 2 and len(groups(env, tmp_path)) == 2
    assert deletions(env, tmp_path) == []

    # The real run deletes attempt 1's, newest first (the group before the key pair).
    done = json.loads(run(env, tmp_path, "monitor", "gc", "--older-than", "0s", "--json").stdout)["resources"]
    assert [(r["type"], r["outcome"]) for r in done] == [("security-group", "deleted"), ("key-pair", "deleted")], done
    assert key_pairs(env, tmp_path) == {f"bs-{BUILD}-a2"}
    assert groups(env, tmp_path) == {f"bs-{BUILD}-a2"}
    # Nothing left to do: a second run deletes nothing more.
    assert json.loads(run(env, tmp_path, "monitor", "gc", "--older-than", "0s", "--json").stdout)["resources"] == []

    # The check command sees what EC2 has: present.
    run(env, tmp_path, "check-state", BUILD, "--resources", "--refresh", "--max-age", "0s")
    statuses = {(r["type"], r["attempt"]): r["status"] for r in ledger(env, tmp_path)}
    assert statuses == {("key-pair", 1): "deleted", ("security-group", 1): "deleted", ("key-pair", 2): "present", ("security-group", 2): "present"}

    # Cancelling with --cleanup deletes the rest at once.
    run(env, tmp_path, "update-state", BUILD, "cancel", "--reason", "superseded", "--cleanup")
    assert key_pairs(env, tmp_path) == set() and groups(env, tmp_path) == set()
    assert len(deletions(env, tmp_path)) == 4


def test_a_failing_cleanup_is_retried_recorded_and_alerted_once(ec2: dict[str, str], slack: Receiver, tmp_path: Path) -> None:  # noqa: F811
    env = env_for(ec2, tmp_path / "state.db")
    env["BUILDSTATE_SLACK_WEBHOOK_URL"] = slack.url + "/services/T000/B000/webhooksecret"
    build = "img-flaky"
    run(env, tmp_path, "init-state", build, "--cloud", "aws", "--image", "rhel9")
    run(env, tmp_path, "update-state", build, "start", "5")
    run(env, tmp_path, "aws", "ec2", "create-key-pair", "--key-name", f"bs-{BUILD}-flaky")
    # Fails twice, then deletes: one run with three tries does it.
    flaky = f'n=$(cat tries 2>/dev/null || echo 0); n=$((n+1)); echo $n > tries; [ $n -ge 3 ] || {{ echo "try $n: throttled" >&2; exit 1; }}; aws ec2 delete-key-pair --key-name bs-{BUILD}-flaky'
    run(env, tmp_path, "update-state", build, "resource", "add", "key-pair", f"bs-{BUILD}-flaky", "--cleanup", flaky)
    run(env, tmp_path, "update-state", build, "resource", "add", "key-pair", "never-goes", "--cleanup", "echo 'access denied' >&2; exit 4")
    r = run(env, tmp_path, "update-state", build, "cancel", "--reason", "test", "--cleanup", check=23)
    assert "never-goes failed" in r.stderr and "access denied" in r.stderr, r.stderr
    assert (tmp_path / "tries").read_text().strip() == "3"
    assert f"bs-{BUILD}-flaky" not in key_pairs(env, tmp_path)
    by_id = {r["id"]: r for r in ledger(env, tmp_path, build)}
    assert by_id[f"bs-{BUILD}-flaky"]["status"] == "deleted"
    assert (by_id["never-goes"]["status"], by_id["never-goes"]["cleanup_failures"]) == ("cleanup_failed", 1)
    assert "access denied" in by_id["never-goes"]["last_error"]
    # The next collection tries again, and says so with its exit code.
    r = run(env, tmp_path, "monitor", "gc", "--tries", "1", "--retry-delay", "0s", check=23)
    assert "failed key-pair never-goes" in r.stdout, r.stdout
    assert ledger(env, tmp_path, build)[1]["cleanup_failures"] == 2
    # Slack heard of it once, with what failed, though it failed in two collections.
    run(env, tmp_path, "monitor", "deliver", "--budget", "10s")
    cleanup = [m for m in slack.messages if "clean up" in m["text"]]
    assert [m["text"] for m in cleanup] == [f"Build {build} could not clean up key-pair never-goes"], slack.messages
    assert "access denied" in json.dumps(cleanup[0]), cleanup[0]
    assert slack.problems == []


def test_a_killed_collector_and_two_at_once_never_delete_twice(ec2: dict[str, str], tmp_path: Path) -> None:
    env = env_for(ec2, tmp_path / "state.db")
    build = "img-race"
    run(env, tmp_path, "init-state", build, "--cloud", "aws", "--image", "rhel9")
    run(env, tmp_path, "update-state", build, "start", "5")
    for n in range(3):
        name = f"bs-{BUILD}-race{n}"
        run(env, tmp_path, "aws", "ec2", "create-key-pair", "--key-name", name)
        # Each run of a cleanup leaves a line: how many times it ran is counted.
        cleanup = f'echo "$$" >> ran-$BUILDSTATE_RESOURCE_ID; sleep 1; aws ec2 delete-key-pair --key-name "$BUILDSTATE_RESOURCE_ID"'
        run(env, tmp_path, "update-state", build, "resource", "add", "key-pair", name, "--cleanup", cleanup)
    run(env, tmp_path, "update-state", build, "cancel", "--reason", "race")
    # A collector killed during its first cleanup: its claim holds the others off until
    # it expires; then a rerun finishes the job.
    gc = subprocess.Popen(["monitor", "gc", "--timeout", "2s", "--tries", "1", "--retry-delay", "0s"], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 30
    while not (tmp_path / f"ran-bs-{BUILD}-race2").exists():
        assert gc.poll() is None and time.monotonic() < deadline, gc.communicate()
        time.sleep(0.05)
    os.kill(gc.pid, signal.SIGKILL)
    gc.wait()
    claimed = {r["id"]: r["claimed_until"] for r in ledger(env, tmp_path, build)}
    assert claimed[f"bs-{BUILD}-race2"] is not None, claimed
    early = json.loads(run(env, tmp_path, "monitor", "gc", "--json").stdout)["resources"]
    assert [(r["id"], r["outcome"]) for r in early if r["id"].endswith("race2")] == [], early
    assert deletions(env, tmp_path, build) == [("key-pair", f"bs-{BUILD}-race1"), ("key-pair", f"bs-{BUILD}-race0")]
    time.sleep(8)  # the claim: the timeout and a margin of 5 s
    # Two collectors at once on what is left: one deletes it, the other leaves it.
    procs = [subprocess.Popen(["monitor", "gc", "--json"], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    outcomes = sorted(r["outcome"] for out, _ in outs for r in json.loads(out)["resources"])
    assert outcomes in (["deleted"], ["deleted", "skipped"]), outs
    assert deletions(env, tmp_path, build).count(("key-pair", f"bs-{BUILD}-race2")) == 1
    assert not any(k.startswith(f"bs-{BUILD}-race") for k in key_pairs(env, tmp_path))
    # The killed collector's cleanup ran once more after it; no cleanup ran three times.
    assert len((tmp_path / f"ran-bs-{BUILD}-race2").read_text().split()) == 2
    assert all(len((tmp_path / f"ran-bs-{BUILD}-race{n}").read_text().split()) == 1 for n in (0, 1))


def test_two_cron_hosts_through_an_s3_remote_never_clean_up_twice(ec2: dict[str, str], tmp_path: Path) -> None:
    """A worker in remote mode (moto's S3 on the same moto server) records key pairs and
    is cancelled; two cron hosts, each with its own database, collect at once through
    the remote: every key pair is deleted, each cleanup ran once, each deletion is one
    event in the shared build."""
    import boto3

    port = ec2["AWS_ENDPOINT_URL"].rsplit(":", 1)[1]
    boto3.client("s3", endpoint_url=ec2["AWS_ENDPOINT_URL"], aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket="gc-remote")
    remote = "s3://gc-remote/state"

    def host(name: str) -> dict[str, str]:
        env = env_for(ec2, tmp_path / f"{name}.db")
        env.update(AWS_ENDPOINT=f"http://127.0.0.1:{port}", AWS_ALLOW_HTTP="true", AWS_REGION="us-east-1", BUILDSTATE_REMOTE=remote, BUILDSTATE_SNAPSHOT_KEY="gc-two-hosts-key-0123456789")
        return env

    worker = host("worker")
    build = "img-hosts"
    run(worker, tmp_path, "init-state", build, "--cloud", "aws", "--image", "rhel9")
    run(worker, tmp_path, "update-state", build, "start", "5")
    names = [f"bs-{BUILD}-host{n}" for n in range(4)]
    for name in names:
        run(worker, tmp_path, "aws", "ec2", "create-key-pair", "--key-name", name)
        cleanup = 'echo "$$" >> "ran-$BUILDSTATE_RESOURCE_ID"; sleep 0.5; aws ec2 delete-key-pair --key-name "$BUILDSTATE_RESOURCE_ID"'
        run(worker, tmp_path, "update-state", build, "resource", "add", "key-pair", name, "--cleanup", cleanup)
    run(worker, tmp_path, "update-state", build, "cancel", "--reason", "two hosts")
    assert {f"bs-{BUILD}-host{n}" for n in range(4)} <= key_pairs(worker, tmp_path)

    crons = [host("cron-a"), host("cron-b")]
    procs = [subprocess.Popen(["monitor", "gc", "--json", "--retry-delay", "0s"], env=e, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for e in crons]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    results = [json.loads(out)["resources"] for out, _ in outs]
    deleted = sorted(r["id"] for rs in results for r in rs if r["outcome"] == "deleted")
    assert deleted == sorted(names), results
    assert all(r["outcome"] in ("deleted", "skipped") for rs in results for r in rs), results
    assert not any(k.startswith(f"bs-{BUILD}-host") for k in key_pairs(worker, tmp_path))
    # Each cleanup ran once, on one host or the other; the shared history says so once.
    assert all(len((tmp_path / f"ran-{n}").read_text().split()) == 1 for n in names)
    shared = deletions(worker, tmp_path, build)
    assert sorted(i for _, i in shared) == sorted(names), shared
    # A third collection finds nothing left.
    again = json.loads(run(crons[0], tmp_path, "monitor", "gc", "--json").stdout)["resources"]
    assert again == [], again
