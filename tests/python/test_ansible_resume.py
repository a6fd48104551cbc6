"""The callback as an experienced Ansible user drives it (issue 15), with real
ansible-playbook: a re-run resumes, a state completes only when its play did work, the
state number is resolved as Ansible resolves variables, check mode records nothing, and
a rolling play's batches are one state."""

from __future__ import annotations

import re

import signal
import subprocess
import time
from pathlib import Path

import buildstate

from conftest import BUILD, base_env, debug_task, kinds, play, playbook_command, sleeping, write_playbook

LOCALS = "h1 ansible_connection=local\nh2 ansible_connection=local\nh3 ansible_connection=local\n"


def run(tmp_path: Path, text: str, env: dict[str, str], *extra: str, inventory: str | None = None) -> subprocess.CompletedProcess[str]:
    playbook, inv = write_playbook(tmp_path, text, *([inventory] if inventory else []))
    return subprocess.run([*playbook_command(playbook, inv), *extra], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)


def transitions(store: buildstate.Store) -> list[tuple]:
    return [(e["kind"], e["state"], e["attempt"]) for e in store.events(BUILD) if e["kind"] in ("start", "complete", "fail", "interrupt", "takeover")]


SLOW_MIDDLE = (
    play("configure base", 15, debug_task("base task"))
    + play("configure users", 20, "    - name: users task\n      ansible.builtin.command: sleep {{ lookup('env', 'SLOW') | default('0', true) }}\n")
    + play("configure packages", 25, debug_task("packages task"))
)


def test_an_interrupted_playbook_resumes_when_run_again(tmp_path: Path, db: Path, store: buildstate.Store) -> None:
    playbook, inv = write_playbook(tmp_path, SLOW_MIDDLE)
    proc = subprocess.Popen(playbook_command(playbook, inv), env=base_env(db, SLOW="60"), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    # The signal goes in once the task's `sleep` runs: see `sleeping`.
    while not (store.decide(BUILD)["active_state"] == 20 and sleeping(db)):
        assert proc.poll() is None and time.monotonic() < deadline, "state 20's task never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError("ansible-playbook did not end within 60 s of SIGINT:\n" + out + err) from None
    assert store.decide(BUILD)["decision"] == "retry"

    # The same playbook again: 15 is done (one line, nothing recorded), 20 resumes, 25 runs.
    r = run(tmp_path, SLOW_MIDDLE, base_env(db))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "state 15 is already completed" in out and "goes on without recording" not in out, out
    assert store.decide(BUILD)["current_state"] == 25
    assert transitions(store)[-8:] == [
        ("start", 15, 1), ("complete", 15, 1),
        ("start", 20, 1), ("interrupt", 20, 1),
        ("start", 20, 2), ("complete", 20, 2),
        ("start", 25, 1), ("complete", 25, 1),
    ], transitions(store)
    # A third run: everything is done, nothing is recorded, and it says so for each play.
    before = store.events(BUILD)
    r = run(tmp_path, SLOW_MIDDLE, base_env(db))
    assert r.returncode == 0 and (r.stdout + r.stderr).count("is already completed") == 3, r.stdout + r.stderr
    assert [e for e in store.events(BUILD) if e["kind"] != "task"] == [e for e in before if e["kind"] != "task"]


def test_a_documented_pre_task_skips_the_tasks_of_plays_already_done(tmp_path: Path, db: Path, store: buildstate.Store) -> None:
    # The block of docs/ansible.md, as written there.
    doc = (Path(__file__).resolve().parents[2] / "docs" / "ansible.md").read_text()
    guard = re.search(r"```yaml\n(  pre_tasks:\n.*?)```", doc, re.S).group(1)
    text = (
        play("configure base", 15, "    - name: base task\n      ansible.builtin.command: touch base-ran\n").replace("  tasks:\n", guard + "  tasks:\n")
        + play("configure users", 20, "    - name: users task\n      ansible.builtin.command: touch users-ran\n").replace("  tasks:\n", guard + "  tasks:\n")
    )
    store.start(BUILD, 15)
    store.complete(BUILD, 15)
    env = base_env(db)
    env["PATH"] = str(Path(__file__).resolve().parents[2] / "target" / "debug") + ":" + env["PATH"]
    r = run(tmp_path, text, env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (tmp_path / "base-ran").exists(), "the task of a completed state ran"
    assert (tmp_path / "users-ran").exists()
    assert store.decide(BUILD)["current_state"] == 20


THREE = (
    play("configure base", 15, "    - name: t15\n      ansible.builtin.debug: {msg: a}\n      tags: [a]\n")
    + play("configure users", 20, "    - name: t20\n      ansible.builtin.debug: {msg: b}\n      tags: [b]\n", hosts="h1")
    + play("configure packages", 25, "    - name: t25\n      ansible.builtin.debug: {msg: c}\n      tags: [b]\n", hosts="h2")
)


def test_a_play_that_runs_no_task_records_nothing_and_says_so(tmp_path: Path, db: Path, store: buildstate.Store) -> None:
    inventory = "localhost ansible_connection=local\nh1 ansible_connection=local\nh2 ansible_connection=local\n"
    # --start-at-task: play 15 runs none of its tasks.
    r = run(tmp_path, THREE, base_env(db), "--start-at-task", "t20", inventory=inventory)
    out = r.stdout + r.stderr
    assert "play 'configure base' ran no task: state 15 is not recorded" in out, out
    assert ("start", 15, 1) not in transitions(store) and ("complete", 15, 1) not in transitions(store)
    # --tags a: only 15 has a task left; 20 and 25 are not recorded.
    r = run(tmp_path, THREE, base_env(db), "--tags", "a", inventory=inventory)
    assert r.returncode == 0, r.stdout + r.stderr
    assert transitions(store)[-2:] == [("start", 15, 1), ("complete", 15, 1)], transitions(store)
    assert store.decide(BUILD)["current_state"] == 15
    # --limit localhost: plays on h1 and h2 match no host.
    r = run(tmp_path, THREE, base_env(db), "--limit", "localhost", inventory=inventory)
    out = r.stdout + r.stderr
    assert "ran no task: state 20 is not recorded" in out and "ran no task: state 25 is not recorded" in out, out
    assert store.decide(BUILD)["current_state"] == 15


def test_the_state_number_is_resolved_as_ansible_resolves_variables(tmp_path: Path, db: Path, store: buildstate.Store) -> None:
    (tmp_path / "state15.yml").write_text("buildstate_state: 15\n")
    text = (
        "- name: from vars_files\n  hosts: localhost\n  gather_facts: false\n  vars_files: [state15.yml]\n  tasks:\n" + debug_task("a")
        + "- name: templated\n  hosts: localhost\n  gather_facts: false\n  vars:\n    base: 10\n    buildstate_state: '{{ base + 10 }}'\n  tasks:\n" + debug_task("b")
        + "- name: not a number\n  hosts: localhost\n  gather_facts: false\n  vars:\n    buildstate_state: soon\n  tasks:\n" + debug_task("c")
        + play("still recorded", 25, debug_task("d"))
    )
    r = run(tmp_path, text, base_env(db))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "must be a state number from 0 to 100, not 'soon'" in out, out
    assert transitions(store)[-6:] == [("start", 15, 1), ("complete", 15, 1), ("start", 20, 1), ("complete", 20, 1), ("start", 25, 1), ("complete", 25, 1)], transitions(store)


def test_check_mode_and_listing_record_nothing(tmp_path: Path, db: Path, store: buildstate.Store) -> None:
    text = play("configure base", 15, debug_task("a")) + play("configure users", 20, debug_task("b"))
    before = store.events(BUILD)
    r = run(tmp_path, text, base_env(db), "--check")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "check mode" in r.stdout + r.stderr
    for flag in ("--syntax-check", "--list-tasks", "--list-hosts"):
        assert run(tmp_path, text, base_env(db), flag).returncode == 0
    # A play in check mode by itself records nothing either.
    checked = play("previewed", 15, debug_task("a")).replace("  gather_facts: false\n", "  gather_facts: false\n  check_mode: true\n")
    r = run(tmp_path, checked, base_env(db))
    assert r.returncode == 0 and "check mode, state 15 is not recorded" in r.stdout + r.stderr, r.stdout + r.stderr
    assert store.events(BUILD) == before
    # The next real run is not refused as moving backwards.
    r = run(tmp_path, text, base_env(db))
    assert r.returncode == 0 and store.decide(BUILD)["current_state"] == 20, r.stdout + r.stderr


def test_a_rolling_play_is_one_state_over_its_batches(tmp_path: Path, db: Path, store: buildstate.Store) -> None:
    state = 15
    for serial in ("1", "'34%'", "[1, 2]"):
        text = (
            play(f"rolling {serial}", state, debug_task("rolling task"), hosts="all").replace("  gather_facts: false\n", f"  gather_facts: false\n  serial: {serial}\n")
            + play("after", state + 5, debug_task("after task"))
        )
        r = run(tmp_path, text, base_env(db), inventory=LOCALS + "localhost ansible_connection=local\n")
        assert r.returncode == 0, r.stdout + r.stderr
        assert transitions(store)[-4:] == [("start", state, 1), ("complete", state, 1), ("start", state + 5, 1), ("complete", state + 5, 1)], (serial, transitions(store))
        tasks = [t for t in kinds(store.events(BUILD), "task") if t["state"] == state]
        assert len(tasks) == 4, tasks  # every host's batch was recorded under the state
        state += 10
    # A failing batch fails the state (max_fail_percentage stops the play).
    text = play("rolling fail", state, "    - name: fails on h2\n      ansible.builtin.fail: {msg: broken}\n      when: inventory_hostname == 'h2'\n", hosts="h1,h2,h3").replace(
        "  gather_facts: false\n", "  gather_facts: false\n  serial: 1\n  max_fail_percentage: 0\n"
    )
    r = run(tmp_path, text, base_env(db), inventory=LOCALS)
    assert r.returncode != 0
    assert transitions(store)[-2:] == [("start", state, 1), ("fail", state, 1)], transitions(store)
    assert "h2" in store.decide(BUILD)["last_error"]
