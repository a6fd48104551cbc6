"""What ansible-test runs to put pip into each of its per-test virtual environments.

ansible-test downloads a get-pip script from a host these machines cannot reach and
caches it as ~/.ansible/test/cache/get_pip_<VERSION>.py; tests/python/test_collection.py
puts this file there instead. It is called as get-pip is: with pip's install options and
the packages to install, plus get-pip's own --no-setuptools and --no-wheel. Python's
ensurepip provides pip; pip then installs what was asked from PyPI.
"""

from __future__ import annotations

import subprocess
import sys

# Options of get-pip itself, which pip install does not take (leaving a package out is
# what not naming it does).
GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}


def main() -> int:
    args = [a for a in sys.argv[1:] if a not in GET_PIP_ONLY]
    subprocess.run([sys.executable, "-m", "ensurepip", "--upgrade"], check=True)
    return subprocess.run([sys.executable, "-m", "pip", "install", *args], check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
