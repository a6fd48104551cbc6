"""Issue 16 through real ansible-playbook: the callback records the files of the roles and
task files each play loaded, so a role edit makes its state stale without the plan
listing files; running the playbook again reruns that play (and the later ones); force
through the callback and through the Python API and the Concourse-free API paths."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import buildstate

from conftest import BUILD, base_env, play, playbook_command, write_playbook

ROOT = Path(__file__).resolve().parents[2]
CHECK_STATE = ROOT / "target" / "debug" / "check-state"


def role(tmp_path: Path, name: str, msg: str) -> None:
    tasks = tmp_path / "roles" / name / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    (tasks / "main.yml").write_text(f"- name: {name} role task\n  ansible.builtin.debug:\n    msg: {msg}\n")


PLAYBOOK = (
    "- name: configure base\n  hosts: localhost\n  gather_facts: false\n  vars:\n    buildstate_state: 15\n  roles: [base]\n"
    + "- name: configure users\n  hosts: localhost\n  gather_facts: false\n  vars:\n    buildstate_state: 20\n  roles: [users]\n"
    + play("configure packages", 25, "    - name: packages\n      ansible.builtin.import_tasks: packages.yml\n")
)


def run(tmp_path: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    playbook, inv = write_playbook(tmp_path, PLAYBOOK)
    r = subprocess.run([*playbook_command(playbook, inv), *extra], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def check_state(tmp_path: Path, db: Path) -> dict:
    r = subprocess.run([str(CHECK_STATE), BUILD, "--db", str(db), "--json", "--inputs-root", str(tmp_path)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def first_run(tmp_path: Path, db: Path) -> dict[str, str]:
    """Two roles and a task file, and the playbook's first run over them; its environment."""
    role(tmp_path, "base", "base")
    role(tmp_path, "users", "users")
    (tmp_path / "packages.yml").write_text("- name: packages task\n  ansible.builtin.debug:\n    msg: packages\n")
    env = base_env(db, BUILDSTATE_INPUTS_ROOT=str(tmp_path))
    run(tmp_path, env)
    return env


def steps(store: buildstate.Store) -> list[tuple]:
    return [(e["kind"], e["state"]) for e in store.events(BUILD) if e["kind"] in ("start", "complete", "rerun", "force")]


def test_a_role_edit_makes_its_state_stale_and_the_playbook_reruns_it(tmp_path: Path, db: Path, store: buildstate.Store) -> None:
    env = first_run(tmp_path, db)
    assert steps(store)[-6:] == [("start", 15), ("complete", 15), ("start", 20), ("complete", 20), ("start", 25), ("complete", 25)]
    recorded = {e["state"]: e["inputs"]["globs"] for e in store.events(BUILD) if e["kind"] == "complete" and e.get("inputs")}
    assert recorded[15] == ["roles/base/**"], recorded  # its task file is under the role
    assert "roles/users/**" in recorded[20], recorded
    assert "packages.yml" in recorded[25], recorded
    # Nothing changed: the decision is the recorded one.
    assert check_state(tmp_path, db)["decision"] == "resume"

    # Edit the users role: state 20 is stale, named; 25 follows it.
    role(tmp_path, "users", "users and groups")
    d = check_state(tmp_path, db)
    assert (d["decision"], d["next_state"]) == ("rerun", 20), d
    assert "state 20 configure" not in d["reason"]  # the plan's name for 20, not the play's
    assert d["stale"][0]["reasons"] == ["roles/users/tasks/main.yml changed"], d["stale"]
    assert [s["state"] for s in d["stale"]] == [20, 25]
    # The Python API's decide sees the same.
    assert store.decide(BUILD, inputs_root=str(tmp_path))["decision"] == "rerun"
    assert store.decide(BUILD, inputs=False)["decision"] == "resume"

    # Running the playbook again reruns 20 and 25, not 15.
    before = len(steps(store))
    r = run(tmp_path, env)
    assert "state 15 is already completed" in r.stdout + r.stderr
    assert steps(store)[before:] == [("rerun", 20), ("start", 20), ("complete", 20), ("start", 25), ("complete", 25)], steps(store)
    rerun = [e for e in store.events(BUILD) if e["kind"] == "rerun"][-1]
    assert "roles/users/tasks/main.yml changed" in rerun["message"]
    assert check_state(tmp_path, db)["decision"] == "resume"

    # An included task file counts as an input of its play.
    (tmp_path / "packages.yml").write_text("- name: packages task, edited\n  ansible.builtin.debug:\n    msg: packages\n")
    d = check_state(tmp_path, db)
    assert (d["decision"], d["next_state"], d["stale"][0]["reasons"]) == ("rerun", 25, ["packages.yml changed"]), d


def test_force_through_the_callback_and_the_api(tmp_path: Path, db: Path, store: buildstate.Store) -> None:
    env = first_run(tmp_path, db)
    before = len(steps(store))
    r = run(tmp_path, env, "-e", "buildstate_force=20")
    assert "forced state 20 and every later state to run again" in r.stdout + r.stderr, r.stdout
    assert steps(store)[before:] == [("force", 20), ("start", 20), ("complete", 20), ("start", 25), ("complete", 25)], steps(store)
    forced = [e for e in store.events(BUILD) if e["kind"] == "force"][-1]
    assert forced["message"] == "forced from ansible-playbook" and forced["actor"]["tool"] == "ansible"
    # The environment variable and reason work the same; an invalid value is reported.
    r = run(tmp_path, {**env, "BUILDSTATE_FORCE": "15", "BUILDSTATE_FORCE_REASON": "new base image"})
    assert [e for e in store.events(BUILD) if e["kind"] == "force"][-1]["message"] == "new base image"
    assert store.decide(BUILD, inputs_root=str(tmp_path))["current_state"] == 25
    before = store.events(BUILD)
    r = run(tmp_path, {**env, "BUILDSTATE_FORCE": "soon"})
    assert "buildstate_force must be a state number or 'all', not 'soon'" in r.stdout + r.stderr, r.stdout + r.stderr
    assert [e for e in store.events(BUILD) if e["kind"] != "task"] == [e for e in before if e["kind"] != "task"]
    # The API: force and reset, with the reason required.
    report = store.force(BUILD, 20, reason="users fixed")
    assert (report["current_state"], report["decision"]) == (15, "resume")
    report = store.reset(BUILD, reason="over")
    assert report["epoch"] == 2 and report["current_state"] == 0
    try:
        store.force(BUILD, None, reason=" ")
    except buildstate.InvalidInputError as e:
        assert e.exit_code == 8
    else:
        raise AssertionError("an empty reason was accepted")
