"""Issue 29 through real ansible-playbook with the callback: an application build whose
state 10 waits for the base image build and consumes its `ami_id` holds its play until
the base has published; a role edit in the base reruns it with a new `ami_id`, and the
application becomes stale from state 10 and reruns only from there."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import buildstate
from conftest import base_env, playbook_command
from test_resources import TARGET, VENV_BIN

BASE_PLAN = """
name = "base-image"
[[state]]
id = 0
name = "init"
expected = "1s"
[[state]]
id = 5
name = "base-image"
expected = "5m"
[[state]]
id = 10
name = "publish"
expected = "5m"
"""

APP_PLAN = """
name = "app-image"
[[state]]
id = 0
name = "init"
expected = "1s"
[[state]]
id = 5
name = "prepare"
expected = "5m"
[[state]]
id = 10
name = "app-layer"
expected = "5m"
after = ["base-{image}:10"]
inputs = { builds = ["base-{image}:ami_id"] }
[[state]]
id = 15
name = "publish"
expected = "5m"
"""


def play(name: str, state: int | None, body: str) -> str:
    vars_ = f"  vars:\n    buildstate_state: {state}\n" if state is not None else ""
    return f"- name: {name}\n  hosts: localhost\n  gather_facts: false\n{vars_}{body}"


def debug(msg: str) -> str:
    return f"  tasks:\n    - name: {msg}\n      ansible.builtin.debug:\n        msg: {msg}\n"


def base_checkout(root: Path, version: str) -> Path:
    """The base image's playbook: its role makes the image (state 5); the image id is
    recorded as state 5's output once it completed; state 10 publishes."""
    tasks = root / "roles" / "base" / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    (tasks / "main.yml").write_text("- name: build the base image\n  ansible.builtin.debug:\n    msg: building\n")
    defaults = root / "roles" / "base" / "defaults"
    defaults.mkdir(parents=True, exist_ok=True)
    (defaults / "main.yml").write_text(f'base_version: "{version}"\n')
    record = (
        "  roles: [base]\n  tasks:\n    - name: record the image id\n      ansible.builtin.command:\n"
        "        argv: [update-state, base-rhel9, output, 'ami_id=ami-{{ base_version }}', --state, '5']\n"
        "      changed_when: true\n"
    )
    site = play("image id", None, record) + play("publish", 10, debug("publish the base"))
    (root / "site.yml").write_text(play("base image", 5, "  roles: [base]\n") + site)
    return root / "site.yml"


def app_checkout(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    site = play("prepare", 5, debug("prepare")) + play("app layer", 10, debug("the app layer")) + play("publish", 15, debug("publish the app"))
    (root / "site.yml").write_text(site)
    return root / "site.yml"


def env_of(db: Path, build: str) -> dict[str, str]:
    env = base_env(db, BUILDSTATE_BUILD_ID=build, BUILDSTATE_PARENT_WAIT="120")
    env["PATH"] = f"{TARGET}:{VENV_BIN}:{env['PATH']}"
    return env


def playbook(site: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    inv = site.parent / "hosts.ini"
    inv.write_text("localhost ansible_connection=local\n")
    return subprocess.Popen(playbook_command(site, inv), env=env, cwd=site.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(p: subprocess.Popen[str]) -> str:
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    return out


def events(store: buildstate.Store, build: str, kind: str, state: int) -> list[dict]:
    return [e for e in store.events(build) if e["kind"] == kind and e["state"] == state]


def test_the_app_waits_for_the_base_and_reruns_from_the_consuming_state_when_it_is_rebuilt(tmp_path: Path, db: Path) -> None:
    (tmp_path / "base.toml").write_text(BASE_PLAN)
    (tmp_path / "app.toml").write_text(APP_PLAN)
    store = buildstate.Store(db)
    store.init("base-rhel9", "aws", "rhel9", plan=tmp_path / "base.toml")
    store.init("app-42", "aws", "rhel9", plan=tmp_path / "app.toml")
    base_site = base_checkout(tmp_path / "base", "1")
    app_site = app_checkout(tmp_path / "app")

    # The app's playbook starts first: its state 10 play waits for the base.
    app = playbook(app_site, env_of(db, "app-42"))
    deadline = time.monotonic() + 60
    while not events(store, "app-42", "complete", 5):
        assert time.monotonic() < deadline and app.poll() is None, app.communicate()[0]
        time.sleep(0.2)
    time.sleep(3)  # it would have started state 10 by now if it did not wait
    assert not events(store, "app-42", "start", 10)
    assert app.poll() is None
    finish(playbook(base_site, env_of(db, "base-rhel9")))
    out = finish(app)
    assert "state 10 waits for other builds" in out, out
    assert "build base-rhel9 does not exist yet" not in out
    published = events(store, "base-rhel9", "complete", 10)[-1]["at"]
    started = events(store, "app-42", "start", 10)[-1]["at"]
    assert started >= published, (started, published)
    done = events(store, "app-42", "complete", 10)[-1]
    assert done["inputs"]["builds"] == {"base-rhel9:ami_id": "ami-1"}, done
    assert store.decide("app-42")["decision"] == "completed"

    # A role edit in the base: its state 5 is stale, the playbook reruns it (and 10)
    # with a new image id.
    base_checkout(tmp_path / "base", "2")
    d = store.decide("base-rhel9", inputs_root=tmp_path / "base")
    assert (d["decision"], d["next_state"]) == ("rerun", 5), d
    finish(playbook(base_site, env_of(db, "base-rhel9")))
    assert store.outputs("base-rhel9")["ami_id"]["value"] == "ami-2"

    # The app is stale from state 10, naming the parent, the output and both values.
    d = store.decide("app-42", inputs_root=tmp_path / "app")
    assert (d["decision"], d["next_state"]) == ("rerun", 10), d
    why = d["stale"][0]["reasons"][0]
    assert "base-rhel9" in why and "ami_id" in why and "'ami-1'" in why and "'ami-2'" in why, why
    out = finish(playbook(app_site, env_of(db, "app-42")))
    assert "state 5 is already completed" in out, out
    assert len(events(store, "app-42", "start", 5)) == 1
    assert len(events(store, "app-42", "start", 10)) == 2
    assert len(events(store, "app-42", "start", 15)) == 2
    assert events(store, "app-42", "complete", 10)[-1]["inputs"]["builds"] == {"base-rhel9:ami_id": "ami-2"}
    assert store.decide("app-42", inputs_root=tmp_path / "app")["decision"] == "completed"


def test_a_play_whose_parents_never_hold_stops_the_playbook_and_records_nothing(tmp_path: Path, db: Path) -> None:
    (tmp_path / "app.toml").write_text(APP_PLAN)
    store = buildstate.Store(db)
    store.init("app-43", "aws", "rhel9", plan=tmp_path / "app.toml")
    env = env_of(db, "app-43")
    env["BUILDSTATE_PARENT_WAIT"] = "3"
    began = time.monotonic()
    p = playbook(app_checkout(tmp_path / "app"), env)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 12, out
    assert 3 <= time.monotonic() - began < 60
    assert "still waits for other builds after 3s" in out and "base-rhel9" in out, out
    assert '"msg": "the app layer"' not in out, "the play's task ran"
    assert not events(store, "app-43", "start", 10)


def test_a_parent_wait_that_is_not_a_number_of_seconds_stops_the_playbook(tmp_path: Path, db: Path) -> None:
    """Ansible would drop the callback over a bad int option and run the plays without
    waiting; a bad BUILDSTATE_PARENT_WAIT stops the playbook instead."""
    (tmp_path / "app.toml").write_text(APP_PLAN)
    store = buildstate.Store(db)
    store.init("app-44", "aws", "rhel9", plan=tmp_path / "app.toml")
    site = app_checkout(tmp_path / "app")
    for bad in ("NaN", "-1", "1.5", "10s"):
        env = env_of(db, "app-44")
        env["BUILDSTATE_PARENT_WAIT"] = bad
        p = playbook(site, env)
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 2, (bad, out)
        assert f"parent_wait must be a whole number of seconds, 0 or more, not '{bad}'" in out, out
        assert '"msg": "prepare"' not in out, "a play ran"
    assert not store.events("app-44")[1:], "something was recorded"
