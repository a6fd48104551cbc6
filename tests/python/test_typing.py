"""Issue 28, the Python API as typed-Python users and their tools see it: mypy's
stubtest finds the stubs true to the extension, the docs' Python examples pass
`mypy --strict`, and the exceptions are `buildstate.X`: importable by that name,
picklable, and raised across a process pool as themselves."""

from __future__ import annotations

import concurrent.futures
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest

import buildstate

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def test_stubtest_finds_the_stubs_true_to_the_extension(tmp_path: Path) -> None:
    # Run away from the sources, against the installed wheel; no allowlist.
    r = subprocess.run([sys.executable, "-m", "mypy.stubtest", "buildstate._native"], cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Success: no issues found" in r.stdout, r.stdout


def test_the_docs_python_examples_pass_mypy_strict(tmp_path: Path) -> None:
    blocks = [(doc, i, text) for doc in DOCS for i, text in enumerate(BLOCK.findall(doc.read_text()))]
    assert blocks, "the docs have Python examples (docs/ansible.md)"
    files = []
    for doc, i, text in blocks:
        f = tmp_path / f"{doc.stem.replace('-', '_')}_{i}.py"
        f.write_text(text)
        files.append(str(f))
    r = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", *files], cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def _start_unknown(db: str) -> None:
    buildstate.Store(db).start("no-such-build", 5)


def test_exceptions_are_buildstates_and_cross_processes(tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    with pytest.raises(buildstate.UnknownBuildError) as caught:
        _start_unknown(db)
    e = caught.value
    assert type(e).__module__ == "buildstate" and type(e).__qualname__ == "UnknownBuildError"
    assert buildstate.BuildstateError.__module__ == "buildstate"
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is buildstate.UnknownBuildError
    assert (back.kind, back.exit_code, str(back)) == (e.kind, e.exit_code, str(e))
    # What a ProcessPoolExecutor's caller gets when the worker's call fails.
    with concurrent.futures.ProcessPoolExecutor(max_workers=1) as pool:
        with pytest.raises(buildstate.UnknownBuildError) as remote:
            pool.submit(_start_unknown, db).result(timeout=60)
    assert (remote.value.kind, remote.value.exit_code) == ("unknown_build", 3)
    # Every class is where its name says.
    for name in buildstate.__all__:
        obj = getattr(buildstate, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert (obj.__module__, obj.__qualname__) == ("buildstate", name), obj
