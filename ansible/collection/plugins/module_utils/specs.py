# -*- coding: utf-8 -*-
# Licensed under the Apache License 2.0. The argument specs of the collection's modules,
# in one place: each module's file declares them (what ansible-doc and validate-modules
# read) and its action plugin, which does the work on the controller, validates with them.

from __future__ import annotations

STATE_ARGS = dict(
    build_id=dict(type="str"),
    db=dict(type="path"),
    remote=dict(type="str"),
    metadata=dict(type="dict"),
    transition=dict(type="str", choices=["complete", "fail"]),
    build_state=dict(type="int"),
    error=dict(type="str"),
    category=dict(type="str", choices=["transient", "persistent", "unknown"]),
    inputs=dict(type="list", elements="str"),
    inputs_root=dict(type="path"),
)
STATE_REQUIRED_IF = [
    ("transition", "fail", ("error",)),
    ("transition", "complete", ("build_state",)),
    ("transition", "fail", ("build_state",)),
]
STATE_REQUIRED_ONE_OF = [("metadata", "transition")]

RESOURCE_ARGS = dict(
    build_id=dict(type="str"),
    db=dict(type="path"),
    remote=dict(type="str"),
    type=dict(type="str", required=True),
    id=dict(type="str", required=True),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    props=dict(type="dict"),
    cleanup=dict(type="str"),
    check=dict(type="str"),
    build_state=dict(type="int"),
)
