"""Print the callback plugin directory: ANSIBLE_CALLBACK_PLUGINS=$(python -m buildstate.ansible)."""

from buildstate.ansible import plugin_dir

print(plugin_dir())
