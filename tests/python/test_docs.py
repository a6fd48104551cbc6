"""Docs are executable promises: every ```sh block in README.md and docs/*.md runs as
written, in order, on a fresh machine and a fresh database.

The blocks of each file run as one bash script from the repository root, with a new
empty HOME (shared by the files, in the order README.md, then docs/ by name), no venv
or buildstate variable from this test's own environment, and `set -euo pipefail`. A line
whose comment says `# exit N` must exit with N; every other line must succeed.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Lines that cannot run inside this test, with the reason.
NOT_HERE = {"scripts/test": "the command that runs this very test (CI runs it)"}
BLOCK = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)
EXIT = re.compile(r"#.*\bexit (\d+)\b")


def blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text())


def commands(block: str) -> list[str]:
    """The block's commands, continuation lines joined."""
    out, pending = [], ""
    for line in block.splitlines():
        pending += line
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if pending.strip() and not pending.strip().startswith("#"):
            out.append(pending.strip())
        pending = ""
    return out


COMPOUND = re.compile(r"^\s*(case|if|for|while|until)\b", re.M)


def script(path: Path) -> str:
    lines = ["set -euo pipefail"]
    for block in blocks(path):
        if COMPOUND.search(block):
            # A block with a compound command runs whole, and must succeed.
            lines += [f"printf '+ %s\\n' {shlex.quote(block.strip())}", block]
            continue
        for cmd in commands(block):
            head = cmd.split("#")[0].strip()
            if head in NOT_HERE:
                lines.append(f"echo {shlex.quote(f'(not run here: {head}: {NOT_HERE[head]})')}")
                continue
            lines.append(f"printf '+ %s\\n' {shlex.quote(cmd)}")
            m = EXIT.search(cmd)
            if m:
                want = m.group(1)
                fail = shlex.quote(f"{path.name}: expected exit {want} from: {cmd}")
                lines += ["set +e", cmd, "rc=$?", "set -e", f'[ "$rc" -eq {want} ] || {{ echo {fail} " (got $rc)" >&2; exit 1; }}']
            else:
                lines.append(cmd)
    return "\n".join(lines) + "\n"


def clean_env(home: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("BUILDSTATE_", "ANSIBLE_", "VIRTUAL_ENV", "PYTHON", "CARGO_TARGET_DIR"))}
    keep["PATH"] = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if ".venv" not in p and "bs-venv" not in p)
    keep["HOME"] = str(home)
    # Reuse the machine's caches (not part of what a command does): cargo's registry,
    # rustup's toolchain and pip's downloads live under the real HOME.
    real_home = Path(os.environ.get("HOME", "/root"))
    keep.setdefault("CARGO_HOME", str(real_home / ".cargo"))
    keep.setdefault("RUSTUP_HOME", str(real_home / ".rustup"))
    keep.setdefault("PIP_CACHE_DIR", str(real_home / ".cache" / "pip"))
    # `pip install ./python` builds the extension in release mode: skip the whole-program
    # optimisation there, which only makes the same code faster.
    keep["CARGO_PROFILE_RELEASE_LTO"] = "false"
    keep["CARGO_PROFILE_RELEASE_CODEGEN_UNITS"] = "16"
    return keep


def test_every_command_block_runs_as_written(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = clean_env(home)
    ran = 0
    for doc in DOCS:
        if not blocks(doc):
            continue
        body = script(doc)
        r = subprocess.run(["bash", "-c", body], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200, check=False)
        assert r.returncode == 0, f"{doc.name}: a command block failed\n--- script\n{body}\n--- stdout\n{r.stdout[-6000:]}\n--- stderr\n{r.stderr[-6000:]}"
        ran += body.count("printf '+ %s")
    assert ran >= 25, ran  # the README alone has more: the extraction did not miss them


def test_exit_annotations_are_enforced(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text("```sh\nfalse  # exit 0\n```\n")
    r = subprocess.run(["bash", "-c", script(doc)], capture_output=True, text=True, check=False)
    assert r.returncode == 1 and "expected exit 0" in r.stderr
    doc.write_text("```sh\nfalse\necho never\n```\n")
    r = subprocess.run(["bash", "-c", script(doc)], capture_output=True, text=True, check=False)
    assert r.returncode != 0 and "never" not in r.stdout.replace("+ echo never", "")
