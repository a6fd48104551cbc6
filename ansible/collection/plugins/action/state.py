# -*- coding: utf-8 -*-
# Licensed under the Apache License 2.0. The buildstate.pipeline.state module, run on the
# controller: every decision is the buildstate crate's, through its Python API.

from __future__ import annotations

import os

from ansible.plugins.action import ActionBase
from ansible_collections.buildstate.pipeline.plugins.module_utils.specs import (
    STATE_ARGS,
    STATE_REQUIRED_IF,
    STATE_REQUIRED_ONE_OF,
)

_IMPORT_ERROR = None
try:
    import buildstate
except ImportError as _error:  # reported as the task's failure
    buildstate = None
    _IMPORT_ERROR = str(_error)


def _view(report):
    """What diff mode shows of a build."""
    return {
        "current_state": report.get("current_state"),
        "status": report.get("status"),
        "active_state": report.get("active_state"),
        "metadata": dict(report.get("metadata") or {}),
    }


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        _validated, args = self.validate_argument_spec(
            argument_spec=STATE_ARGS,
            required_if=STATE_REQUIRED_IF,
            required_one_of=STATE_REQUIRED_ONE_OF,
        )
        if buildstate is None:
            return dict(
                result,
                failed=True,
                msg="the buildstate Python package is not importable (%s): pip install it into the Python that runs ansible-playbook" % _IMPORT_ERROR,
            )
        build_id = args["build_id"] or os.environ.get("BUILDSTATE_BUILD_ID")
        if not build_id:
            return dict(result, failed=True, msg="no build: set build_id, or BUILDSTATE_BUILD_ID")
        state = args["build_state"]
        if state is not None and not 0 <= state <= 100:
            return dict(result, failed=True, msg="build_state must be a state number from 0 to 100, not %d" % state)
        check = bool(self._task.check_mode or self._play_context.check_mode)
        try:
            store = buildstate.Store(args["db"], create=False, tool="ansible", remote=args["remote"])
            if state is None:
                before, done = store.decide(build_id, inputs=False), False
            else:
                answer = store.state_done(build_id, state, inputs=False)
                before, done = answer["report"], answer["done"]
            if not before.get("exists"):
                msg = "build %r does not exist in %s: create it with init-state (or the callback) first"
                return dict(result, failed=True, msg=msg % (build_id, store.path))
            meta = {str(k): str(v) for k, v in (args["metadata"] or {}).items()}
            changed_meta = {k: v for k, v in meta.items() if before["metadata"].get(k) != v}
            written = ["metadata %s" % k for k in sorted(changed_meta)]
            transition = args["transition"]
            if transition == "complete" and not done:
                written.append("complete %d" % state)
            elif transition == "fail":
                written.append("fail %d" % state)
            after = before
            if not check and written:
                if changed_meta:
                    after = store.meta(build_id, changed_meta)
                if transition == "complete" and not done:
                    after = store.complete(build_id, state, inputs=args["inputs"], inputs_root=args["inputs_root"])
                elif transition == "fail":
                    after = store.fail(build_id, state, args["error"], category=args["category"])
        except buildstate.BuildstateError as e:
            return dict(result, failed=True, msg=str(e), exit_code=e.exit_code)
        result.update(changed=bool(written), build=after, written=written)
        if self._task.diff or self._play_context.diff:
            predicted = _view(after if not check else before)
            if check:
                predicted["metadata"].update(changed_meta)
                if transition == "complete" and not done:
                    predicted["current_state"], predicted["status"], predicted["active_state"] = state, "pending", None
                elif transition == "fail":
                    predicted["active_state"], predicted["status"] = state, "waiting or blocked"
            result["diff"] = {"before": _view(before), "after": predicted}
        if check and written:
            result["msg"] = "check mode: would record %s" % ", ".join(written)
        return result
