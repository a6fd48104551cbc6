# -*- coding: utf-8 -*-
# Licensed under the Apache License 2.0.

from __future__ import annotations

DOCUMENTATION = r"""
name: build
short_description: Read a build's metadata, or its decision, from buildstate
description:
  - Returns the values of the build's metadata keys named by the terms, as
    C(check-state --json) reports them (C(lookup('buildstate.pipeline.build', 'ami_id'))).
  - With O(outputs=true), the terms name the build's current outputs, what earlier
    states recorded with C(update-state output) (docs/outputs.md), and each gives its value.
  - With O(report=true), the terms name fields of the report instead, such as
    C(decision), C(next_state), C(current_state), C(status), C(reason) or C(epoch).
    Stale states count (their inputs under O(inputs_root)) unless O(inputs=false).
  - Reads the database on the controller (or the remote named by O(remote)); needs the
    C(buildstate) Python package in the Python that runs ansible-playbook.
version_added: 0.1.0
options:
  _terms:
    description: Metadata keys, or report fields with O(report=true), or outputs with O(outputs=true).
    required: true
    type: list
    elements: str
  build_id:
    description: The build. Defaults to the C(BUILDSTATE_BUILD_ID) environment variable.
    type: str
    env:
      - name: BUILDSTATE_BUILD_ID
  db:
    description: The database file. Defaults to C(BUILDSTATE_DB), then the commands' default.
    type: path
    env:
      - name: BUILDSTATE_DB
  remote:
    description: Remote mode (docs/sync.md). Defaults to C(BUILDSTATE_REMOTE).
    type: str
    env:
      - name: BUILDSTATE_REMOTE
  report:
    description: The terms name report fields (decision, next_state, ...) rather than metadata keys.
    type: bool
    default: false
  outputs:
    description: The terms name current outputs (C(ami_id) recorded by an earlier state) rather than metadata keys.
    type: bool
    default: false
  inputs:
    description: Whether the decision compares the inputs of completed states (C(check-state --no-inputs) when false).
    type: bool
    default: true
  inputs_root:
    description: What input globs are relative to. Defaults to C(BUILDSTATE_INPUTS_ROOT), then the working directory.
    type: path
    env:
      - name: BUILDSTATE_INPUTS_ROOT
  default:
    description: The value of a metadata key the build does not have; without it, a missing key is an error.
    type: raw
seealso:
  - module: buildstate.pipeline.state
author:
  - buildstate developers (@buildstate)
"""

EXAMPLES = r"""
- name: Use the AMI recorded by an earlier job
  ansible.builtin.debug:
    msg: "{{ lookup('buildstate.pipeline.build', 'ami_id') }}"

- name: Use the AMI state 5 recorded as an output
  ansible.builtin.debug:
    msg: "{{ lookup('buildstate.pipeline.build', 'ami_id', outputs=true) }}"

- name: Skip the play when its state needs no work
  ansible.builtin.meta: end_play
  when: lookup('buildstate.pipeline.build', 'decision', report=true) == 'completed'
"""

RETURN = r"""
_raw:
  description: One value per term.
  type: list
  elements: raw
"""

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

_IMPORT_ERROR = None
try:
    import buildstate
except ImportError as _error:
    buildstate = None
    _IMPORT_ERROR = str(_error)

_MISSING = object()


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        if buildstate is None:
            msg = "the buildstate Python package is not importable (%s): pip install it into the Python that runs ansible-playbook"
            raise AnsibleLookupError(msg % _IMPORT_ERROR)
        build_id = self.get_option("build_id")
        if not build_id:
            raise AnsibleLookupError("no build: pass build_id=..., or set BUILDSTATE_BUILD_ID")
        default = self.get_option("default") if self.get_option("default") is not None else _MISSING
        try:
            store = buildstate.Store(self.get_option("db"), create=False, tool="ansible", remote=self.get_option("remote"))
            report = store.decide(build_id, inputs=self.get_option("inputs"), inputs_root=self.get_option("inputs_root"))
        except buildstate.BuildstateError as e:
            raise AnsibleLookupError("buildstate: %s" % e)
        if not report.get("exists"):
            raise AnsibleLookupError("buildstate: build %r does not exist" % build_id)
        if self.get_option("report") and self.get_option("outputs"):
            raise AnsibleLookupError("buildstate: pass report=true or outputs=true, not both")
        if self.get_option("report"):
            source, what = report, "report field"
        elif self.get_option("outputs"):
            source = dict((k, o["value"]) for k, o in (report.get("outputs") or {}).items())
            what = "current output"
        else:
            source, what = report.get("metadata") or {}, "metadata key"
        values = []
        for term in terms:
            if term in source:
                values.append(source[term])
            elif default is not _MISSING:
                values.append(default)
            else:
                raise AnsibleLookupError("buildstate: build %r has no %s %r (known: %s)" % (build_id, what, term, ", ".join(sorted(source)) or "none"))
        return values
