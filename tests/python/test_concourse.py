"""The Concourse resource, driven exactly as Concourse does: stdin JSON, argv folder,
BUILD_* metadata only for in/out (concoursetools' FileTestResourceWrapper runs the real
binaries as check/in/out), against a real S3 server (moto) started here. And the
pipeline and task files, parsed and checked for every reference."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from concoursetools.testing import FileTestResourceWrapper

from test_sync import free_port, make_bucket, moto_behind_a_faulty_proxy, moto_command, s3_env, start, stop  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("moto")
    port = free_port()
    proc = start(moto_command(port), port, tmp, "moto_server")
    make_bucket(port, "builds")
    try:
        yield s3_env(port)
    finally:
        stop(proc)


@pytest.fixture
def assets(tmp_path: Path) -> Path:
    """/opt/resource as the image lays it out: check, in and out are links to the one
    executable, buildstate, which runs the step it was called as."""
    d = tmp_path / "opt-resource"
    d.mkdir()
    for step in ("check", "in", "out"):
        (d / step).symlink_to(TARGET / "buildstate")
    return d


def source(creds: dict[str, str], build: str, prefix: str) -> dict:
    # The clients read the endpoint and region like the keys: all come through source.
    return {"remote": f"s3://builds/{prefix}", "build_id": build, "credentials": creds}


def test_check_in_out_through_a_real_s3_server(moto: dict[str, str], assets: Path) -> None:
    src = source(moto, "img-1", "concourse-a")
    wrapper = FileTestResourceWrapper.from_assets_dir(src, assets, directory_dict={"errors": {"msg.txt": "kickstart: mirror 'eu' timed out\n"}})
    assert wrapper.fetch_new_versions() == []  # nothing on the remote yet

    v1, meta = wrapper.publish_new_version({"action": "init", "cloud": "aws", "image": "rhel9"})
    assert v1 == {"build_id": "img-1", "serial": "1"}
    assert {"name": "next_state", "value": "5"} in meta
    assert wrapper.fetch_new_versions() == [v1]

    v2, _ = wrapper.publish_new_version({"action": "start", "state": 5})
    assert wrapper.fetch_new_versions(v1) == [v2]  # a new version when the serial changes
    v3, meta = wrapper.publish_new_version({"action": "fail", "state": 5, "error_file": "errors/msg.txt", "exit_code": 28})
    assert int(v3["serial"]) == 3 and {"name": "status", "value": "waiting"} in meta

    with wrapper.capture_directory_state() as folder:
        version, meta = wrapper.download_version(v3)
        files = folder.final_state
    assert version == v3
    assert {"decision.json", "resume-metadata", "snapshot.json", "history.json"} <= set(files)
    decision = json.loads(files["decision.json"])
    assert decision["decision"] == "wait" and decision["last_error"] == "kickstart: mirror 'eu' timed out\n"
    history = json.loads(files["history.json"])
    assert [e["kind"] for e in history] == ["init", "start", "fail"]
    # The put's Concourse metadata is the actor; the job build is the lease holder.
    actor = history[1]["actor"]
    assert actor["tool"] == "concourse" and actor["context"]["BUILD_PIPELINE_NAME"] == wrapper.mocked_environ["BUILD_PIPELINE_NAME"]
    assert "RESUME_STATE=5" in files["resume-metadata"]


def run_step(assets: Path, step: str, request: dict, folder: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    args = [str(assets / step)] + ([str(folder)] if folder else [])
    return subprocess.run(args, input=json.dumps(request), capture_output=True, text=True, env=env or {}, timeout=60, check=False)


def test_stdout_is_only_json_and_errors_go_to_stderr(moto: dict[str, str], assets: Path, tmp_path: Path) -> None:
    src = source(moto, "img-2", "concourse-b")
    bad = [
        ("out", {"source": src, "params": {"action": "explode"}}, "unknown action 'explode'"),
        ("out", {"source": src, "params": {"action": "start"}}, "needs params.state"),
        ("out", {"source": dict(src, credentials={"PATH": "/evil"}), "params": {"action": "start", "state": 5}}, "not a cloud credential"),
        ("check", {"source": {"remote": "ftp://x", "build_id": "b"}}, "unknown scheme"),
        ("check", {"source": {"remote": "s3://builds/x"}}, "exactly one of build_id and build_pattern"),
        ("in", {"source": src, "version": {"build_id": "img-2", "serial": "9"}}, "older than the version asked for"),
    ]
    for step, req, want in bad:
        r = run_step(assets, step, req, tmp_path if step != "check" else None, env={"BUILD_ID": "1"} if step != "check" else None)
        assert r.returncode != 0 and r.stdout == "", (step, r.stdout)
        assert want in r.stderr, (step, r.stderr)
        assert moto["AWS_SECRET_ACCESS_KEY"] not in r.stderr or moto["AWS_SECRET_ACCESS_KEY"] == "test"


def test_two_job_builds_cannot_both_start_a_state(moto: dict[str, str], assets: Path, tmp_path: Path) -> None:
    src = source(moto, "img-3", "concourse-c")
    env = {"BUILD_ID": "1", "BUILD_NAME": "1", "BUILD_JOB_NAME": "kickstart", "BUILD_PIPELINE_NAME": "images", "BUILD_TEAM_NAME": "main"}
    assert run_step(assets, "out", {"source": src, "params": {"action": "init", "cloud": "aws", "image": "rhel9"}}, tmp_path, env).returncode == 0
    procs = [
        subprocess.Popen([str(assets / "out"), str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(env, BUILD_NAME=str(n), BUILD_ID=str(n)))
        for n in (2, 3, 4)
    ]
    outs = [p.communicate(json.dumps({"source": src, "params": {"action": "start", "state": 5}}), timeout=60) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 11, 11], (codes, outs)
    # The winner's own job build completes it: the same lease holder.
    winner = str((2, 3, 4)[codes.index(0)])
    r = run_step(assets, "out", {"source": src, "params": {"action": "complete", "state": 5}}, tmp_path, dict(env, BUILD_NAME=winner, BUILD_ID=winner))
    assert r.returncode == 0, r.stderr


def test_check_with_a_pattern_lists_every_matching_build(moto: dict[str, str], assets: Path, tmp_path: Path) -> None:
    base = source(moto, "x", "concourse-d")
    for b in ("img-a", "img-b", "other"):
        src = dict(base, build_id=b)
        assert run_step(assets, "out", {"source": src, "params": {"action": "init", "cloud": "aws", "image": "rhel9"}}, tmp_path, {"BUILD_ID": "1"}).returncode == 0
    pattern = {k: v for k, v in base.items() if k != "build_id"} | {"build_pattern": "img-*"}
    r = run_step(assets, "check", {"source": pattern, "version": None})
    assert r.returncode == 0, r.stderr
    assert sorted(v["build_id"] for v in json.loads(r.stdout)) == ["img-a", "img-b"]


# --- the pipeline and task files ------------------------------------------------------------

PIPELINE_KEYS = {"jobs", "resources", "resource_types", "groups", "display", "var_sources"}
STEP_KINDS = {"get", "put", "task", "in_parallel", "do", "try", "set_pipeline", "load_var"}


def test_pipeline_and_tasks_reference_only_what_exists() -> None:
    pipeline = yaml.safe_load((ROOT / "concourse" / "pipeline.yml").read_text())
    assert set(pipeline) <= PIPELINE_KEYS, set(pipeline) - PIPELINE_KEYS
    types = {t["name"] for t in pipeline["resource_types"]} | {"git", "registry-image", "time", "s3"}
    resources = {r["name"]: r for r in pipeline["resources"]}
    for r in resources.values():
        assert r["type"] in types, r
    assert resources["state"]["type"] == "buildstate"
    assert set(resources["state"]["source"]) <= {"remote", "build_id", "build_pattern", "credentials", "plan"}
    jobs = {j["name"]: j for j in pipeline["jobs"]}
    states = []
    for job in jobs.values():
        available: set[str] = set()
        for step in job["plan"]:
            kind = (set(step) & STEP_KINDS).pop()
            if kind in ("get", "put"):
                assert step[kind] in resources, (job["name"], step)
                for upstream in step.get("passed", []):
                    assert upstream in jobs, (job["name"], upstream)
                available.add(step.get("get", step.get("put")))
            if kind == "put" and step["put"] == "state":
                assert step["params"]["action"] in {"init", "start", "complete", "fail", "meta", "retry", "skip", "cancel"}
            if kind == "task":
                path = step["file"]
                assert path.startswith("repo/"), path
                task_file = ROOT / path.removeprefix("repo/")
                assert task_file.is_file(), path
                task = yaml.safe_load(task_file.read_text())
                assert task["platform"] == "linux" and "image_resource" in task and task["run"]["path"], path
                for i in task.get("inputs", []):
                    assert i["name"] in available, (job["name"], path, i["name"])
                for o in task.get("outputs", []):
                    available.add(o["name"])
                declared = set(task.get("params", {}))
                given = set(step.get("params", {}))
                assert given <= declared, (path, given - declared)
                required = {k for k, v in task.get("params", {}).items() if v is None}
                assert required <= given, (job["name"], path, required - given)
                if "STATE" in step.get("params", {}) and path.endswith("check.yml"):
                    states.append(step["params"]["STATE"])
    # The jobs gate on every work state of the plan they create builds with, in order.
    plan = (ROOT / "concourse" / "image-build-plan.toml").read_text()
    import tomllib

    ids = [s["id"] for s in tomllib.loads(plan)["state"]]
    assert states == ids[1:], (states, ids)
    init = yaml.safe_load((ROOT / "concourse" / "tasks" / "init.yml").read_text())
    assert "concourse/image-build-plan.toml" in init["run"]["args"][-1]
    # The resource image installs the resource where Concourse looks for it.
    dockerfile = (ROOT / "concourse" / "Dockerfile").read_text()
    for step in ("check", "in", "out"):
        assert f"/opt/resource/{step}" in dockerfile
    # ...and the man pages and completions of every command (issue 18).
    assert "RUN scripts/install --prefix /out" in dockerfile
    assert "COPY --from=build /out/bin/ /usr/local/bin/" in dockerfile
    assert "COPY --from=build /out/share /usr/local/share" in dockerfile


def test_the_resource_keeps_to_its_folder_and_its_secrets(moto: dict[str, str], assets: Path, tmp_path: Path) -> None:
    """File params stay in the put's folder, credentials are checked before use and never
    echoed, `in` fetches exactly the version asked for, and a huge error_file is cut."""
    src = source(moto, "img-5", "concourse-e")
    put_dir = tmp_path / "put"
    put_dir.mkdir()
    outside = tmp_path / "outside-id"
    outside.write_text("img-5-outside-secret\n")
    (put_dir / "link-out").symlink_to(outside)
    env = {"BUILD_ID": "1", "BUILD_NAME": "1", "BUILD_JOB_NAME": "j", "BUILD_PIPELINE_NAME": "p", "BUILD_TEAM_NAME": "t"}
    assert run_step(assets, "out", {"source": src, "params": {"action": "init", "cloud": "aws", "image": "rhel9"}}, put_dir, env).returncode == 0
    escapes = [
        {"action": "meta", "build_id_file": "../outside-id", "meta": {"k": "v"}},
        {"action": "meta", "build_id_file": "/etc/passwd", "meta": {"k": "v"}},
        {"action": "meta", "build_id_file": "../../../../../../etc/passwd", "meta": {"k": "v"}},
        {"action": "meta", "build_id_file": "link-out", "meta": {"k": "v"}},
        {"action": "fail", "state": 5, "error_file": "/etc/passwd"},
    ]
    for params in escapes:
        r = run_step(assets, "out", {"source": src, "params": params}, put_dir, env)
        assert r.returncode == 8 and r.stdout == "", (params, r.returncode, r.stderr)
        assert "inside the put's folder" in r.stderr, r.stderr
        assert "root:" not in r.stderr and "outside-secret" not in r.stderr, r.stderr
    # Nothing of /etc/passwd was stored: the build is as init left it.
    (put_dir / "in").mkdir()
    r = run_step(assets, "in", {"source": src, "version": {"build_id": "img-5", "serial": "1"}}, put_dir / "in", env)
    assert r.returncode == 0, r.stderr
    assert "root:" not in (put_dir / "in" / "snapshot.json").read_text()

    # Credentials: a NUL byte and a value a client would quote are refused, never shown.
    for creds, code in ((dict(moto, AWS_SECRET_ACCESS_KEY="wJalrSECRETvalue\0x"), 8), (dict(moto, AWS_ALLOW_HTTP="notabool-SECRET"), None)):
        r = run_step(assets, "check", {"source": dict(src, credentials=creds)})
        assert r.returncode not in (0, 101, 134) and (code is None or r.returncode == code), (r.returncode, r.stderr)
        assert "wJalrSECRETvalue" not in r.stderr and "notabool-SECRET" not in r.stderr and "panicked" not in r.stderr, r.stderr

    # A huge error_file: its last 64 KiB are kept, and the cut is said.
    (put_dir / "big.txt").write_text("x" * (10 * 1024 * 1024) + "\nthe real error at the end\n")
    r = run_step(assets, "out", {"source": src, "params": {"action": "fail", "state": 5, "error_file": "big.txt"}}, put_dir, env)
    assert r.returncode == 0, r.stderr
    serial = json.loads(r.stdout)["version"]["serial"]
    (put_dir / "in2").mkdir()
    r = run_step(assets, "in", {"source": src, "version": {"build_id": "img-5", "serial": serial}}, put_dir / "in2", env)
    assert r.returncode == 0, r.stderr
    snap = (put_dir / "in2" / "snapshot.json").read_text()
    assert len(snap) < 512 * 1024 and "the real error at the end" in snap and "were left out" in snap

    # `in` for an older version fails clearly instead of labelling the newest state with
    # it; serial 0 is never a version.
    for version, want in (("1", "has moved on to serial"), ("0", "serial of 1 or more")):
        r = run_step(assets, "in", {"source": src, "version": {"build_id": "img-5", "serial": version}}, put_dir / "in2", env)
        assert r.returncode == 8 and r.stdout == "" and want in r.stderr, (version, r.stderr)


def test_a_put_whose_answer_was_lost_is_reported_once_as_written(moto_behind_a_faulty_proxy, assets: Path, tmp_path: Path) -> None:
    """The put goes through the same write path: a conditional PUT that reached the
    server but whose answer was lost is found by its write id, reported once."""
    proxy, env = moto_behind_a_faulty_proxy
    creds = {k: v for k, v in env.items() if k.startswith("AWS_")}
    src = {"remote": "s3://builds/concourse-lost", "build_id": "img-9", "credentials": creds}
    build_env = {"BUILD_ID": "7", "BUILD_NAME": "7", "BUILD_JOB_NAME": "j", "BUILD_PIPELINE_NAME": "p", "BUILD_TEAM_NAME": "t", "BUILDSTATE_REMOTE_TIMEOUT": "3s"}
    assert run_step(assets, "out", {"source": src, "params": {"action": "init", "cloud": "aws", "image": "rhel9"}}, tmp_path, build_env).returncode == 0
    for fault in ("drop", "retried"):
        before = proxy.faults
        proxy.arm(fault)
        action = {"action": "start", "state": 5} if fault == "drop" else {"action": "complete", "state": 5}
        r = run_step(assets, "out", {"source": src, "params": action}, tmp_path, build_env)
        assert proxy.faults == before + 1
        assert r.returncode == 0, (fault, r.stderr)
    (tmp_path / "in").mkdir()
    r = run_step(assets, "in", {"source": src, "version": {"build_id": "img-9", "serial": "3"}}, tmp_path / "in", build_env)
    assert r.returncode == 0, r.stderr
    kinds = [e["kind"] for e in json.loads((tmp_path / "in" / "history.json").read_text())]
    assert kinds == ["init", "start", "complete"], kinds
