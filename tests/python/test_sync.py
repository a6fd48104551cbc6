"""sync-cloud against real object-storage servers started here on 127.0.0.1: moto_server
and SeaweedFS for the S3 API, Azurite for Azure Blob. A server that cannot start fails
the test (never a skip). Also: a snapshot matches docs/snapshot.schema.json, and a remote
that is down, hangs or answers 500 gives a clear error within a bound, local state
untouched."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import jsonschema
import pytest

import buildstate

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"
VENV_BIN = Path(sys.executable).parent
AZURITE = Path(os.environ.get("AZURITE_BLOB", ROOT / ".tools" / "node_modules" / ".bin" / "azurite-blob"))
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
# The bound on any one command against a broken remote: far above the configured
# BUILDSTATE_REMOTE_TIMEOUT, so only a command that ignores it hits this.
BOUND = 90


def moto_command(port: int) -> list[str]:
    """moto_server on 127.0.0.1:port, its conditional writes atomic (see moto_atomic.py)."""
    return [sys.executable, str(Path(__file__).with_name("moto_atomic.py")), "-H", "127.0.0.1", "-p", str(port)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited ({proc.returncode}) before listening:\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    pytest.fail(f"{what} did not listen on 127.0.0.1:{port} within 90 s:\n{log.read_text()[-3000:]}")


@dataclass
class Server:
    name: str
    url: str  # the remote URL
    env: dict[str, str] = field(default_factory=dict)


def start(cmd: list[str], port: int, tmp: Path, what: str) -> subprocess.Popen:
    log = tmp / f"{what}.log"
    # The server's own scratch (SeaweedFS's filer store; its logs go to -logdir) stays in
    # its folder. SeaweedFS's sockets are always in /tmp.
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=tmp, env=env, start_new_session=True)
    wait_for_port(port, proc, log, what)
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def s3_env(port: int) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT": f"http://127.0.0.1:{port}",
        "AWS_ALLOW_HTTP": "true",
    }


def make_bucket(port: int, bucket: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1")
    deadline = time.monotonic() + 60
    while True:
        try:
            s3.create_bucket(Bucket=bucket)
            return
        except Exception as e:  # the S3 gateway may answer before it can create buckets
            if time.monotonic() > deadline:
                pytest.fail(f"could not create bucket {bucket}: {e}")
            time.sleep(0.5)


@pytest.fixture(scope="module", params=["moto", "seaweedfs", "azurite"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp(request.param)
    port = free_port()
    if request.param == "moto":
        proc = start(moto_command(port), port, tmp, "moto_server")
        make_bucket(port, "builds")
        srv = Server("moto", "s3://builds/state", s3_env(port))
    elif request.param == "seaweedfs":
        data = tmp / "data"
        data.mkdir()
        cmd = [str(VENV_BIN / "weed"), f"-logdir={tmp}", "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-s3.port={port}"]
        proc = start(cmd, port, tmp, "seaweedfs")
        make_bucket(port, "builds")
        srv = Server("seaweedfs", "s3://builds/state", s3_env(port))
    else:
        if not AZURITE.exists():
            pytest.fail(f"azurite-blob is not installed at {AZURITE} (scripts/test installs it with npm)")
        cmd = [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--skipApiVersionCheck", "--disableTelemetry", "--location", str(tmp / "data"), "--silent"]
        proc = start(cmd, port, tmp, "azurite")
        from azure.storage.blob import BlobServiceClient

        conn = f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
        BlobServiceClient.from_connection_string(conn).create_container("builds")
        srv = Server("azurite", "az://builds/state", {"AZURE_STORAGE_USE_EMULATOR": "true", "AZURITE_BLOB_STORAGE_URL": f"http://127.0.0.1:{port}"})
    try:
        yield srv
    finally:
        stop(proc)


class Worker:
    """One machine: its own database, talking to the shared remote. sync-cloud always
    gets the remote; the other tools only in remote mode."""

    def __init__(self, tmp: Path, name: str, remote: str, env: dict[str, str], remote_mode: bool = False) -> None:
        self.db = tmp / f"{name}.db"
        self.remote = remote
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("BUILDSTATE_", "AWS_", "AZURE", "GOOGLE_"))}
        self.env.update(env, HOME=str(tmp), BUILDSTATE_DB=str(self.db))
        if remote_mode:
            self.env["BUILDSTATE_REMOTE"] = remote

    def argv(self, tool: str, args: tuple[str, ...]) -> list[str]:
        extra = ["--remote", self.remote] if tool == "sync-cloud" else []
        return [str(TARGET / tool), *extra, *args]

    def run(self, tool: str, *args: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(self.argv(tool, args), env=self.env, capture_output=True, text=True, timeout=BOUND, check=False)
        if check is not None:
            assert r.returncode == check, f"{tool} {args}: exit {r.returncode}, wanted {check}\n{r.stdout}\n{r.stderr}"
        return r

    def spawn(self, tool: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen(self.argv(tool, args), env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def history(self, build: str) -> list[dict]:
        return json.loads(self.run("check-state", build, "--json", "--history", check=None).stdout)["history"]


def test_two_workers_share_a_build_and_a_stale_push_is_refused(server: Server, tmp_path: Path) -> None:
    a, b = (Worker(tmp_path, n, server.url, server.env) for n in "ab")
    build = f"img-{server.name}"
    a.run("init-state", build, "--cloud", "aws", "--image", "rhel9")
    a.run("sync-cloud", "push", build)
    b.run("sync-cloud", "pull", build)
    assert b.history(build) == a.history(build)
    b.run("update-state", build, "complete", "5")
    b.run("sync-cloud", "push", build)
    a.run("update-state", build, "meta", "late=yes")
    before = b.run("sync-cloud", "status", "--json").stdout
    r = a.run("sync-cloud", "push", build, check=15)
    assert "nothing was overwritten" in r.stderr
    assert b.run("sync-cloud", "status", "--json").stdout == before
    a_before = a.history(build)
    a.run("sync-cloud", "pull", build, check=16)
    assert a.history(build) == a_before
    a.run("sync-cloud", "pull", build, "--take-remote")
    assert a.history(build) == b.history(build)
    # A second database creating the same id: create-only refuses it.
    c = Worker(tmp_path, "c", server.url, server.env)
    c.run("init-state", build, "--cloud", "aws", "--image", "rhel9")
    assert "exists already" in c.run("sync-cloud", "push", build, check=15).stderr


APP_PLAN = """
name = "app-image"
[[state]]
id = 0
name = "init"
expected = "1s"
[[state]]
id = 10
name = "app-layer"
expected = "5m"
after = ["base-{image}:5"]
inputs = { builds = ["base-{image}:ami_id"] }
"""


def test_a_child_on_one_machine_waits_for_its_parent_written_on_another(server: Server, tmp_path: Path) -> None:
    a, b = (Worker(tmp_path, n, server.url, server.env, remote_mode=True) for n in ("deps-a", "deps-b"))
    base, app = f"base-{server.name}", f"app-{server.name}"
    plan = tmp_path / "app.toml"
    plan.write_text(APP_PLAN)
    b.run("init-state", app, "--cloud", "aws", "--image", server.name, "--plan", str(plan))
    r = b.run("check-state", app, "--json", check=12)
    assert json.loads(r.stdout)["waiting_for"][0]["status"] == "missing", r.stdout
    a.run("init-state", base, "--cloud", "aws", "--image", server.name)
    a.run("update-state", base, "start", "5")
    assert json.loads(b.run("check-state", app, "--json", check=12).stdout)["waiting_for"][0]["status"] == "running"
    a.run("update-state", base, "output", "ami_id=ami-1")
    a.run("update-state", base, "complete", "5")
    assert json.loads(b.run("check-state", app, "--json").stdout)["decision"] == "resume"
    b.run("update-state", app, "start", "10")
    b.run("update-state", app, "complete", "10")
    # Machine A rebuilds the base with a new image: machine B sees its child stale.
    a.run("update-state", base, "force", "5", "--reason", "role edit")
    a.run("update-state", base, "start", "5")
    a.run("update-state", base, "output", "ami_id=ami-2")
    a.run("update-state", base, "complete", "5")
    d = json.loads(b.run("check-state", app, "--json").stdout)
    assert (d["decision"], d["next_state"]) == ("rerun", 10), d
    why = d["stale"][0]["reasons"][0]
    assert "'ami-1'" in why and "'ami-2'" in why and base in why, why


def test_a_check_with_three_parents_reads_each_parent_once_conditionally(server: Server, tmp_path: Path) -> None:
    """Issue 29's bound: check-state of a child with 3 parents in remote mode makes at
    most one read per parent, and a conditional one (If-None-Match) that sends nothing
    back when the parent is unchanged."""
    w = Worker(tmp_path, "three", server.url, server.env, remote_mode=True)
    tag = f"3p-{server.name}"
    parents = [f"{tag}-p{i}" for i in (1, 2, 3)]
    for p in parents:
        w.run("init-state", p, "--cloud", "aws", "--image", "rhel9")
    w.run("init-state", f"{tag}-child", "--cloud", "aws", "--image", "rhel9", *(a for p in parents for a in ("--after", f"{p}:5")))
    w.env["BUILDSTATE_LOG"] = "buildstate::remote=debug"
    r = w.run("check-state", f"{tag}-child", "--json", check=12)
    assert len(json.loads(r.stdout)["waiting_for"]) == 3, r.stdout
    for p in parents:
        reads = [line for line in r.stderr.splitlines() if f"builds/{p}.json" in line and " GET" in line]
        assert len(reads) == 1, (p, reads, r.stderr)
        if server.name == "moto":
            assert "GET (if none match)" in reads[0] and "not modified" in reads[0], reads


def test_racing_workers_exactly_one_wins_each_round(server: Server, tmp_path: Path) -> None:
    build = f"race-{server.name}"
    base = Worker(tmp_path, "base", server.url, server.env)
    base.run("init-state", build, "--cloud", "aws", "--image", "rhel9")
    base.run("sync-cloud", "push", build)
    workers = [Worker(tmp_path, f"w{i}", server.url, server.env) for i in range(5)]
    for w in workers:
        w.run("sync-cloud", "pull", build)
    for rnd in range(3):
        for i, w in enumerate(workers):
            w.run("update-state", build, "meta", f"w{i}=r{rnd}")
        procs = [w.spawn("sync-cloud", "push", build) for w in workers]
        codes = [p.wait(timeout=BOUND) for p in procs]
        assert sorted(codes) == [0] + [15] * (len(workers) - 1), (rnd, codes)
        winner = workers[codes.index(0)]
        for w in workers:
            if w is not winner:
                w.run("sync-cloud", "pull", build, "--take-remote")
                assert w.history(build) == winner.history(build)
        history = winner.history(build)
        assert [e["seq"] for e in history] == list(range(1, len(history) + 1))
        assert history[-1]["serial"] == 2 + rnd


def test_push_all_and_pull_all(server: Server, tmp_path: Path) -> None:
    a, b = (Worker(tmp_path, n, server.url, server.env) for n in "ab")
    ids = [f"all-{server.name}-{i:03}" for i in range(40)]
    for i in ids:
        a.run("init-state", i, "--cloud", "aws", "--image", "rhel9")
    pushed = json.loads(a.run("sync-cloud", "push", "--all", "--json").stdout)
    assert {p["build_id"] for p in pushed if p["outcome"] == "pushed"} >= set(ids)
    b.run("sync-cloud", "pull", "--all")
    status = json.loads(b.run("sync-cloud", "status", "--json").stdout)
    assert {s["build_id"] for s in status if s["state"] == "in_sync"} >= set(ids)


def test_the_fleet_from_a_machine_with_no_database(server: Server, tmp_path: Path) -> None:
    """Issue 17: monitor with a remote treats the local database as a cache it creates
    and refreshes, and a second look fetches only the builds whose objects changed (the
    listing's ETags against the last synced ones)."""
    a = Worker(tmp_path, "a", server.url, server.env)
    ids = [f"fleet-{server.name}-{i}" for i in range(5)]
    for i in ids:
        a.run("init-state", i, "--cloud", "aws", "--image", "rhel9")
    a.run("sync-cloud", "push", "--all")
    cron = Worker(tmp_path, "cron", server.url, server.env, remote_mode=True)
    assert not cron.db.exists()
    rows = {r["build_id"]: r for r in json.loads(cron.run("monitor", "status", "--json").stdout)}
    assert set(ids) <= set(rows) and cron.db.exists()
    assert all(rows[i]["current_state"] == 0 for i in ids)

    def pull() -> dict[str, dict]:
        r = cron.run("sync-cloud", "pull", "--all", "--json")
        return {p["build_id"]: p for p in json.loads(r.stdout)}

    again = pull()
    assert [again[i]["fetched"] for i in ids] == [False] * 5, again
    assert {again[i]["outcome"] for i in ids} == {"up_to_date"}
    a.run("update-state", ids[2], "complete", "5")
    a.run("sync-cloud", "push", ids[2])
    changed = pull()
    assert [i for i in ids if changed[i]["fetched"]] == [ids[2]], changed
    assert changed[ids[2]]["outcome"] == "fast_forward"
    a.run("update-state", ids[3], "complete", "5")
    a.run("sync-cloud", "push", ids[3])
    rows = {r["build_id"]: r for r in json.loads(cron.run("monitor", "status", "--json").stdout)}
    assert [rows[i]["current_state"] for i in ids] == [0, 0, 5, 5, 0]
    r = cron.run("sync-cloud", "pull", "--all")
    assert "not fetched: unchanged since the last pull" in r.stderr
    # check and metrics read the same cache
    cron.run("monitor", "check")
    metrics = dict(line.rsplit(" ", 1) for line in cron.run("monitor", "metrics").stdout.splitlines() if not line.startswith("#"))
    assert int(metrics['buildstate_builds{status="pending"}']) >= len(ids)
    # A build archived from the cron host's cache stays archived, and is not fetched
    # again while its remote copy is unchanged.
    a.run("update-state", ids[4], "cancel", "--reason", "superseded")
    a.run("sync-cloud", "push", ids[4])
    assert pull()[ids[4]]["outcome"] == "fast_forward"
    report = json.loads(cron.run("monitor", "archive", "--cancelled-before", "0s", "--json").stdout)
    assert ids[4] in report["archived"], report
    after = pull()
    assert (after[ids[4]]["outcome"], after[ids[4]]["fetched"], after[ids[4]]["local_serial"]) == ("archived", False, None), after[ids[4]]
    assert "is archived" in cron.run("check-state", ids[4], check=3).stderr


def test_a_snapshot_matches_the_published_schema(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    a = Worker(tmp_path, "a", f"file://{remote}", {})
    a.run("init-state", "img-1", "--cloud", "aws", "--image", "rhel9", "--meta", "git=1a2b")
    a.run("update-state", "img-1", "fail", "5", "--error", "it's 'quoted'")
    a.run("update-state", "img-1", "output", "ami_id=ami-0abc", "note=it's 'quoted'")
    a.run("sync-cloud", "push", "img-1")
    schema = json.loads((ROOT / "docs" / "snapshot.schema.json").read_text())
    snapshot = json.loads((remote / "builds" / "img-1.json").read_text())
    assert snapshot["schema_version"] == 6 and snapshot["events"][-1]["outputs"]["note"] == "it's 'quoted'"
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(snapshot, schema, format_checker=jsonschema.FormatChecker())
    snapshot["build"]["status"] = "exploded"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(snapshot, schema)
    # Signed, in remote mode, with an alert travelling with the build.
    w = Worker(tmp_path, "w", f"file://{remote}", {"BUILDSTATE_SNAPSHOT_KEY": "schema-test-key-0123456789"}, remote_mode=True)
    w.run("init-state", "img-2", "--cloud", "aws", "--image", "rhel9")
    w.run("update-state", "img-2", "cancel", "--reason", "not needed")
    snapshot = json.loads((remote / "builds" / "img-2.json").read_text())
    assert snapshot["signature"]["alg"] == "hmac-sha256" and snapshot["alerts"][0]["kind"] == "cancelled"
    jsonschema.validate(snapshot, schema, format_checker=jsonschema.FormatChecker())
    # Task results pruned by retention: schema version 5 (the typed count), numbers missing below the
    # pruned event.
    a.run("init-state", "img-3", "--cloud", "aws", "--image", "rhel9")
    store = buildstate.Store(str(a.db))
    store.task("img-3", "install packages", "web-1", "ok", state=5)
    store.flush()
    a.run("monitor", "prune-tasks", "--older-than", "0s")
    a.run("sync-cloud", "push", "img-3")
    snapshot = json.loads((remote / "builds" / "img-3.json").read_text())
    assert snapshot["schema_version"] == 5 and [e["kind"] for e in snapshot["events"]] == ["init", "pruned"], snapshot
    assert snapshot["events"][1]["count"] == 1, snapshot
    assert [e["seq"] for e in snapshot["events"]] == [1, 3]
    jsonschema.validate(snapshot, schema, format_checker=jsonschema.FormatChecker())


class _Answer500(http.server.BaseHTTPRequestHandler):
    def _fail(self) -> None:
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_PUT = do_HEAD = do_POST = _fail

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def broken_remotes() -> Iterator[dict[str, int]]:
    """A closed port, a server that accepts and never answers, one that answers 500."""
    closed = free_port()
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(64)
    err = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer500)
    threading.Thread(target=err.serve_forever, daemon=True).start()
    try:
        yield {"down": closed, "hangs": hang.getsockname()[1], "500": err.server_address[1]}
    finally:
        err.shutdown()
        hang.close()


@pytest.mark.parametrize("kind", ["down", "hangs", "500"])
def test_a_broken_remote_is_a_clear_error_within_a_bound(kind: str, broken_remotes: dict[str, int], tmp_path: Path) -> None:
    env = dict(s3_env(broken_remotes[kind]), BUILDSTATE_REMOTE_TIMEOUT="3s")
    local = Worker(tmp_path, "w", "s3://builds/state", env)
    w = Worker(tmp_path, "w", "s3://builds/state", env, remote_mode=True)  # the same database
    local.run("init-state", "img-1", "--cloud", "aws", "--image", "rhel9")
    before = local.history("img-1")
    # Explicit sync, and remote mode's writes and reads.
    # And the resource ledger's paths (issue 27): a record, a listing, a collection.
    for tool, args in (
        ("sync-cloud", ["push", "img-1"]),
        ("sync-cloud", ["pull", "img-1"]),
        ("sync-cloud", ["status"]),
        ("update-state", ["img-1", "start", "5"]),
        ("check-state", ["img-1"]),
        ("update-state", ["img-1", "resource", "add", "disk", "vol-1", "--state", "0"]),
        ("check-state", ["img-1", "--resources", "--refresh"]),
        ("monitor", ["gc", "--dry-run"]),
    ):
        r = w.run(tool, *args, "--json", check=17)
        err = json.loads(r.stdout)["error"]
        assert err["kind"] == "remote" and "s3://builds/state" in err["message"], err
        assert "test" not in err["message"].split("s3://")[0], err  # no credentials echoed
    assert local.history("img-1") == before


def test_remote_mode_never_double_starts_and_loses_no_write(server: Server, tmp_path: Path) -> None:
    build = f"rm-{server.name}"
    first = Worker(tmp_path, "first", server.url, server.env, remote_mode=True)
    first.run("init-state", build, "--cloud", "aws", "--image", "rhel9")
    # Fresh machines (fresh databases) all start state 5 at once: exactly one does.
    workers = [Worker(tmp_path, f"s{i}", server.url, server.env, remote_mode=True) for i in range(5)]
    procs = [w.spawn("update-state", build, "start", "5", "--owner", f"w{i}") for i, w in enumerate(workers)]
    codes = [p.wait(timeout=BOUND) for p in procs]
    assert sorted(codes) == [0] + [11] * 4, codes
    # Then they all write at once: every write lands, serials stay contiguous.
    workers = [Worker(tmp_path, f"m{i}", server.url, server.env, remote_mode=True) for i in range(6)]
    procs = [w.spawn("update-state", build, "meta", f"w{i}=done") for i, w in enumerate(workers)]
    assert [p.wait(timeout=BOUND) for p in procs] == [0] * 6
    report = json.loads(first.run("check-state", build, "--json", "--history", check=11).stdout)
    assert all(report["metadata"][f"w{i}"] == "done" for i in range(6)), report["metadata"]
    assert [e["serial"] for e in report["history"]] == list(range(1, 9))


def test_python_api_in_remote_mode(tmp_path: Path) -> None:
    import buildstate

    remote = f"file://{tmp_path / 'remote'}"
    a = buildstate.Store(tmp_path / "a.db", remote=remote)
    a.init("py-1", "aws", "rhel9")
    a.start("py-1", 5)
    # Another machine (database) sees the running state through the remote.
    b = buildstate.Store(tmp_path / "b.db", create=False, remote=remote)
    report = b.decide("py-1")
    assert report["decision"] == "busy" and report["lease_owner"] == a.owner
    with pytest.raises(buildstate.LeasedError):
        b.start("py-1", 5)
    a.complete("py-1", 5)
    assert b.decide("py-1")["next_state"] == 10
    b.start("py-1", 10)
    b.complete("py-1", 10)
    assert a.decide("py-1")["current_state"] == 10


class FaultyProxy:
    """An HTTP proxy on 127.0.0.1 in front of an S3 server that passes everything through,
    except that the next conditional PUT (If-Match / If-None-Match) it is armed for reaches
    the server and then its answer is lost: `drop` resets the connection instead of
    answering, `delay` answers only after the client has given up, `cut` sends the status
    line and half the headers, then resets, and `retried` stands for a client library that
    retried after a lost answer: the request reaches the server twice and the client gets
    the second answer (412: the first one changed the object)."""

    def __init__(self, upstream: int) -> None:
        import http.client
        import struct

        proxy = self
        self.armed: str | None = None
        self.faults = 0
        self.lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _reset(self) -> None:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                def forward() -> tuple[http.client.HTTPResponse, bytes]:
                    up = http.client.HTTPConnection("127.0.0.1", upstream, timeout=30)
                    up.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for k, v in self.headers.items():
                        up.putheader(k, v)
                    up.endheaders(body)
                    resp = up.getresponse()
                    return resp, resp.read()

                resp, data = forward()
                conditional = self.command == "PUT" and ("If-Match" in self.headers or "If-None-Match" in self.headers)
                with proxy.lock:
                    fault = proxy.armed if conditional else None
                    if fault:
                        proxy.armed = None
                        proxy.faults += 1
                if fault == "drop":
                    return self._reset()
                if fault == "delay":
                    time.sleep(6)  # past the client's BUILDSTATE_REMOTE_TIMEOUT
                    return self._reset()
                if fault == "retried":
                    resp, data = forward()
                    assert resp.status in (409, 412), resp.status
                if fault == "cut":
                    self.wfile.write(f"HTTP/1.1 {resp.status} OK\r\nETag: ".encode())
                    self.wfile.flush()
                    return self._reset()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _any

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def arm(self, fault: str) -> None:
        with self.lock:
            self.armed = fault

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def moto_behind_a_faulty_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FaultyProxy, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("moto-proxy")
    port = free_port()
    proc = start(moto_command(port), port, tmp, "moto_server")
    make_bucket(port, "builds")
    proxy = FaultyProxy(port)
    try:
        yield proxy, dict(s3_env(proxy.port), BUILDSTATE_REMOTE_TIMEOUT="3s")
    finally:
        proxy.close()
        stop(proc)


@pytest.mark.parametrize("fault", ["drop", "delay", "cut", "retried"])
def test_a_write_whose_answer_was_lost_is_reported_once_as_written(fault: str, moto_behind_a_faulty_proxy: tuple[FaultyProxy, dict[str, str]], tmp_path: Path) -> None:
    proxy, env = moto_behind_a_faulty_proxy
    build = f"lost-{fault}"
    w = Worker(tmp_path, "w", "s3://builds/state", env, remote_mode=True)
    other = Worker(tmp_path, "other", "s3://builds/state", env, remote_mode=True)

    def armed(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        before = proxy.faults
        proxy.arm(fault)
        r = w.run(tool, *args, check=None)
        assert proxy.faults == before + 1, "the fault was not injected"
        assert r.returncode == 0, f"{tool} {args}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r

    armed("init-state", build, "--cloud", "aws", "--image", "rhel9")
    armed("update-state", build, "start", "5", "--owner", "W1")
    armed("update-state", build, "fail", "5", "--owner", "W1", "--error", "connection timed out")
    history = other.history(build)
    kinds = [(e["kind"], e.get("attempt")) for e in history]
    # Each write recorded once: no takeover of our own lease, no second attempt, and the
    # failure recorded though its answer was lost.
    assert kinds == [("init", None), ("start", 1), ("fail", 1)], kinds
    assert [e["serial"] for e in history] == [1, 2, 3]
    assert history[1]["owner"] == "W1" and history[1]["write_id"] != history[2]["write_id"]

    # sync-cloud push, the same: a second database writes locally and pushes.
    b = Worker(tmp_path, "b", "s3://builds/state", env)
    b.run("sync-cloud", "pull", build)
    b.run("update-state", build, "meta", "note=pushed")
    before = proxy.faults
    proxy.arm(fault)
    r = b.run("sync-cloud", "push", build, "--json", check=None)
    assert proxy.faults == before + 1
    assert r.returncode == 0 and json.loads(r.stdout)["outcome"] == "pushed", r.stdout + r.stderr
    assert b.run("sync-cloud", "status", "--json").stdout.count("in_sync") == 1
    assert other.history(build)[-1]["message"] == "note=pushed"


def test_remote_mode_measures_the_clock_against_the_object_store(server: Server, tmp_path: Path) -> None:
    """The object store's own time (its Date header) is the reference: a worker whose
    clock runs 10 minutes ahead or 2 hours behind is refused (exit 20), nothing written."""
    build = f"clock-{server.name}"
    a = Worker(tmp_path, "a", server.url, server.env, remote_mode=True)
    a.run("init-state", build, "--cloud", "aws", "--image", "rhel9")
    a.run("update-state", build, "start", "5", "--owner", "A", "--lease-ttl", "5m")
    before = a.history(build)
    assert shutil.which("faketime"), "faketime (Debian's package) is needed: scripts/test installs it"
    b = Worker(tmp_path, "b", server.url, server.env, remote_mode=True)
    for offset, args in (("+10m", ("update-state", build, "start", "5", "--owner", "B")), ("-2h", ("check-state", build))):
        r = subprocess.run(["faketime", "-f", offset, *b.argv(args[0], args[1:])], env=dict(b.env, FAKETIME_DONT_FAKE_MONOTONIC="1"), capture_output=True, text=True, timeout=BOUND, check=False)
        assert r.returncode == 20, (offset, r.returncode, r.stderr)
        assert ("ahead of" if offset.startswith("+") else "behind") in r.stderr, r.stderr
    assert a.history(build) == before
    b.run("check-state", build, check=11)


def test_task_results_in_remote_mode_go_through_the_remote(tmp_path: Path) -> None:
    """Task results (the callback's, Store.task) are remote-mode writes like any other:
    another machine writing meanwhile does not make the worker's next transition diverge,
    and the results are on the remote for everyone."""
    import buildstate

    remote = tmp_path / "remote"
    a = buildstate.Store(tmp_path / "a.db", remote=f"file://{remote}")
    a.init("py-2", "aws", "rhel9")
    a.start("py-2", 5)
    a.task("py-2", "install packages", "h1", "ok", state=5)
    a.flush()
    b = buildstate.Store(tmp_path / "b.db", create=False, remote=f"file://{remote}")
    b.meta("py-2", {"ami_id": "ami-1"})
    a.task("py-2", "harden sshd", "h1", "changed", state=5)
    a.flush()
    a.complete("py-2", 5)
    snapshot = json.loads((remote / "builds" / "py-2.json").read_text())
    kinds = [e["kind"] for e in snapshot["events"]]
    assert kinds == ["init", "start", "task", "meta", "task", "complete"], kinds
    assert [e["serial"] for e in snapshot["events"]] == list(range(1, 7))
    assert b.decide("py-2")["current_state"] == 5


def test_debug_diagnostics_show_each_remote_request_and_no_secret(broken_remotes: dict[str, int], tmp_path: Path) -> None:
    """BUILDSTATE_LOG=debug (issue 28): every request to an S3 remote (moto) with its
    method, key, outcome and milliseconds, the database lock wait, object_store's own
    retries against a server answering 500; never a credential or the snapshot key."""
    port = free_port()
    proc = start(moto_command(port), port, tmp_path, "moto_server")
    try:
        make_bucket(port, "builds")
        secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
        key = "diagnostics-snapshot-key-0123456789"
        env = dict(s3_env(port), AWS_SECRET_ACCESS_KEY=secret, BUILDSTATE_SNAPSHOT_KEY=key, BUILDSTATE_LOG="debug")
        w = Worker(tmp_path, "w", "s3://builds/state", env, remote_mode=True)
        w.run("init-state", "img-1", "--cloud", "aws", "--image", "rhel9")
        r = w.run("update-state", "img-1", "start", "5")
        log = r.stderr
        # This copy is the one init-state wrote there: a conditional read, nothing sent back.
        assert re.search(r"DEBUG buildstate::remote: GET \(if none match\) state/builds/img-1\.json at s3://builds/state: not modified, \d+ ms", log), log
        assert re.search(r"PUT \(if match\) state/builds/img-1\.json at s3://builds/state: written, ETag .*, \d+ ms", log), log
        assert re.search(r"buildstate::store: build img-1: the database's write lock taken after \d+ ms", log), log
        assert secret not in log and key not in log
        # object_store's retries against a server that answers 500, redacted like the rest.
        bad = Worker(tmp_path, "b", "s3://builds/state", dict(s3_env(broken_remotes["500"]), AWS_SECRET_ACCESS_KEY=secret, BUILDSTATE_LOG="debug", BUILDSTATE_REMOTE_TIMEOUT="3s"), remote_mode=True)
        r = bad.run("check-state", "img-1", check=17)
        assert "retry" in r.stderr and "500" in r.stderr, r.stderr
        assert secret not in r.stderr
    finally:
        stop(proc)
