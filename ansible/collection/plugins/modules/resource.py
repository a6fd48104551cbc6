# -*- coding: utf-8 -*-
# Licensed under the Apache License 2.0. The work is done on the controller by the action
# plugin of the same name (plugins/action/resource.py); this file documents the module.

from __future__ import annotations

DOCUMENTATION = r"""
module: resource
short_description: Record a cloud resource a build created, or that it is gone, with buildstate
description:
  - Records in a build's resource ledger that its running state created a resource
    (O(state=present)), with the command that deletes it, or that it is gone
    (O(state=absent)), as C(update-state BUILD resource add) and C(resource delete) do
    (docs/resources.md). C(monitor gc) then deletes the resources nobody will use.
  - Runs on the controller (the database lives there, or the remote named by O(remote)),
    whatever the task's hosts are. It needs the C(buildstate) Python package in the
    Python that runs ansible-playbook.
  - Idempotent. A resource the ledger already has as present (or as gone) is reported
    unchanged and nothing is written. Check mode predicts without writing; diff mode
    shows the resource's status before and after.
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
    description: Remote mode (docs/sync.md). Defaults to C(BUILDSTATE_REMOTE).
    type: str
  type:
    description: What kind of resource it is (C(key-pair), C(security-group), C(instance), ...).
    type: str
    required: true
  id:
    description: Its id in the cloud.
    type: str
    required: true
  state:
    description: Whether the resource exists (V(present)) or is gone (V(absent)).
    type: str
    choices: [present, absent]
    default: present
  props:
    description: Properties, given to its cleanup and check commands as C(BUILDSTATE_RESOURCE_PROP_<KEY>).
    type: dict
  cleanup:
    description: The shell command that deletes it; deleting what is already gone must succeed.
    type: str
  check:
    description: The shell command that exits 0 while it exists.
    type: str
  build_state:
    description: The state that created it (one that is running or has run). Defaults to the active state.
    type: int
seealso:
  - module: buildstate.pipeline.state
author:
  - buildstate developers (@buildstate)
"""

EXAMPLES = r"""
- name: Create the build's key pair
  amazon.aws.ec2_key:
    name: "bs-{{ build_id }}"
  register: key

- name: Record it, with what deletes it
  buildstate.pipeline.resource:
    type: key-pair
    id: "bs-{{ build_id }}"
    props:
      region: us-east-1
    cleanup: aws ec2 delete-key-pair --key-name "$BUILDSTATE_RESOURCE_ID" --region "$BUILDSTATE_RESOURCE_PROP_region"

- name: The play deleted it itself
  buildstate.pipeline.resource:
    type: key-pair
    id: "bs-{{ build_id }}"
    state: absent
"""

RETURN = r"""
resource:
  description: The resource as the ledger has it after the task (before it in check mode), as C(check-state --resources --json) lists it; null when it has none.
  returned: always
  type: dict
  sample: {"type": "key-pair", "id": "bs-img-42", "status": "present", "state": 20, "attempt": 1}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.buildstate.pipeline.plugins.module_utils.specs import RESOURCE_ARGS


def main():
    module = AnsibleModule(argument_spec=RESOURCE_ARGS, supports_check_mode=True)
    module.fail_json(msg="buildstate.pipeline.resource runs on the controller through its action plugin; install the collection whole")


if __name__ == "__main__":
    main()
