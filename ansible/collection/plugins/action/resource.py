# -*- coding: utf-8 -*-
# Licensed under the Apache License 2.0. The buildstate.pipeline.resource module, run on
# the controller: every decision is the buildstate crate's, through its Python API.

from __future__ import annotations

import os

from ansible.plugins.action import ActionBase
from ansible_collections.buildstate.pipeline.plugins.module_utils.specs import RESOURCE_ARGS

_IMPORT_ERROR = None
try:
    import buildstate
except ImportError as _error:  # reported as the task's failure
    buildstate = None
    _IMPORT_ERROR = str(_error)


def _find(ledger, rtype, rid):
    """The newest registration of (type, id), if any."""
    found = [r for r in ledger if r["type"] == rtype and r["id"] == rid]
    return found[-1] if found else None


def _exists(resource):
    return resource is not None and resource["status"] in ("present", "cleanup_failed")


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        _validated, args = self.validate_argument_spec(argument_spec=RESOURCE_ARGS)
        if buildstate is None:
            return dict(
                result,
                failed=True,
                msg="the buildstate Python package is not importable (%s): pip install it into the Python that runs ansible-playbook" % _IMPORT_ERROR,
            )
        build_id = args["build_id"] or os.environ.get("BUILDSTATE_BUILD_ID")
        if not build_id:
            return dict(result, failed=True, msg="no build: set build_id, or BUILDSTATE_BUILD_ID")
        check = bool(self._task.check_mode or self._play_context.check_mode)
        rtype, rid, present = args["type"], args["id"], args["state"] == "present"
        try:
            store = buildstate.Store(args["db"], create=False, tool="ansible", remote=args["remote"])
            before = _find(store.resources(build_id), rtype, rid)
            changed = present != _exists(before)
            after = before
            if changed and not check:
                if present:
                    props = {str(k): str(v) for k, v in (args["props"] or {}).items()}
                    store.resource_add(build_id, rtype, rid, props=props, cleanup=args["cleanup"], check=args["check"], state=args["build_state"])
                else:
                    store.resource_delete(build_id, rtype, rid)
                after = _find(store.resources(build_id), rtype, rid)
        except buildstate.BuildstateError as e:
            return dict(result, failed=True, msg=str(e), exit_code=e.exit_code)
        result.update(changed=changed, resource=after)
        if self._task.diff or self._play_context.diff:
            status = (before or {}).get("status", "none")
            predicted = (after or {}).get("status", "none") if not check else ("present" if present else ("deleted" if before else "none"))
            result["diff"] = {"before": {"status": status}, "after": {"status": predicted}}
        if check and changed:
            result["msg"] = "check mode: would record %s %s as %s" % (rtype, rid, "created" if present else "deleted")
        return result
