"""Fixtures for the Python and Ansible tests: a fresh database per test, a build at the
start of the Ansible states, and a helper that runs the real ansible-playbook."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import buildstate
import buildstate.ansible

BIN = Path(sys.executable).parent
BUILD = "img-1"
# Variables of ours and Concourse's that must not leak in from the developer's shell.
CLEARED = [k for k in os.environ if k.startswith(("BUILDSTATE_", "ANSIBLE_", "BUILD_"))]


@pytest.fixture(autouse=True)
def scratch_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the test starts keeps its scratch files in the test's own folder: Ansible's
    AnsiballZ payloads, which a play killed on purpose leaves behind, among them."""
    scratch = tmp_path / "scratch-tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def store(db: Path) -> buildstate.Store:
    """A store whose build has completed states 0 (at init), 5 and 10: next is 15 (ansible-base)."""
    s = buildstate.Store(db)
    s.init(BUILD, "aws", "rhel9")
    for state in (5, 10):
        s.complete(BUILD, state)
    return s


def base_env(db: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update(
        ANSIBLE_CALLBACK_PLUGINS=buildstate.ansible.plugin_dir(),
        ANSIBLE_CALLBACKS_ENABLED="buildstate",
        ANSIBLE_HOST_KEY_CHECKING="False",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_LOCALHOST_WARNING="False",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="False",
        BUILDSTATE_DB=str(db),
        BUILDSTATE_BUILD_ID=BUILD,
    )
    env.update(extra)
    return env


def write_playbook(tmp_path: Path, text: str, inventory: str = "localhost ansible_connection=local\n") -> tuple[Path, Path]:
    playbook = tmp_path / "site.yml"
    playbook.write_text(text)
    inv = tmp_path / "hosts.ini"
    inv.write_text(inventory)
    return playbook, inv


def playbook_command(playbook: Path, inventory: Path) -> list[str]:
    return [
        str(BIN / "ansible-playbook"),
        "-i",
        str(inventory),
        "-e",
        "ansible_python_interpreter=" + sys.executable,
        str(playbook),
    ]


def run_playbook(tmp_path: Path, text: str, env: dict[str, str], inventory: str | None = None) -> subprocess.CompletedProcess[str]:
    playbook, inv = write_playbook(tmp_path, text, *([inventory] if inventory else []))
    return subprocess.run(
        playbook_command(playbook, inv),
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def sleeping(db: Path) -> bool:
    """Whether a `sleep 60` started by a playbook on this database is running.

    A test that interrupts a playbook waits for this, not merely for the state to start:
    a SIGINT that lands while ansible-playbook forks its worker is raised inside the
    logging module's at-fork hook, where Python ignores it, and the play goes on."""
    for pid in Path("/proc").iterdir():
        try:
            if (pid / "cmdline").read_bytes() == b"sleep\x0060\x00" and f"BUILDSTATE_DB={db}".encode() in (pid / "environ").read_bytes():
                return True
        except OSError:
            continue
    return False


def play(name: str, state: int | None, tasks: str, hosts: str = "localhost") -> str:
    """One play in YAML; `tasks` is already indented by four spaces."""
    vars_ = f"  vars:\n    buildstate_state: {state}\n" if state is not None else ""
    return f"- name: {name}\n  hosts: {hosts}\n  gather_facts: false\n{vars_}  tasks:\n{tasks}"


def debug_task(name: str, msg: str = "ok") -> str:
    return f"    - name: {name}\n      ansible.builtin.debug:\n        msg: {msg}\n"


def kinds(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["kind"] == kind]
