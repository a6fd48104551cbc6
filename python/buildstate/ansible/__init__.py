"""The buildstate Ansible callback plugin.

``python -m buildstate.ansible`` prints the directory that holds it, so that

    export ANSIBLE_CALLBACK_PLUGINS=$(python -m buildstate.ansible)
    export ANSIBLE_CALLBACKS_ENABLED=buildstate

enables it. See docs/ansible.md.
"""

from pathlib import Path


def plugin_dir() -> str:
    """The directory containing the ``buildstate`` callback plugin."""
    return str(Path(__file__).resolve().parent / "callback_plugins")
