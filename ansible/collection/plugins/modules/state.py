# -*- coding: utf-8 -*-
# Licensed under the Apache License 2.0. The work is done on the controller by the action
# plugin of the same name (plugins/action/state.py); this file documents the module.

from __future__ import annotations

DOCUMENTATION = r"""
module: state
short_description: Record a build's metadata or a state transition with buildstate
description:
  - Records metadata (C(ami_id), C(git_sha), ...) and/or a transition (C(complete) or
    C(fail)) of a build in a buildstate database, as C(update-state) does, from a task.
  - Runs on the controller (the database lives there, or the remote named by O(remote)),
    whatever the task's hosts are. It needs the C(buildstate) Python package in the
    Python that runs ansible-playbook.
  - Idempotent. Metadata already set to the same values, or a state already completed,
    is reported unchanged and nothing is written. Check mode predicts without writing;
    diff mode shows the build's state and metadata before and after.
version_added: 0.1.0
extends_documentation_fragment:
  - action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
options:
  build_id:
    description: The build. Defaults to the C(BUILDSTATE_BUILD_ID) environment variable.
    type: str
  db:
    description: The database file. Defaults to C(BUILDSTATE_DB), then the commands' default.
    type: path
  remote:
    description:
      - Remote mode (docs/sync.md), for example C(file:///shared/builds) or C(s3://bucket/prefix).
        Defaults to C(BUILDSTATE_REMOTE).
    type: str
  metadata:
    description: Metadata to set, as KEY=VALUE pairs of C(update-state meta).
    type: dict
  transition:
    description: The transition of O(build_state) to record.
    type: str
    choices: [complete, fail]
  build_state:
    description: The state number (0 to 100) the transition is about.
    type: int
  error:
    description:
      - With O(transition=fail), what went wrong (stored verbatim, secrets redacted), as
        C(update-state fail --error) takes it (not named C(message), a name Ansible keeps for itself).
    type: str
  category:
    description: With O(transition=fail), the failure's category; classified by the plan's rules when not given.
    type: str
    choices: [transient, persistent, unknown]
  inputs:
    description:
      - With O(transition=complete), globs of extra input files (relative to O(inputs_root))
        to record with the completion, besides those the plan declares.
    type: list
    elements: str
  inputs_root:
    description: What input globs are relative to. Defaults to C(BUILDSTATE_INPUTS_ROOT), then the working directory.
    type: path
notes:
  - A transition C(start) is not offered, since a lease would end with the task; use the
    callback plugin (plays with C(buildstate_state)) or C(run-state) for work under a lease.
seealso:
  - plugin: buildstate.pipeline.build
    plugin_type: lookup
  - plugin: buildstate.pipeline.buildstate
    plugin_type: callback
author:
  - buildstate developers (@buildstate)
"""

EXAMPLES = r"""
- name: Record the AMI the kickstart produced
  buildstate.pipeline.state:
    build_id: img-42
    metadata:
      ami_id: "{{ kickstart.ami_id }}"

- name: Mark state 10 done, with the files it depended on
  buildstate.pipeline.state:
    transition: complete
    build_state: 10
    inputs: ["validation/**"]

- name: Record a failure a person must look at
  buildstate.pipeline.state:
    transition: fail
    build_state: 70
    error: "integration tests: {{ tests.stderr }}"
    category: persistent
"""

RETURN = r"""
build:
  description: The build after the task (what C(check-state --json) prints), before it in check mode.
  returned: always
  type: dict
  sample: {"build_id": "img-42", "decision": "resume", "next_state": 15, "current_state": 10, "metadata": {"ami_id": "ami-0abc"}}
written:
  description: What was (or in check mode would be) recorded.
  returned: always
  type: list
  elements: str
  sample: ["metadata ami_id", "complete 10"]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.buildstate.pipeline.plugins.module_utils.specs import STATE_ARGS, STATE_REQUIRED_IF, STATE_REQUIRED_ONE_OF


def main():
    module = AnsibleModule(argument_spec=STATE_ARGS, required_if=STATE_REQUIRED_IF, required_one_of=STATE_REQUIRED_ONE_OF, supports_check_mode=True)
    module.fail_json(msg="buildstate.pipeline.state runs on the controller through its action plugin; install the collection whole")


if __name__ == "__main__":
    main()
