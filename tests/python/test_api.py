"""The Python API over the state crate."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import buildstate

from conftest import BUILD

CLI = Path(__file__).resolve().parents[2] / "target" / "debug"


def test_walk_states_and_read_history(db: Path) -> None:
    s = buildstate.Store(db)
    report = s.init(BUILD, "aws", "rhel9", meta={"git_sha": "1a2b"})
    assert report["created"] is True
    # init-state records state 0 as done: the next state is 5.
    assert report["decision"] == "resume" and report["next_state"] == 5
    assert report["current_state"] == 0
    assert s.init(BUILD, "aws", "rhel9", meta={"git_sha": "1a2b"})["created"] is False
    started = s.start(BUILD, 5)
    assert started["status"] == "running" and started["lease_owner"] == s.owner
    done = s.complete(BUILD, 5)
    assert (done["current_state"], done["serial"]) == (5, 3)
    s.meta(BUILD, {"ami_id": "ami-1"})
    decision = s.decide(BUILD)
    assert decision["decision"] == "resume" and decision["next_state"] == 10
    assert decision["metadata"] == {"ami_id": "ami-1", "git_sha": "1a2b"}
    assert [e["kind"] for e in s.events(BUILD)] == ["init", "start", "complete", "meta"]
    assert s.events(BUILD)[1]["actor"]["tool"] == "python"


def test_failure_messages_are_verbatim_and_redacted(db: Path, tmp_path: Path) -> None:
    plan = tmp_path / "plan.toml"
    plan.write_text('name = "p"\n[[state]]\nid = 0\nname = "a"\nexpected = "1m"\nwork = true\nretry = { policy = "immediate", max_attempts = 9 }\n')
    s = buildstate.Store(db)
    s.init(BUILD, "aws", "rhel9", plan=plan)
    big = "it's \"quoted\" '); DROP TABLE builds;-- ünïcödé\n" * 25_000
    assert len(big) > 1_000_000
    report = s.fail(BUILD, 0, big, category="transient", exit_code=3)
    assert report["last_error"] == big
    assert report["status"] == "waiting" and report["last_category"] == "transient"
    report = s.fail(BUILD, 0, "login failed password=hunter2")
    assert report["last_error"] == "login failed password=[REDACTED]"
    assert buildstate.redact("Authorization: Bearer abcdefgh12345") == "Authorization: Bearer [REDACTED]"


def test_errors_are_typed_with_exit_codes(db: Path, tmp_path: Path) -> None:
    s = buildstate.Store(db)
    with pytest.raises(buildstate.UnknownBuildError) as e:
        s.start("ghost", 0)
    assert e.value.exit_code == 3 and e.value.kind == "unknown_build"
    assert "init-state ghost" in str(e.value)
    s.init(BUILD, "aws", "rhel9")
    with pytest.raises(buildstate.ConflictError):
        s.init(BUILD, "gcp", "rhel9")
    with pytest.raises(buildstate.RefusedError) as e:
        s.start(BUILD, 7)
    assert e.value.exit_code == 5 and "not in its plan" in str(e.value)
    with pytest.raises(buildstate.InvalidInputError):
        s.meta(BUILD, {"bad-key": "x"})
    with pytest.raises(buildstate.InvalidInputError):
        s.fail(BUILD, 0, "x", category="sometimes")
    bad_plan = tmp_path / "plan.toml"
    bad_plan.write_text('name = "p"\n[[state]]\nid = 101\nname = "a"\nexpected = "1m"\n')
    with pytest.raises(buildstate.InvalidPlanError) as e:
        s.init("other", "aws", "x", plan=bad_plan)
    assert "state[0] (id 101).id" in str(e.value)
    assert issubclass(buildstate.RefusedError, buildstate.BuildstateError)
    # Nothing was written by any refused call.
    assert [e["kind"] for e in s.events(BUILD)] == ["init"]


def test_missing_database_is_not_created_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "state.db"
    with pytest.raises(buildstate.NoDatabaseError) as e:
        buildstate.Store(path, create=False)
    assert "no database at" in str(e.value) and e.value.exit_code == 9
    assert not path.exists()


def test_an_empty_file_is_no_database_as_every_command_says(tmp_path: Path) -> None:
    # Store(create=False) opens as the commands do: an empty file (a failed copy,
    # `: > x.db`) is refused and left as it was, not given a schema.
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    with pytest.raises(buildstate.NoDatabaseError) as e:
        buildstate.Store(path, create=False)
    assert e.value.exit_code == 9
    assert path.stat().st_size == 0


def test_start_checks_requires_as_run_state_does(db: Path, tmp_path: Path) -> None:
    plan = tmp_path / "plan.toml"
    flag = tmp_path / "ready"
    plan.write_text(
        'name = "p"\n[[state]]\nid = 5\nname = "db"\nexpected = "1s"\n'
        f'requires = "test -e {flag} || {{ echo \'no database yet\' >&2; exit 3; }}"\n'
    )
    s = buildstate.Store(db)
    s.init(BUILD, "aws", "rhel9", plan=plan)
    with pytest.raises(buildstate.BlockedError) as e:
        s.start(BUILD, 5)
    assert e.value.exit_code == 13 and e.value.kind == "blocked"
    assert "no database yet" in str(e.value)
    report = s.decide(BUILD)
    assert report["status"] == "blocked" and report["last_category"] == "prerequisite"
    assert "start" not in [ev["kind"] for ev in s.events(BUILD)]


def test_a_refusal_says_what_to_do_in_python(db: Path) -> None:
    s = buildstate.Store(db)
    s.init(BUILD, "aws", "rhel9")
    s.start(BUILD, 5)
    with pytest.raises(buildstate.RefusedError) as e:
        s.start(BUILD, 10)
    # The verb the Store has, as a call; not a command line.
    assert f'complete or fail it first (`store.complete("{BUILD}", 5)`)' in str(e.value), str(e.value)
    assert "update-state" not in str(e.value)


def test_unknown_build_decides_start(db: Path) -> None:
    report = buildstate.Store(db).decide("new-one")
    assert report["exists"] is False and report["decision"] == "start"


def test_task_events_and_context(db: Path) -> None:
    s = buildstate.Store(db, tool="ansible")
    s.init(BUILD, "aws", "rhel9")
    s.set_context({"ansible_run": "play 'base'"})
    s.task(BUILD, "install nginx", "web1", "failed", state=0, duration_ms=12, message="token=abc no package")
    event = s.events(BUILD)[-1]
    assert event["kind"] == "task"
    assert event["message"] == "failed on web1: install nginx: token=[REDACTED] no package"
    assert event["duration_ms"] == 12 and event["state"] == 0
    assert event["actor"]["context"]["ansible_run"] == "play 'base'"
    assert event["actor"]["tool"] == "ansible"
    # A task event records history only: the build itself is unchanged.
    assert s.decide(BUILD)["status"] == "pending"


def test_default_db_path_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert buildstate.default_db_path() == tmp_path / "buildstate" / "buildstate.db"


def test_task_results_are_queued_and_errors_surface_on_flush(db: Path) -> None:
    s = buildstate.Store(db)
    s.init(BUILD, "aws", "rhel9")
    for i in range(200):
        s.task(BUILD, f"task {i}", "h", "ok", state=0)
    s.flush()
    tasks = [e for e in s.events(BUILD) if e["kind"] == "task"]
    assert [t["message"] for t in tasks] == [f"ok on h: task {i}" for i in range(200)]
    s.task("ghost", "t", "h", "ok")
    with pytest.raises(buildstate.UnknownBuildError):
        s.flush()
    # A transition flushes first: the history keeps its order.
    s.start(BUILD, 5)
    s.task(BUILD, "last task", "h", "ok", state=5)
    s.complete(BUILD, 5)
    kinds = [e["kind"] for e in s.events(BUILD)]
    assert kinds[-2:] == ["task", "complete"]


def test_a_late_finish_after_a_takeover_is_fenced(db: Path) -> None:
    w1 = buildstate.Store(db)
    w1.init(BUILD, "aws", "rhel9")
    w1.start(BUILD, 5, lease_ttl_ms=300)
    # w1 stops renewing (its process froze) by dropping out of the picture: a second
    # Store in its place cannot finish w1's attempt while the lease lives...
    w2 = buildstate.Store(db)
    with pytest.raises(buildstate.LeasedError):
        w2.complete(BUILD, 5)
    assert w1.owner != w2.owner


def test_a_task_write_error_does_not_stop_the_transition(db: Path) -> None:
    s = buildstate.Store(db)
    s.init(BUILD, "aws", "rhel9")
    s.start(BUILD, 5)
    s.task("ghost", "a task", "host1", "ok", state=5)  # will fail: no such build
    done = s.complete(BUILD, 5)  # flushes the queue first, and goes ahead regardless
    assert done["current_state"] == 5
    with pytest.raises(buildstate.UnknownBuildError):
        s.flush()
    s.flush()  # the error was reported once


def test_decide_honours_buildstate_plan(db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = tmp_path / "p.toml"
    plan.write_text('name = "two"\n[[state]]\nid = 0\nname = "a"\nexpected = "1m"\n[[state]]\nid = 40\nname = "b"\nexpected = "1m"\n')
    monkeypatch.setenv("BUILDSTATE_PLAN", str(plan))
    s = buildstate.Store(db)
    assert s.decide("nobody")["next_state"] == 40
    assert s.init(BUILD, "aws", "rhel9")["plan"] == "two"


def test_every_error_kind_has_its_exception_class() -> None:
    # One table in the crate (src/error.rs) makes the classes: each is exported, in the
    # stubs, and raised with its kind and exit code.
    stubs = (Path(buildstate.__file__).parent / "_native.pyi").read_text()
    classes = [c for c in buildstate.__all__ if c.endswith("Error") and c != "BuildstateError"]
    assert len(classes) >= 20
    for name in classes:
        cls = getattr(buildstate, name)
        assert issubclass(cls, buildstate.BuildstateError), name
        assert "class %s(BuildstateError):" % name in stubs, name
    with pytest.raises(buildstate.InvalidInputError) as e:
        buildstate.Store(busy_timeout_ms=10**9)
    assert (e.value.kind, e.value.exit_code) == ("invalid_input", 8)


def test_busy_timeout_comes_from_the_environment_as_for_the_commands(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 26: the Store resolved BUILDSTATE_BUSY_TIMEOUT only to check it, then waited
    # its own 60 s default for a lock another writer holds.
    import subprocess
    import sys
    import time

    buildstate.Store(db).init(BUILD, "aws", "rhel9")
    monkeypatch.setenv("BUILDSTATE_BUSY_TIMEOUT", "300")
    s = buildstate.Store(db)
    # Another process holds the write lock (in this one, SQLite's locks would not see
    # each other: they are per process).
    hold = "import sqlite3, sys, time\nc = sqlite3.connect(sys.argv[1], isolation_level=None)\nc.execute('BEGIN IMMEDIATE')\nprint('locked', flush=True)\nsys.stdin.read()\n"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        began = time.monotonic()
        with pytest.raises(buildstate.DatabaseError) as e:
            s.start(BUILD, 5)
        waited = time.monotonic() - began
    finally:
        holder.communicate("")
    assert "busy timeout" in str(e.value)
    assert 0.25 <= waited < 10, waited
    # Nothing was written while the lock was held: the state starts now.
    assert s.start(BUILD, 5)["status"] == "running"
    assert [e["kind"] for e in s.events(BUILD)] == ["init", "start"]


def test_a_blocked_build_says_what_to_do_from_python(db: Path) -> None:
    # Issue 26: decide() used to tell a Python caller to run `update-state ... --reason`
    # as if it were the command line; the Store has no retry, so it says "from a shell".
    s = buildstate.Store(db)
    s.init(BUILD, "aws", "rhel9")
    s.start(BUILD, 5)
    s.fail(BUILD, 5, "the kickstart file is invalid", category="persistent")
    d = s.decide(BUILD)
    assert d["decision"] == "blocked"
    assert "then `update-state img-1 retry 5 --reason TEXT`, from a shell (or skip it)" in d["reason"], d["reason"]


def test_a_missing_reason_or_a_held_lease_says_what_to_do_from_python(db: Path) -> None:
    # Issue 26: these two said `pass --reason TEXT` and `pass --owner`, flags a Python
    # caller has no way to pass.
    s = buildstate.Store(db)
    s.init(BUILD, "aws", "rhel9")
    with pytest.raises(buildstate.InvalidInputError) as e:
        s.reset(BUILD, reason="  ")
    assert 'pass reason="TEXT"' in str(e.value) and "--reason" not in str(e.value), e.value
    s.start(BUILD, 5)
    other = buildstate.Store(db)
    with pytest.raises(buildstate.LeasedError) as e:
        other.start(BUILD, 5)
    assert f"is held by {s.owner}" in str(e.value), e.value
    assert "--owner" not in str(e.value), e.value


def test_outputs_are_recorded_read_and_fenced_from_python(db: Path) -> None:
    """Issue 27: what `update-state output` records, from the Python API, with the same
    rules: the active state by default, superseded by a new attempt, fenced by the
    attempt this Store started."""
    s = buildstate.Store(db)
    s.init(BUILD, "aws", "rhel9")
    with pytest.raises(buildstate.RefusedError, match="name the state"):
        s.output(BUILD, {"ami_id": "ami-0abc"})
    s.start(BUILD, 5)
    report = s.output(BUILD, {"ami_id": "ami-0abc", "note": "it's fine"})
    assert {k: o["value"] for k, o in report["outputs"].items()} == {"ami_id": "ami-0abc", "note": "it's fine"}
    with pytest.raises(buildstate.InvalidInputError, match="looks like a secret"):
        s.output(BUILD, {"key": "AKIAIOSFODNN7EXAMPLE"})
    s.complete(BUILD, 5)
    s.output(BUILD, {"checked": "yes"}, state=5)
    got = s.outputs(BUILD)
    assert (got["ami_id"]["state"], got["ami_id"]["attempt"], got["checked"]["attempt"]) == (5, 1, None)
    # The state this Store started moves on to another attempt behind its back (a
    # person failing and restarting it under the same lease owner): the output of the
    # attempt this Store ran is refused, not recorded against the new one.
    s.start(BUILD, 10)
    for args in (["fail", "10", "--error", "x", "--category", "transient"], ["retry", "10", "--reason", "now"], ["start", "10"]):
        subprocess.run([str(CLI / "update-state"), "--db", str(db), "--owner", s.owner, BUILD, *args], check=True, capture_output=True)
    with pytest.raises(buildstate.LeaseLostError):
        s.output(BUILD, {"late": "x"})
    assert "late" not in s.outputs(BUILD)
    assert s.output(BUILD, {"late": "x"}, state=5)["outputs"]["late"]["state"] == 5
    with pytest.raises(buildstate.UnknownBuildError):
        s.outputs("no-such-build")


def test_init_after_waits_for_a_parent_as_init_state_does(db: Path) -> None:
    s = buildstate.Store(db)
    with pytest.raises(buildstate.InvalidInputError) as e:
        s.init("app-1", "aws", "rhel9", after=["base-rhel9:5"])
    assert "there is no build 'base-rhel9'" in str(e.value)
    s.init("base-rhel9", "aws", "rhel9")
    s.init("app-1", "aws", "rhel9", after=["base-rhel9:5"])
    d = s.decide("app-1")
    assert (d["decision"], d["waiting_for"][0]["build_id"]) == ("wait", "base-rhel9"), d
    s.start("base-rhel9", 5)
    s.complete("base-rhel9", 5)
    assert s.decide("app-1")["decision"] == "resume"
    # A build that would wait for itself is refused, as by init-state.
    with pytest.raises(buildstate.InvalidInputError) as e:
        s.init("loop", "aws", "rhel9", after=["loop:5"])
    assert "would wait for itself" in str(e.value)


def test_init_reuse_from_reuses_what_an_identical_build_did(db: Path, tmp_path: Path) -> None:
    plan = tmp_path / "nightly.toml"
    plan.write_text(
        'name = "nightly"\n'
        '[[state]]\nid = 0\nname = "init"\nexpected = "1s"\n'
        '[[state]]\nid = 5\nname = "kickstart"\nexpected = "1m"\ninputs = { files = ["ks.cfg"] }\n'
        '[[state]]\nid = 10\nname = "tests"\nexpected = "1m"\ninputs = { meta = ["night"] }\n'
    )
    root = tmp_path / "src"
    root.mkdir()
    (root / "ks.cfg").write_text("lang en_US\n")
    s = buildstate.Store(db)
    s.init("n-1", "aws", "rhel9", plan=plan, meta={"night": "1"})
    s.start("n-1", 5)
    s.output("n-1", {"ami_id": "ami-1"})
    s.complete("n-1", 5, inputs_root=root)
    r = s.init("n-2", "aws", "rhel9", plan=plan, meta={"night": "2"}, reuse_from="n-1", inputs_root=root)
    assert [x["state"] for x in r["reuse"]["reused"]] == [5], r
    assert "state 10" in r["reuse"]["stopped"], r
    d = s.decide("n-2", inputs_root=root)
    assert (d["decision"], d["next_state"]) == ("resume", 10), d
    assert d["outputs"]["ami_id"]["value"] == "ami-1", d
    with pytest.raises(buildstate.InvalidInputError) as e:
        s.init("n-3", "aws", "rhel9", plan=plan, reuse_from="n-9")
    assert "there is no build 'n-9'" in str(e.value)


def test_revoke_withdraws_outputs_and_refuses_when_there_are_none(db: Path) -> None:
    s = buildstate.Store(db)
    s.init("base-1", "aws", "rhel9")
    with pytest.raises(buildstate.RefusedError) as e:
        s.revoke("base-1", "nothing made yet")
    assert "no current outputs" in str(e.value)
    s.start("base-1", 5)
    s.output("base-1", {"ami_id": "ami-1"})
    s.complete("base-1", 5)
    s.revoke("base-1", "bad kernel")
    assert s.outputs("base-1") == {}
    assert s.events("base-1")[-1]["kind"] == "revoke"
    assert s.events("base-1")[-1]["message"] == "bad kernel"
