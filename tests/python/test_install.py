"""Issue 18: scripts/install as a user runs it, with no --from: a release build (cargo
install), one executable under every command's name, linked statically where the C
library is glibc (docs/decisions.md, "A static executable"). The installed commands then
do the real work a static glibc program could get wrong: record transitions, and reach a
real S3 server by host name (name resolution without the dynamic loader)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

from test_sync import free_port, make_bucket, moto_command, s3_env, start, stop

ROOT = Path(__file__).resolve().parents[2]
# Kept between local runs, so that a second run rebuilds only what changed; a fresh
# clone (CI) builds it all once.
TARGET = ROOT / "target" / "install"
COMMANDS = ["init-state", "check-state", "update-state", "run-state", "sync-cloud", "monitor", "concourse-resource"]
PT_INTERP = 3


def program_headers(path: Path) -> list[int]:
    """The types of an ELF executable's program headers (64-bit little-endian)."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, f"{path} is not a 64-bit little-endian ELF file"
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return [struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)]


def host_triple() -> str:
    out = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout
    return next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("host: "))


def test_install_builds_one_static_executable_that_records_and_shares_a_build(tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUILDSTATE_", "AWS_", "RUSTFLAGS", "CARGO_TARGET_"))}
    env["CARGO_TARGET_DIR"] = str(TARGET)
    out = subprocess.run(["bash", str(ROOT / "scripts" / "install"), "--prefix", str(prefix)], env=env, capture_output=True, text=True, timeout=3600, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    bindir = prefix / "bin"
    exe = bindir / "buildstate"
    for c in COMMANDS:
        assert (bindir / c).resolve() == exe.resolve(), c
        assert (prefix / "share" / "man" / "man1" / f"{c}.1").is_file(), c
    headers = program_headers(exe)
    if host_triple().endswith("-linux-gnu"):
        # No PT_INTERP: the kernel starts it without the dynamic loader, so it loads no
        # shared library at all.
        assert PT_INTERP not in headers, "scripts/install built a dynamically linked executable"
    else:
        assert PT_INTERP in headers

    port = free_port()
    proc = start(moto_command(port), port, tmp_path, "moto_server")
    try:
        make_bucket(port, "builds")
        run_env = {k: v for k, v in env.items() if k != "CARGO_TARGET_DIR"}
        # By host name: resolved by the static executable's own C library.
        run_env.update(s3_env(port), AWS_ENDPOINT=f"http://localhost:{port}", HOME=str(tmp_path))
        remote = "s3://builds/state"

        def run(db: str, *argv: str) -> subprocess.CompletedProcess[str]:
            r = subprocess.run([str(bindir / argv[0]), *argv[1:], "--db", str(tmp_path / db)], env=run_env, capture_output=True, text=True, timeout=120, check=False)
            assert r.returncode == 0, f"{argv}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
            return r

        run("a.db", "init-state", "img-static", "--cloud", "aws", "--image", "rhel9")
        run("a.db", "update-state", "img-static", "complete", "5")
        run("a.db", "update-state", "img-static", "meta", "note=it's done")
        run("a.db", "sync-cloud", "--remote", remote, "push", "img-static")
        # Another machine: an empty database takes the build from the bucket.
        run("b.db", "sync-cloud", "--remote", remote, "pull", "img-static")
        shown = json.loads(run("b.db", "check-state", "img-static", "--json", "--history").stdout)
        assert shown["current_state"] == 5, shown
        assert shown["history"][-1]["message"] == "note=it's done", shown["history"]
    finally:
        stop(proc)


def dockerignored(patterns: list[str], path: str) -> bool:
    """Whether Docker leaves `path` (relative to the context) out: a pattern matches the
    path or one of its parent folders; `**/` matches any depth (Docker's rules, without
    the `!` exceptions, which .dockerignore does not use)."""
    import fnmatch

    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for p in patterns:
        assert not p.startswith("!"), p
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, p) or (p.startswith("**/") and fnmatch.fnmatchcase(prefix.rsplit("/", 1)[-1], p[3:])):
                return True
    return False


def test_the_image_build_context_is_the_sources_only() -> None:
    """concourse/Dockerfile copies its context (`COPY . .`): .dockerignore keeps build
    output, virtual environments and tools out (target/ alone is hundreds of MB) and
    every tracked source in."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for out in ("target/debug/buildstate", ".venv/bin/python", ".tools/node_modules/x", ".git/HEAD", ".bench/resources/gc.db", "python/buildstate/__pycache__/x.pyc"):
        assert dockerignored(patterns, out), out
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert "scripts/install" in tracked and "Cargo.lock" in tracked
    left_out = [f for f in tracked if dockerignored(patterns, f)]
    assert left_out == [], left_out
