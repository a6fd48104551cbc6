"""Slack alerts and monitor, against a local HTTP receiver that checks every payload the
way Slack documents it (incoming webhooks and chat.postMessage: Block Kit limits, the
bearer token, thread_ts) and can answer 200, 429 with Retry-After, 500, a refusal, or
hang. Nothing here asserts on speed; bounds are generous subprocess timeouts."""

from __future__ import annotations

import http.server
import json
import os
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slack_sdk.errors import SlackObjectFormationError
from slack_sdk.models.blocks import Block

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"
TOKEN = "xoxb-000-test-token-secret"
BLOCK_TYPES = {"header", "section", "context", "divider", "actions", "image", "rich_text"}
PLAN = """name = "alerting"
[[state]]
id = 0
name = "init"
expected = "1m"
[[state]]
id = 5
name = "kickstart"
expected = "1m"
retry = { policy = "never" }
[[state]]
id = 10
name = "publish"
expected = "1m"
"""


class Receiver(http.server.ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.mode = "ok"  # ok, 429, 500, refuse, refuse_blocks, hang
        self.retry_after = "1"
        self.messages: list[dict] = []
        self.problems: list[str] = []
        self.threads: dict[str, str] = {}  # ts -> build
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def alert_ids(self) -> list[int]:
        ids = []
        for m in self.messages:
            ctx = [b for b in m["blocks"] if b["type"] == "context"][-1]["elements"][0]["text"]
            ids.append(int(ctx.split("buildstate alert ")[1].split(" ")[0]))
        return ids


class Handler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def log_message(self, *args: object) -> None:
        pass

    def reply(self, code: int, body: str = "", headers: dict[str, str] | None = None) -> None:
        data = body.encode()
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def check(self, payload: dict, web_api: bool) -> list[str]:
        """What Slack documents for a message payload."""
        p = []
        if not isinstance(payload.get("text"), str) or not payload["text"]:
            p.append("text: a non-empty fallback is required with blocks")
        blocks = payload.get("blocks", [])
        if not isinstance(blocks, list) or not 0 < len(blocks) <= 50:
            p.append("blocks: 1 to 50")
        for b in blocks:
            t = b.get("type")
            if t not in BLOCK_TYPES:
                p.append(f"unknown block type {t}")
            if t == "header" and (b["text"]["type"] != "plain_text" or len(b["text"]["text"]) > 150):
                p.append("header: plain_text of at most 150 characters")
            if t == "section":
                if "text" in b and len(b["text"]["text"]) > 3000:
                    p.append("section text: at most 3000 characters")
                if len(b.get("fields", [])) > 10 or any(len(f["text"]) > 2000 for f in b.get("fields", [])):
                    p.append("section fields: at most 10, each at most 2000 characters")
                if "text" not in b and "fields" not in b:
                    p.append("section: text or fields")
            if t == "context" and not 0 < len(b["elements"]) <= 10:
                p.append("context: 1 to 10 elements")
            # Slack's own SDK models: every limit they know of.
            try:
                Block.parse(b).validate_json()
            except (SlackObjectFormationError, KeyError, TypeError) as e:
                p.append(f"slack_sdk: {t}: {e}")
        if web_api:
            if not payload.get("channel"):
                p.append("chat.postMessage: channel is required")
            ts = payload.get("thread_ts")
            if ts is not None and ts not in self.server.threads:
                p.append(f"thread_ts {ts} was never returned")
        return p

    def do_POST(self) -> None:
        srv = self.server
        length = int(self.headers.get("Content-Length", 0))
        raw = self.rfile.read(length)
        web_api = self.path.endswith("/chat.postMessage")
        with srv.lock:
            mode = srv.mode
        if mode == "hang":
            srv.release.wait(60)
            return
        if mode == "429":
            return self.reply(429, "rate_limited", {"Retry-After": srv.retry_after})
        if mode == "500":
            return self.reply(500, "internal error")
        if mode == "refuse":
            return self.reply(400, "invalid_payload")
        payload = json.loads(raw)
        if mode == "refuse_blocks" and "blocks" in payload:
            return self.reply(400, "invalid_blocks")
        problems = []
        if not self.headers.get("Content-Type", "").startswith("application/json"):
            problems.append("Content-Type must be application/json")
        if web_api and self.headers.get("Authorization") != f"Bearer {TOKEN}":
            problems.append("chat.postMessage: Authorization: Bearer <token> is required")
        if "blocks" in payload or mode != "refuse_blocks":
            problems += self.check(payload, web_api)
        elif not 0 < len(payload.get("text", "")) <= 4000:
            problems.append("a plain-text message: text of 1 to 4000 characters")
        with srv.lock:
            srv.problems += problems
            srv.messages.append(dict(payload, _at=time.monotonic(), _path=self.path))
            ts = f"{len(srv.messages)}.000100"
            if web_api:
                srv.threads[ts] = payload.get("thread_ts", ts)
        if web_api:
            self.reply(200, json.dumps({"ok": True, "channel": payload.get("channel"), "ts": ts}), {"Content-Type": "application/json"})
        else:
            self.reply(200, "ok")


@pytest.fixture
def slack() -> Iterator[Receiver]:
    srv = Receiver()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.shutdown()


class Env:
    def __init__(self, tmp: Path, slack: Receiver | None, web_api: bool = False) -> None:
        self.tmp = tmp
        self.db = tmp / "state.db"
        self.plan = tmp / "plan.toml"
        self.plan.write_text(PLAN)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("BUILDSTATE_", "BUILD_", "ATC_"))}
        self.env.update(HOME=str(tmp), BUILDSTATE_DB=str(self.db), BUILDSTATE_SLACK_RETRY_DELAY="1s")
        if slack is not None:
            if web_api:
                self.env.update(BUILDSTATE_SLACK_TOKEN=TOKEN, BUILDSTATE_SLACK_CHANNEL="#image-builds", BUILDSTATE_SLACK_API_URL=slack.url + "/api")
            else:
                self.env["BUILDSTATE_SLACK_WEBHOOK_URL"] = slack.url + "/services/T000/B000/webhooksecret"

    def run(self, tool: str, *args: str, check: int | None = 0, timeout: int = 60, **extra: str) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([str(TARGET / tool), *args], env=dict(self.env, **extra), capture_output=True, text=True, timeout=timeout, check=False)
        if check is not None:
            assert r.returncode == check, f"{tool} {args}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r

    def block(self, build: str, message: str = "kickstart failed: permission denied; password=hunter2") -> subprocess.CompletedProcess[str]:
        self.run("init-state", build, "--cloud", "aws", "--image", "rhel9", "--plan", str(self.plan))
        return self.run("update-state", build, "fail", "5", "--error", message)

    def alerts(self) -> list[tuple]:
        with sqlite3.connect(self.db) as c:
            return c.execute("SELECT id, kind, state, attempts, last_error FROM alerts ORDER BY id").fetchall()


def test_a_blocked_build_alerts_at_once_with_the_documented_payload(slack: Receiver, tmp_path: Path) -> None:
    env = Env(tmp_path, slack)
    concourse = {"ATC_EXTERNAL_URL": "https://ci.example.com", "BUILD_TEAM_NAME": "main", "BUILD_PIPELINE_NAME": "images", "BUILD_JOB_NAME": "bake", "BUILD_NAME": "42"}
    env.run("init-state", "img-1", "--cloud", "aws", "--image", "rhel9", "--plan", str(env.plan))
    r = env.run("update-state", "img-1", "fail", "5", "--error", "sshd said 'Permission denied'; password=hunter2", BUILDSTATE_REPORT_URL="https://reports.example.com/builds/", **concourse)
    assert slack.problems == [], slack.problems
    assert len(slack.messages) == 1, slack.messages
    m = slack.messages[0]
    text = json.dumps(m)
    assert m["text"] == "Build img-1 needs a person at state 5 (kickstart)"
    for want in ("Attempt*\\n1 of 1", "persistent", "Permission denied", "https://ci.example.com/teams/main/pipelines/images/jobs/bake/builds/42", "update-state"):
        assert want in text, want
    # The build's timeline is linked where the reports are published (docs/fleet.md).
    assert {"type": "mrkdwn", "text": "<https://reports.example.com/builds/img-1.html|Timeline of img-1>"} in [b.get("text") for b in m["blocks"]]
    # Secrets: redacted in the message; the webhook URL appears nowhere we write.
    assert "hunter2" not in text
    for out in (r.stdout, r.stderr, env.db.read_bytes().decode("latin-1")):
        assert "webhooksecret" not in out and "hunter2" not in out
    assert [a[1:3] for a in env.alerts()] == [("blocked", "delivered")]
    # BUILDSTATE_LOG=debug says each delivery, and still not the webhook's secret.
    env.block("img-log", message="token=hunter2 went wrong")
    r = env.run("monitor", "deliver", BUILDSTATE_LOG="debug")
    env.run("update-state", "img-log", "retry", "5", "--reason", "now", BUILDSTATE_LOG="debug")
    r = env.run("update-state", "img-log", "fail", "5", "--error", "again", BUILDSTATE_LOG="debug")
    lines = [l for l in r.stderr.splitlines() if "buildstate::slack" in l]
    assert lines and "delivered" in lines[0] and " ms" in lines[0], r.stderr
    assert "webhooksecret" not in r.stderr and "hunter2" not in r.stderr
    # A report URL that is not one: monitor deliver says so (exit 8).
    env.block("img-2")
    r = env.run("monitor", "deliver", check=8, BUILDSTATE_REPORT_URL="reports <here>")
    assert "BUILDSTATE_REPORT_URL" in r.stderr


def test_slack_down_never_blocks_and_every_alert_arrives_once_after(slack: Receiver, tmp_path: Path) -> None:
    env = Env(tmp_path, slack)
    for mode in ("500", "hang"):
        slack.mode = mode
        for i in range(3):
            # Each returns (exit 0) despite Slack: the budget bounds the wait; and says so.
            r = env.block(f"{mode}-{i}")
            assert "warning" in r.stderr and "not delivered yet" in r.stderr, r.stderr
            assert "webhooksecret" not in r.stderr
    assert slack.messages == []
    assert all(a[2] == "pending" for a in env.alerts()) and len(env.alerts()) == 6
    slack.release.set()
    slack.mode = "ok"
    deadline = time.monotonic() + 120
    while any(a[2] == "pending" for a in env.alerts()):
        assert time.monotonic() < deadline, env.alerts()
        env.run("monitor", "deliver", "--budget", "20s")
        time.sleep(0.5)
    assert sorted(slack.alert_ids()) == [a[0] for a in env.alerts()], "each alert exactly once"
    assert slack.problems == []
    # About one message a second to a channel (a lower bound: a slow machine only widens it).
    times = sorted(m["_at"] for m in slack.messages)
    assert all(b - a >= 0.9 for a, b in zip(times, times[1:])), times


def test_429_retry_after_is_honoured(slack: Receiver, tmp_path: Path) -> None:
    env = Env(tmp_path, None)
    env.block("img-1")
    env.env["BUILDSTATE_SLACK_WEBHOOK_URL"] = slack.url + "/services/T/B/x"
    slack.mode, slack.retry_after = "429", "2"
    env.run("monitor", "deliver", "--budget", "5s")
    (alert,) = env.alerts()
    assert alert[2] == "pending" and alert[3] == 0 and "retry after 2s" in alert[4], alert  # a 429 uses up no attempt
    slack.mode = "ok"
    env.run("monitor", "deliver", "--budget", "5s")
    assert env.alerts()[0][2] == "pending", "delivered before Retry-After passed"
    deadline = time.monotonic() + 60
    while env.alerts()[0][2] == "pending":
        assert time.monotonic() < deadline
        time.sleep(0.5)
        env.run("monitor", "deliver", "--budget", "5s")
    assert slack.alert_ids() == [alert[0]]


def test_two_deliverers_at_once_never_double_send(slack: Receiver, tmp_path: Path) -> None:
    env = Env(tmp_path, None)
    for i in range(6):
        env.block(f"img-{i}")
    env.env["BUILDSTATE_SLACK_WEBHOOK_URL"] = slack.url + "/services/T/B/x"
    procs = [subprocess.Popen([str(TARGET / "monitor"), "deliver", "--budget", "30s"], env=env.env) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    ids = slack.alert_ids()
    assert sorted(ids) == [a[0] for a in env.alerts()] and len(set(ids)) == len(ids) == 6, ids
    assert slack.problems == []


def test_a_refusal_is_given_up_and_reported(slack: Receiver, tmp_path: Path) -> None:
    env = Env(tmp_path, slack)
    slack.mode = "refuse"
    r = env.block("img-1")
    assert "given up" in r.stderr, r.stderr
    (alert,) = env.alerts()
    assert alert[2] == "gave_up" and "400" in alert[4], alert
    assert "1 given up" in env.run("monitor", "status").stdout
    metrics = env.run("monitor", "metrics").stdout
    assert "buildstate_alerts_gave_up 1" in metrics


def test_web_api_threads_each_build_and_keeps_the_token_secret(slack: Receiver, tmp_path: Path) -> None:
    env = Env(tmp_path, slack, web_api=True)
    env.block("img-1")
    r = env.run("update-state", "img-1", "cancel", "--reason", "wrong base image")
    assert slack.problems == [], slack.problems
    first, second = slack.messages
    assert first["_path"] == "/api/chat.postMessage" and first["channel"] == "#image-builds"
    assert "thread_ts" not in first and second["thread_ts"] == "1.000100"
    assert TOKEN not in r.stdout + r.stderr and TOKEN.encode() not in env.db.read_bytes()


def test_monitor_check_status_wait_and_metrics(tmp_path: Path) -> None:
    env = Env(tmp_path, None)
    env.run("init-state", "ok-1", "--cloud", "aws", "--image", "rhel9", "--plan", str(env.plan))
    assert env.run("monitor", "check").stdout == ""  # quiet when fine
    env.block("bad-1")
    # A state whose lease ran out with nobody taking over: stuck, alerted once per episode.
    env.run("init-state", "dead-1", "--cloud", "aws", "--image", "rhel9", "--plan", str(env.plan))
    env.run("update-state", "dead-1", "start", "5", "--lease-ttl", "1s")
    deadline = time.monotonic() + 60
    while "dead-1" not in env.run("monitor", "check", check=None).stdout:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    r = env.run("monitor", "check", "--json", check=13)
    findings = {f["build_id"]: f["what"] for f in json.loads(r.stdout)}
    assert findings == {"bad-1": "blocked", "dead-1": "stuck"}, findings
    env.run("monitor", "check", check=13)
    assert [a[1] for a in env.alerts()].count("stuck") == 1
    rows = json.loads(env.run("monitor", "status", "--json").stdout)
    assert {r["build_id"]: r["status"] for r in rows} == {"ok-1": "pending", "bad-1": "blocked", "dead-1": "running"}
    # wait: reached, needs a person, timeout.
    env.run("update-state", "ok-1", "start", "5")
    env.run("update-state", "ok-1", "complete", "5")  # started first: its duration is recorded
    assert json.loads(env.run("monitor", "wait", "ok-1", "--until", "5", "--timeout", "10s", "--json").stdout)["outcome"] == "reached"
    env.run("monitor", "wait", "bad-1", "--until", "completed", "--timeout", "10s", check=13)
    env.run("monitor", "wait", "ok-1", "--until", "completed", "--timeout", "1s", "--interval", "100ms", check=19)
    textfile = tmp_path / "node" / "buildstate.prom"
    textfile.parent.mkdir()
    env.run("monitor", "metrics", "--textfile", str(textfile))
    metrics = textfile.read_text()
    for line in ('buildstate_builds{status="blocked"} 1', 'buildstate_builds{status="running"} 1', "buildstate_alerts_pending 2"):
        assert line in metrics, metrics
    assert 'buildstate_state_duration_seconds_count{plan="alerting",state="5"} 1' in metrics
    assert [p.name for p in textfile.parent.iterdir()] == ["buildstate.prom"]  # no temp file left
    # Readable by a node_exporter that does not run as this user: 0666 less the umask.
    subprocess.run(["sh", "-c", 'umask 022; exec "$@"', "sh", str(TARGET / "monitor"), "metrics", "--textfile", str(textfile)], env=env.env, check=True, timeout=60)
    assert textfile.stat().st_mode & 0o777 == 0o644


def test_remote_mode_alerts_travel_with_the_build_and_each_is_sent_once(slack: Receiver, tmp_path: Path) -> None:
    """Slack is down while a remote-mode worker's states block; the worker's database is
    then thrown away (a Concourse container). Two cron hosts that never saw the builds run
    `monitor deliver` at once when Slack is back: each alert arrives exactly once."""
    remote = f"file://{tmp_path / 'remote'}"
    (tmp_path / "worker").mkdir()
    worker = Env(tmp_path / "worker", slack)
    worker.env["BUILDSTATE_REMOTE"] = remote
    slack.mode = "500"
    builds = [f"img-{i}" for i in range(4)]
    for b in builds:
        worker.block(b)  # exit 0: Slack's outage never fails the write
    assert slack.messages == []
    for suffix in ("", "-wal", "-shm"):
        Path(f"{worker.db}{suffix}").unlink(missing_ok=True)
    snap = json.loads((tmp_path / "remote" / "builds" / "img-0.json").read_text())
    assert [(a["kind"], a["state"]) for a in snap["alerts"]] == [("blocked", "pending")], snap.get("alerts")
    assert "webhooksecret" not in json.dumps(snap)

    slack.mode = "ok"
    hosts = []
    for name in ("cron-1", "cron-2"):
        (tmp_path / name).mkdir()
        h = Env(tmp_path / name, slack)
        h.env["BUILDSTATE_REMOTE"] = remote
        hosts.append(h)


    def states() -> list[str]:
        return [a["state"] for b in builds for a in json.loads((tmp_path / "remote" / "builds" / f"{b}.json").read_text())["alerts"]]

    # Retries the worker scheduled come due a few seconds apart: deliver until all are.
    deadline = time.monotonic() + 120
    while states() != ["delivered"] * len(builds):
        assert time.monotonic() < deadline, states()
        procs = [subprocess.Popen([str(TARGET / "monitor"), "deliver", "--budget", "10s"], env=h.env) for h in hosts]
        assert [p.wait(timeout=120) for p in procs] == [0, 0]
        time.sleep(0.5)
    sent = sorted(m["text"] for m in slack.messages)
    assert sent == sorted(f"Build {b} needs a person at state 5 (kickstart)" for b in builds), sent
    assert slack.problems == []
    # Delivered is recorded on the remote: nobody sends them again.
    hosts[0].run("monitor", "deliver", "--budget", "5s")
    assert len(slack.messages) == len(builds)
    snap = json.loads((tmp_path / "remote" / "builds" / "img-0.json").read_text())
    assert [(a["kind"], a["state"]) for a in snap["alerts"]] == [("blocked", "delivered")]


def test_a_remote_mode_cron_host_checks_and_delivers_stuck_alerts(slack: Receiver, tmp_path: Path) -> None:
    """Issue 17: `monitor check` with a remote on a host with no database finds a stuck
    build in its cache and queues the alert there; `monitor deliver` with the same remote
    sends it (the alerts that travel with builds first, then the host's own)."""
    remote = f"file://{tmp_path / 'remote'}"
    (tmp_path / "worker").mkdir()
    worker = Env(tmp_path / "worker", None)
    worker.env["BUILDSTATE_REMOTE"] = remote
    worker.run("init-state", "dead-1", "--cloud", "aws", "--image", "rhel9", "--plan", str(worker.plan))
    worker.run("update-state", "dead-1", "start", "5", "--lease-ttl", "1s")
    (tmp_path / "cron").mkdir()
    cron = Env(tmp_path / "cron", slack)
    cron.env["BUILDSTATE_REMOTE"] = remote
    deadline = time.monotonic() + 60
    while "dead-1" not in cron.run("monitor", "check", check=None).stdout:
        assert time.monotonic() < deadline, "the lease never expired"
        time.sleep(0.3)
    assert [a[1:3] for a in cron.alerts()] == [("stuck", "pending")]
    r = cron.run("monitor", "deliver", "--json")
    assert json.loads(r.stdout)["delivered"] == 1, r.stdout
    assert [m["text"] for m in slack.messages] == [m["text"] for m in slack.messages if "dead-1" in m["text"]] != []
    assert [a[1:3] for a in cron.alerts()] == [("stuck", "delivered")]


def _block_with_error_file(env: Env, build: str, error: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env.run("init-state", build, "--cloud", "aws", "--image", "rhel9", "--plan", str(env.plan))
    f = env.tmp / f"{build}.err"
    f.write_text(error, encoding="utf-8")
    return env.run("update-state", build, "fail", "5", "--error-file", str(f), **extra)


def test_markup_heavy_and_huge_errors_reach_slack_within_its_limits(slack: Receiver, tmp_path: Path) -> None:
    """Issue 25: an error tail heavy with <, > and & was cut, then escaped, past Slack's
    3,000 characters: 400 invalid_blocks, and the alert was given up."""
    env = Env(tmp_path, slack)
    errors = ["<&>" * 2000, "&" * 4000 + "\nlast line <b>", ("é漢🙂<&> " * 150_000)[:1_000_000]]
    for i, error in enumerate(errors):
        r = _block_with_error_file(env, f"img-{i}", error)
        assert "given up" not in r.stderr and "not delivered" not in r.stderr, r.stderr
    assert slack.problems == [], slack.problems
    assert len(slack.messages) == len(errors)
    assert all("blocks" in m for m in slack.messages)
    assert [a[2] for a in env.alerts()] == ["delivered"] * len(errors)


_texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=300)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(_texts, max_size=8), repeat=st.integers(1, 3000))
def test_every_payload_is_valid_block_kit_whatever_the_error_says(slack: Receiver, tmp_path_factory: pytest.TempPathFactory, chunks: list[str], repeat: int) -> None:
    """Random error texts (markup, multibyte, up to about 1 MB), each through a real
    update-state and a real delivery, validated by slack_sdk's Block Kit models."""
    env = Env(tmp_path_factory.mktemp("slack"), slack)
    before = len(slack.messages)
    error = "".join(chunks) * repeat
    if not error.strip():
        error = "failed"
    r = _block_with_error_file(env, "img-1", error[:1_000_000])
    assert slack.problems == [], slack.problems
    assert len(slack.messages) == before + 1, r.stderr
    assert [a[2] for a in env.alerts()] == ["delivered"]


def test_an_alert_refused_as_malformed_goes_again_as_plain_text(slack: Receiver, tmp_path: Path) -> None:
    env = Env(tmp_path, slack)
    slack.mode = "refuse_blocks"
    r = env.block("img-1")
    assert "given up" not in r.stderr, r.stderr
    (m,) = slack.messages
    assert "blocks" not in m and m["text"].startswith("Build img-1 needs a person at state 5 (kickstart)"), m
    assert "hunter2" not in m["text"] and "[REDACTED]" in m["text"], m
    assert [a[2] for a in env.alerts()] == ["delivered"]
    assert slack.problems == []


def test_a_link_from_the_environment_must_be_http(slack: Receiver, tmp_path: Path) -> None:
    env = Env(tmp_path, slack)
    env.run("init-state", "img-1", "--cloud", "aws", "--image", "rhel9", "--plan", str(env.plan))
    env.run("update-state", "img-1", "fail", "5", "--error", "boom", BUILD_URL="javascript:alert(document.cookie)")
    (m,) = slack.messages
    assert "javascript" not in json.dumps(m) and "Concourse build" not in json.dumps(m), m
    assert slack.problems == []
