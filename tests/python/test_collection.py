"""Issue 18: the Ansible side as a collection, buildstate.pipeline, built with
`ansible-galaxy collection build` and installed from the tarball with `ansible-galaxy
collection install`, as users do; then real ansible-playbook runs use its module, its
lookup and its callback against a real database, locally and through a file:// remote."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import buildstate

from conftest import BIN, BUILD

ROOT = Path(__file__).resolve().parents[2]
CHECK_STATE = ROOT / "target" / "debug" / "check-state"
INIT_STATE = ROOT / "target" / "debug" / "init-state"


@pytest.fixture(scope="module")
def collections(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("collection")
    built = subprocess.run([str(BIN / "ansible-galaxy"), "collection", "build", str(ROOT / "ansible" / "collection"), "--output-path", str(out)], capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    tarball = out / "buildstate-pipeline-0.1.0.tar.gz"
    assert tarball.is_file(), built.stdout
    path = out / "collections"
    installed = subprocess.run([str(BIN / "ansible-galaxy"), "collection", "install", str(tarball), "-p", str(path)], capture_output=True, text=True, check=False)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return path


def env_for(collections: Path, db: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUILDSTATE_", "ANSIBLE_"))}
    env.update(ANSIBLE_COLLECTIONS_PATH=str(collections), ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="False", ANSIBLE_INVENTORY_UNPARSED_WARNING="False", BUILDSTATE_DB=str(db), BUILDSTATE_BUILD_ID=BUILD)
    env.update(extra)
    return env


def playbook(tmp_path: Path, text: str, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "play.yml").write_text(text)
    cmd = [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter=" + str(BIN / "python"), str(tmp_path / "play.yml"), *extra]
    return subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)


def recap(out: str) -> dict[str, int]:
    line = next(l for l in out.splitlines() if l.startswith("localhost") and "ok=" in l)
    return {k: int(v) for k, v in (p.split("=") for p in line.split(":", 1)[1].split())}


def test_ansible_doc_renders_every_plugin_of_the_collection(collections: Path, db: Path) -> None:
    env = env_for(collections, db)
    for kind, name, options in [
        ("module", "buildstate.pipeline.state", {"build_id", "metadata", "transition", "build_state", "error", "category", "inputs", "inputs_root", "db", "remote"}),
        ("module", "buildstate.pipeline.resource", {"build_id", "db", "remote", "type", "id", "state", "props", "cleanup", "check", "build_state"}),
        ("lookup", "buildstate.pipeline.build", {"_terms", "build_id", "db", "remote", "report", "outputs", "inputs", "inputs_root", "default"}),
        ("callback", "buildstate.pipeline.buildstate", {"db", "build_id", "state", "inputs_root", "force"}),
    ]:
        text = subprocess.run([str(BIN / "ansible-doc"), "-t", kind, name], env=env, capture_output=True, text=True, check=False)
        assert text.returncode == 0 and "WARNING" not in text.stderr, text.stderr
        doc = json.loads(subprocess.run([str(BIN / "ansible-doc"), "-t", kind, "--json", name], env=env, capture_output=True, text=True, check=True).stdout)[name]
        assert options <= set(doc["doc"]["options"]), (name, sorted(doc["doc"]["options"]))
        if kind == "module":
            assert doc["doc"]["attributes"]["check_mode"]["support"] == "full"
            assert doc["doc"]["attributes"]["diff_mode"]["support"] == "full"
            assert doc["examples"] and doc["return"]


PLAY = """
- name: record and read
  hosts: localhost
  gather_facts: false
  tasks:
    - name: record the AMI
      buildstate.pipeline.state:
        metadata:
          ami_id: ami-0abc
          git_sha: "{{ sha }}"
    - name: state 15 is done, with its files
      buildstate.pipeline.state:
        transition: complete
        build_state: 15
        inputs: ["roles/**"]
    - name: read them back
      ansible.builtin.assert:
        that:
          - lookup('buildstate.pipeline.build', 'ami_id') == 'ami-0abc'
          - lookup('buildstate.pipeline.build', 'git_sha') == sha
          - lookup('buildstate.pipeline.build', 'decision', report=true) == 'resume'
          - lookup('buildstate.pipeline.build', 'next_state', report=true) | int == 20
          - lookup('buildstate.pipeline.build', 'nope', default='none') == 'none'
          - lookup('buildstate.pipeline.build', 'base_image', outputs=true) == "rhel-9.4 'minimal'"
          - lookup('buildstate.pipeline.build', 'ami_id', outputs=true, default='none') == 'none'
"""


def test_a_play_records_and_reads_through_the_module_and_the_lookup(collections: Path, db: Path, store: buildstate.Store, tmp_path: Path) -> None:
    (tmp_path / "roles" / "users").mkdir(parents=True)
    (tmp_path / "roles" / "users" / "main.yml").write_text("users: [ops]\n")
    env = env_for(collections, db, BUILDSTATE_INPUTS_ROOT=str(tmp_path))
    store.output(BUILD, {"base_image": "rhel-9.4 'minimal'"}, state=5)
    r = playbook(tmp_path, PLAY, env, "-e", "sha=1a2b3c")
    assert r.returncode == 0, r.stdout + r.stderr
    assert recap(r.stdout)["changed"] == 2, r.stdout
    report = store.decide(BUILD, inputs_root=str(tmp_path))
    assert report["metadata"] == {"ami_id": "ami-0abc", "git_sha": "1a2b3c"}
    assert report["current_state"] == 15
    complete = [e for e in store.events(BUILD) if e["kind"] == "complete"][-1]
    assert complete["state"] == 15 and list(complete["inputs"]["files"]) == ["roles/users/main.yml"]
    assert complete["actor"]["tool"] == "ansible"

    # Again: nothing to do, nothing written.
    before = store.events(BUILD)
    r = playbook(tmp_path, PLAY, env, "-e", "sha=1a2b3c")
    assert r.returncode == 0 and recap(r.stdout)["changed"] == 0, r.stdout + r.stderr
    assert store.events(BUILD) == before

    # Check mode with a new value: reported as a change, with a diff, and not written.
    r = playbook(tmp_path, PLAY.replace("    - name: read them back", "    - name: read them back\n      check_mode: false\n      when: false"), env, "-e", "sha=9f9f9f", "--check", "--diff")
    assert r.returncode == 0, r.stdout + r.stderr
    assert recap(r.stdout)["changed"] == 1, r.stdout
    assert "git_sha" in r.stdout and "9f9f9f" in r.stdout and "1a2b3c" in r.stdout, r.stdout
    assert store.events(BUILD) == before

    # A failure is recorded with its category; a missing build is a clear task failure.
    fail = "- hosts: localhost\n  gather_facts: false\n  tasks:\n    - buildstate.pipeline.state:\n        transition: fail\n        build_state: 20\n        error: \"users role: it's broken\"\n        category: persistent\n"
    r = playbook(tmp_path, fail, env)
    assert r.returncode == 0, r.stdout + r.stderr
    d = store.decide(BUILD, inputs=False)
    assert (d["status"], d["last_error"], d["last_category"]) == ("blocked", "users role: it's broken", "persistent")
    r = playbook(tmp_path, fail, {**env, "BUILDSTATE_BUILD_ID": "no-such-build"})
    assert r.returncode != 0 and "does not exist" in r.stdout, r.stdout


def test_the_collection_works_through_a_file_remote_and_carries_the_callback(collections: Path, tmp_path: Path) -> None:
    remote = f"file://{tmp_path / 'remote'}"
    (tmp_path / "remote").mkdir()
    db1, db2 = tmp_path / "one.db", tmp_path / "two.db"
    init = subprocess.run([str(INIT_STATE), "img-9", "--cloud", "aws", "--image", "rhel9", "--db", str(db1), "--remote", remote], capture_output=True, text=True, check=False)
    assert init.returncode == 0, init.stderr
    env = env_for(collections, db1, BUILDSTATE_BUILD_ID="img-9", BUILDSTATE_REMOTE=remote, ANSIBLE_CALLBACKS_ENABLED="buildstate.pipeline.buildstate")
    text = "- name: kickstart\n  hosts: localhost\n  gather_facts: false\n  vars:\n    buildstate_state: 5\n  tasks:\n    - buildstate.pipeline.state:\n        metadata: {ami_id: ami-0remote}\n"
    r = playbook(tmp_path, text, env)
    assert r.returncode == 0 and "goes on without recording" not in r.stdout + r.stderr, r.stdout + r.stderr
    # Another machine, with its own database, sees both on the remote.
    other = subprocess.run([str(CHECK_STATE), "img-9", "--json", "--db", str(db2), "--remote", remote], capture_output=True, text=True, check=False)
    assert other.returncode == 0, other.stderr
    d = json.loads(other.stdout)
    assert (d["current_state"], d["metadata"]) == (5, {"ami_id": "ami-0remote"}), d
    # A resource recorded from a task while the callback holds state 5's lease, through
    # the remote; run again, nothing is written; check mode predicts a deletion and
    # writes nothing; then it is recorded gone.
    res = "- name: kickstart\n  hosts: localhost\n  gather_facts: false\n  vars:\n    buildstate_state: 5\n  tasks:\n    - buildstate.pipeline.resource:\n        type: key-pair\n        id: kp-remote\n        props: {region: us-east-1}\n        cleanup: aws ec2 delete-key-pair --key-name \"$BUILDSTATE_RESOURCE_ID\"\n"
    forced = {**env, "BUILDSTATE_FORCE": "5", "BUILDSTATE_FORCE_REASON": "record the key pair"}
    r = playbook(tmp_path, res, forced)
    assert r.returncode == 0 and recap(r.stdout)["changed"] == 1, r.stdout + r.stderr
    ledger = json.loads(subprocess.run([str(CHECK_STATE), "img-9", "--resources", "--json", "--db", str(db2), "--remote", remote], capture_output=True, text=True, check=True).stdout)["resources"]
    assert [(x["id"], x["status"], x["state"], x["props"]) for x in ledger] == [("kp-remote", "present", 5, {"region": "us-east-1"})], ledger
    gone = "- hosts: localhost\n  gather_facts: false\n  tasks:\n    - buildstate.pipeline.resource:\n        type: key-pair\n        id: kp-remote\n        state: absent\n"
    plain = {k: v for k, v in env.items() if k != "ANSIBLE_CALLBACKS_ENABLED"}
    r = playbook(tmp_path, gone, plain, "--check", "--diff")
    assert r.returncode == 0 and recap(r.stdout)["changed"] == 1 and '"status": "deleted"' in r.stdout, r.stdout + r.stderr
    assert json.loads(subprocess.run([str(CHECK_STATE), "img-9", "--resources", "--json", "--db", str(db2), "--remote", remote], capture_output=True, text=True, check=True).stdout)["resources"][0]["status"] == "present"
    r = playbook(tmp_path, gone, plain)
    assert r.returncode == 0 and recap(r.stdout)["changed"] == 1, r.stdout + r.stderr
    r = playbook(tmp_path, gone, plain)
    assert r.returncode == 0 and recap(r.stdout)["changed"] == 0, r.stdout + r.stderr
    # The lookup reads through the remote too, from a third database.
    look = "- hosts: localhost\n  gather_facts: false\n  tasks:\n    - ansible.builtin.assert:\n        that: lookup('buildstate.pipeline.build', 'ami_id') == 'ami-0remote'\n"
    third = {k: v for k, v in env.items() if k != "ANSIBLE_CALLBACKS_ENABLED"}
    r = playbook(tmp_path, look, {**third, "BUILDSTATE_DB": str(tmp_path / "three.db")})
    assert r.returncode == 0, r.stdout + r.stderr


def collection_tree(base: Path) -> Path:
    """The collection where ansible-test and ansible-lint look for it:
    BASE/ansible_collections/buildstate/pipeline, its symlinks resolved (the callback is
    the Python package's file)."""
    import shutil

    tree = base / "ansible_collections" / "buildstate" / "pipeline"
    shutil.copytree(ROOT / "ansible" / "collection", tree, symlinks=False)
    return tree


def test_ansible_test_sanity_passes_on_the_collection(tmp_path: Path) -> None:
    """Every sanity test of ansible-core 2.19's ansible-test that applies, with the
    requirements it installs into its own virtual environments (issue 28). Their pip
    comes from scripts/ansible-test-get-pip.py (ansible-test would download one from a
    host these machines cannot reach); they are kept in target/ansible-test-home between
    local runs."""
    import re
    import shutil

    import ansible_test

    source = (Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py").read_text()
    pip = re.search(r"pip='(\d+\.\d+)'", source)
    assert pip, "ansible-test's pip version is where it was (python_requirements.py)"
    home = ROOT / "target" / "ansible-test-home"
    cache = home / ".ansible" / "test" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "scripts" / "ansible-test-get-pip.py", cache / ("get_pip_%s.py" % pip.group(1).replace(".", "_")))
    tree = collection_tree(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUILDSTATE_", "ANSIBLE_"))}
    env.update(HOME=str(home), PATH=f"{BIN}:{env['PATH']}")
    r = subprocess.run([str(BIN / "ansible-test"), "sanity", "--local", "--python", "3.11", "--requirements", "--color", "no"], cwd=tree, env=env, capture_output=True, text=True, timeout=1800, check=False)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    ran = re.findall(r'Running sanity test "([a-z0-9-]+)"', out)
    for must in ("validate-modules", "pylint", "pep8", "ansible-doc", "changelog", "yamllint", "import", "compile"):
        assert must in ran, (must, ran)


def test_ansible_lint_production_profile_on_the_collection_and_the_examples(tmp_path: Path) -> None:
    """ansible-lint --offline at its strictest profile, on the collection (its galaxy.yml,
    changelog, plugins' docs) and on the example playbooks that use it."""
    import shutil

    tree = collection_tree(tmp_path / "collections")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUILDSTATE_", "ANSIBLE_"))}
    env.update(HOME=str(tmp_path), PATH=f"{BIN}:{env['PATH']}", ANSIBLE_COLLECTIONS_PATH=str(tmp_path / "collections"), NO_COLOR="1")
    lint = [str(BIN / "ansible-lint"), "--offline", "--profile", "production", "--nocolor"]
    r = subprocess.run(lint, cwd=tree, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Profile 'production' was required, and it passed" in r.stdout + r.stderr
    examples = tmp_path / "examples"
    examples.mkdir()
    for name in ("site.yml", "collection-example.yml"):
        shutil.copyfile(ROOT / "ansible" / name, examples / name)
    r = subprocess.run([*lint, "site.yml", "collection-example.yml"], cwd=examples, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Profile 'production' was required, and it passed" in r.stdout + r.stderr
