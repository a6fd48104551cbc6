"""Real ansible-playbook runs on localhost with the buildstate callback enabled."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import buildstate
import buildstate.ansible

from conftest import (
    BIN,
    BUILD,
    base_env,
    debug_task,
    kinds,
    play,
    playbook_command,
    run_playbook,
    sleeping,
    write_playbook,
)

THREE_PLAYS = (
    play("configure base", 15, debug_task("base task"))
    + play("configure users", 20, debug_task("users task one") + debug_task("users task two"))
    + play("configure packages", 25, debug_task("packages task"))
)


def assert_three_states_completed(store: buildstate.Store) -> None:
    report = store.decide(BUILD)
    assert report["current_state"] == 25, report
    assert report["status"] == "pending" and report["next_state"] == 30
    events = store.events(BUILD)
    assert [(e["kind"], e["state"]) for e in events if e["kind"] in ("start", "complete")][-6:] == [
        ("start", 15), ("complete", 15), ("start", 20), ("complete", 20), ("start", 25), ("complete", 25),
    ]
    tasks = kinds(events, "task")
    assert [t["message"] for t in tasks] == [
        "ok on localhost: base task",
        "ok on localhost: users task one",
        "ok on localhost: users task two",
        "ok on localhost: packages task",
    ]
    assert [t["state"] for t in tasks] == [15, 20, 20, 25]
    assert all(t["duration_ms"] is not None and t["duration_ms"] >= 0 for t in tasks)
    assert all(t["actor"]["tool"] == "ansible" for t in tasks)


def test_plays_advance_successive_states_enabled_by_environment(tmp_path: Path, db: Path, store: buildstate.Store) -> None:
    r = run_playbook(tmp_path, THREE_PLAYS, base_env(db))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "buildstate" not in r.stderr, r.stderr
    assert_three_states_completed(store)


def test_enabled_through_ansible_cfg(tmp_path: Path, db: Path, store: buildstate.Store) -> None:
    (tmp_path / "ansible.cfg").write_text(
        "[defaults]\n"
        "callbacks_enabled = buildstate\n"
        f"callback_plugins = {buildstate.ansible.plugin_dir()}\n"
        "host_key_checking = False\n"
        "\n[callback_buildstate]\n"
        f"db = {db}\n"
        f"build_id = {BUILD}\n"
    )
    env = base_env(db)
    for k in ("ANSIBLE_CALLBACK_PLUGINS", "ANSIBLE_CALLBACKS_ENABLED", "BUILDSTATE_DB", "BUILDSTATE_BUILD_ID"):
        del env[k]
    env["ANSIBLE_CONFIG"] = str(tmp_path / "ansible.cfg")
    r = run_playbook(tmp_path, THREE_PLAYS, env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert_three_states_completed(store)


def test_whole_playbook_mapped_to_one_state(tmp_path: Path, db: Path, store: buildstate.Store) -> None:
    text = play("one", None, debug_task("a")) + play("two", None, debug_task("b"))
    r = run_playbook(tmp_path, text, base_env(db, BUILDSTATE_STATE="15"))
    assert r.returncode == 0, r.stdout + r.stderr
    report = store.decide(BUILD)
    assert report["current_state"] == 15 and report["next_state"] == 20
    assert [t["state"] for t in kinds(store.events(BUILD), "task")] == [15, 15]


def test_failing_task_fails_the_state_naming_host_task_and_message(tmp_path: Path, db: Path, store: buildstate.Store) -> None:
    text = play("configure base", 15, debug_task("fine")) + play(
        "configure users",
        20,
        "    - name: create the deploy user\n"
        "      ansible.builtin.fail:\n"
        "        msg: \"useradd couldn't create 'deploy' (password=hunter2)\"\n",
    )
    r = run_playbook(tmp_path, text, base_env(db))
    assert r.returncode == 2, r.stdout + r.stderr
    report = store.decide(BUILD)
    assert report["current_state"] == 15
    assert report["active_state"] == 20 and report["status"] == "waiting"
    assert report["last_error"] == (
        "play 'configure users' failed on 1 host(s): localhost: task 'create the deploy user': "
        # The value runs to the next blank: a ")" may be part of a password.
        "useradd couldn't create 'deploy' (password=[REDACTED]"
    )
    failed = [t for t in kinds(store.events(BUILD), "task") if t["message"].startswith("failed")]
    assert len(failed) == 1 and "hunter2" not in failed[0]["message"]


def test_rescued_block_and_ignored_errors_do_not_fail_the_state(tmp_path: Path, db: Path, store: buildstate.Store) -> None:
    tasks = (
        "    - name: risky block\n"
        "      block:\n"
        "        - name: fails inside the block\n"
        "          ansible.builtin.fail:\n"
        "            msg: first try failed\n"
        "      rescue:\n"
        "        - name: recover\n"
        "          ansible.builtin.debug:\n"
        "            msg: recovered\n"
        "    - name: allowed to fail\n"
        "      ansible.builtin.fail:\n"
        "        msg: nobody cares\n"
        "      ignore_errors: true\n"
    )
    r = run_playbook(tmp_path, play("configure base", 15, tasks), base_env(db))
    assert r.returncode == 0, r.stdout + r.stderr
    report = store.decide(BUILD)
    assert report["current_state"] == 15 and report["status"] == "pending", report
    statuses = [t["message"].split(" on ")[0] for t in kinds(store.events(BUILD), "task")]
    assert statuses == ["rescued", "ok", "ignored"]


def test_unreachable_host_is_a_transient_failure(tmp_path: Path, db: Path, store: buildstate.Store) -> None:
    inventory = (
        "localhost ansible_connection=local\n"
        "gone ansible_host=127.0.0.1 ansible_port=1 ansible_connection=ssh ansible_user=nobody "
        "ansible_ssh_common_args='-o ConnectTimeout=5 -o BatchMode=yes'\n"
    )
    ping = "    - name: ping\n      ansible.builtin.ping:\n"
    r = run_playbook(tmp_path, play("configure base", 15, ping, hosts="all"), base_env(db), inventory)
    assert r.returncode == 4, r.stdout + r.stderr
    report = store.decide(BUILD)
    assert report["active_state"] == 15 and report["last_category"] == "transient"
    assert report["status"] == "waiting"
    assert report["last_error"].startswith("play 'configure base' failed on 1 host(s): gone (unreachable): task 'ping':"), report["last_error"]
    assert any(t["message"].startswith("unreachable on gone") for t in kinds(store.events(BUILD), "task"))


def _interrupt(tmp_path: Path, db: Path, store: buildstate.Store, sig: signal.Signals) -> subprocess.CompletedProcess:
    text = play(
        "configure base",
        15,
        "    - name: long task\n      ansible.builtin.command: sleep 60\n",
    )
    playbook, inv = write_playbook(tmp_path, text)
    proc = subprocess.Popen(playbook_command(playbook, inv), env=base_env(db), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (store.decide(BUILD)["status"] == "running" and sleeping(db)):
        assert proc.poll() is None and time.monotonic() < deadline, "the task never started"
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_sigint_marks_the_state_interrupted(tmp_path: Path, db: Path, store: buildstate.Store) -> None:
    r = _interrupt(tmp_path, db, store, signal.SIGINT)
    assert r.returncode != 0
    report = store.decide(BUILD)
    interrupts = kinds(store.events(BUILD), "interrupt")
    assert [(e["state"], e["message"]) for e in interrupts] == [(15, "interrupted by SIGINT")], r.stdout + r.stderr
    assert report["status"] == "waiting" and report["decision"] == "retry"


def test_sigterm_marks_the_state_interrupted(tmp_path: Path, db: Path, store: buildstate.Store) -> None:
    r = _interrupt(tmp_path, db, store, signal.SIGTERM)
    assert r.returncode != 0
    interrupts = kinds(store.events(BUILD), "interrupt")
    assert [(e["state"], e["message"]) for e in interrupts] == [(15, "interrupted by SIGTERM")], r.stdout + r.stderr


def _locked(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")  # holds the write lock until rollback
    return conn


def test_locked_database_warns_once_and_the_playbook_runs_on(tmp_path: Path, db: Path, store: buildstate.Store) -> None:
    conn = _locked(db)
    try:
        r = run_playbook(tmp_path, THREE_PLAYS, base_env(db, BUILDSTATE_BUSY_TIMEOUT="200"))
    finally:
        conn.rollback()
    output = r.stdout + r.stderr
    assert r.returncode == 0, output
    assert output.count("[WARNING]: buildstate:") == 1, output
    assert "database is locked" in output
    assert "goes on without recording" in output
    assert store.decide(BUILD)["current_state"] == 10  # nothing recorded


def test_locked_database_fails_the_playbook_in_strict_mode(tmp_path: Path, db: Path, store: buildstate.Store) -> None:
    conn = _locked(db)
    try:
        r = run_playbook(tmp_path, THREE_PLAYS, base_env(db, BUILDSTATE_BUSY_TIMEOUT="200", BUILDSTATE_STRICT="true"))
    finally:
        conn.rollback()
    output = r.stdout + r.stderr
    assert r.returncode != 0, output
    assert "buildstate: could not start state 15" in output and "strict mode" in output, output
    assert "users task one" not in output  # stopped at the first play


def test_missing_database_warns_or_fails_in_strict_mode(tmp_path: Path) -> None:
    missing = tmp_path / "no-such" / "state.db"
    r = run_playbook(tmp_path, THREE_PLAYS, base_env(missing))
    output = r.stdout + r.stderr
    assert r.returncode == 0, output
    assert output.count("[WARNING]: buildstate:") == 1 and "no database at" in output, output
    assert "BUILDSTATE_CLOUD" in output  # says how the callback could create it
    assert not missing.exists() and not missing.parent.exists()
    r = run_playbook(tmp_path, THREE_PLAYS, base_env(missing, BUILDSTATE_STRICT="yes"))
    assert r.returncode != 0 and "no database at" in r.stdout + r.stderr


def test_unknown_build_warns(tmp_path: Path, db: Path, store: buildstate.Store) -> None:
    r = run_playbook(tmp_path, THREE_PLAYS, base_env(db, BUILDSTATE_BUILD_ID="nobody"))
    assert r.returncode == 0
    assert "build 'nobody' is not in" in r.stdout + r.stderr


def test_ansible_doc_renders_every_option() -> None:
    env = {"ANSIBLE_CALLBACK_PLUGINS": buildstate.ansible.plugin_dir(), "PATH": str(BIN), "ANSIBLE_NOCOLOR": "1"}
    r = subprocess.run([str(BIN / "ansible-doc"), "-t", "callback", "buildstate"], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    options = ("db", "build_id", "cloud", "image", "state", "strict", "record_tasks", "busy_timeout", "lease_ttl", "inputs_root", "force", "force_reason", "parent_wait")
    for option in options:
        assert f"\n- {option}  " in r.stdout, (option, r.stdout)
    for name in ("BUILDSTATE_DB", "BUILDSTATE_BUILD_ID", "BUILDSTATE_STATE", "BUILDSTATE_STRICT", "BUILDSTATE_INPUTS_ROOT", "BUILDSTATE_FORCE", "callback_buildstate", "buildstate_state", "buildstate_force"):
        assert name in r.stdout, name
    j = subprocess.run([str(BIN / "ansible-doc"), "-t", "callback", "--json", "buildstate"], env=env, capture_output=True, text=True, timeout=120, check=True)
    doc = json.loads(j.stdout)["buildstate"]["doc"]
    assert doc["type"] == "notification"
    assert sorted(doc["options"]) == sorted(options)
    for option in options:
        assert doc["options"][option]["description"], option
        assert doc["options"][option]["env"], option
        assert doc["options"][option]["ini"][0]["section"] == "callback_buildstate", option


def test_module_prints_the_plugin_directory() -> None:
    r = subprocess.run([str(BIN / "python"), "-m", "buildstate.ansible"], capture_output=True, text=True, check=True)
    assert (Path(r.stdout.strip()) / "buildstate.py").is_file()


def test_tasks_are_recorded_in_plays_without_a_state(tmp_path: Path, db: Path, store: buildstate.Store) -> None:
    text = play("no state", None, debug_task("unmapped task")) + play("base", 15, debug_task("mapped task"))
    r = run_playbook(tmp_path, text, base_env(db))
    assert r.returncode == 0, r.stdout + r.stderr
    tasks = kinds(store.events(BUILD), "task")
    assert [(t["state"], t["message"]) for t in tasks] == [
        (None, "ok on localhost: unmapped task"),
        (15, "ok on localhost: mapped task"),
    ]
    assert store.decide(BUILD)["current_state"] == 15


def test_record_tasks_off_records_states_only(tmp_path: Path, db: Path, store: buildstate.Store) -> None:
    r = run_playbook(tmp_path, THREE_PLAYS, base_env(db, BUILDSTATE_RECORD_TASKS="false"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert kinds(store.events(BUILD), "task") == []
    assert store.decide(BUILD)["current_state"] == 25


def test_a_missing_build_is_created_when_cloud_and_image_are_set(tmp_path: Path) -> None:
    db = tmp_path / "fresh" / "state.db"
    env = base_env(db, BUILDSTATE_CLOUD="aws", BUILDSTATE_IMAGE="rhel9")
    # The first play after init is state 5: state 0 was recorded as done by the init.
    text = play("kickstart", 5, debug_task("k")) + play("validate", 10, debug_task("v"))
    r = run_playbook(tmp_path, text, env)
    assert r.returncode == 0 and "[WARNING]" not in r.stdout + r.stderr, r.stdout + r.stderr
    report = buildstate.Store(db, create=False).decide(BUILD)
    assert (report["cloud"], report["image"], report["current_state"]) == ("aws", "rhel9", 10)
    # Run again with another identity: the existing build does not match, one warning.
    r = run_playbook(tmp_path, text, base_env(db, BUILDSTATE_CLOUD="gcp", BUILDSTATE_IMAGE="rhel9"))
    output = r.stdout + r.stderr
    assert output.count("[WARNING]: buildstate:") == 1 and "cloud 'aws', not 'gcp'" in output, output


LONG_PLAY = play("slow", 15, "    - name: wait\n      ansible.builtin.command: sleep 4\n")


def test_a_running_play_keeps_its_lease_and_a_killed_one_lets_go(tmp_path: Path, db: Path, store: buildstate.Store) -> None:
    env = base_env(db, BUILDSTATE_LEASE_TTL_SECONDS="1")
    playbook, inv = write_playbook(tmp_path, LONG_PLAY)
    proc = subprocess.Popen(playbook_command(playbook, inv), env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen = []
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            seen.append(store.decide(BUILD)["decision"])
            time.sleep(0.1)
        output = proc.communicate(timeout=60)[0]
    finally:
        proc.kill()
    # Four seconds under a one-second lease: only renewals kept the state busy from the
    # play's start to its end (before and after it, state 15 and then 20 are "resume").
    assert "busy" in seen, seen
    first, last = seen.index("busy"), len(seen) - 1 - seen[::-1].index("busy")
    assert set(seen[first : last + 1]) == {"busy"} and last - first >= 10, seen
    assert proc.returncode == 0, output
    assert store.decide(BUILD)["current_state"] == 15

    # A playbook killed outright (no handler runs) leaves a lease that runs out.
    text = play("slow", 20, "    - name: wait\n      ansible.builtin.command: sleep 60\n")
    playbook, inv = write_playbook(tmp_path, text)
    proc = subprocess.Popen(playbook_command(playbook, inv), env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while store.decide(BUILD)["decision"] != "busy":
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    while store.decide(BUILD)["decision"] != "resume":
        assert time.monotonic() < deadline, store.decide(BUILD)
        time.sleep(0.1)
    assert "presumed dead" in store.decide(BUILD)["reason"]
