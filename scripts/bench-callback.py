"""Per-task cost of the buildstate callback, measured in-process.

The end-to-end playbook timing (scripts/bench ansible) swings by +-15% between identical
runs on a shared VM, more than the few percent it is meant to resolve. This drives the real
callback object with minimal stand-ins for Ansible's host/task/result objects (the attributes
the callback reads), times what it adds to each task on the controller, and relates that to
the duration of a task measured in the same run's playbooks.

Usage: python scripts/bench-callback.py DB BUILD_ID [TASKS]
"""

import statistics
import sys
import time
import uuid

import buildstate.ansible
from ansible.plugins.loader import callback_loader

db, build_id = sys.argv[1], sys.argv[2]
tasks = int(sys.argv[3]) if len(sys.argv) > 3 else 3000
# Through Ansible's own loader, so that the plugin's DOCUMENTATION options are registered.
callback_loader.add_directory(buildstate.ansible.plugin_dir())


class Host:
    def __init__(self, name):
        self.name = name

    def get_name(self):
        return self.name


class Task:
    def __init__(self, i):
        self._uuid = uuid.uuid4().hex
        self.name = "task %d" % i

    def get_name(self):
        return self.name


class Result:
    def __init__(self, host, task):
        self.host, self.task, self.result = host, task, {"changed": False, "msg": "ok"}

    def is_changed(self):
        return False


class Stats:
    processed = {"localhost": 1}

    def summarize(self, host):
        return {"ok": 0, "failures": 0, "unreachable": 0, "changed": 0, "skipped": 0, "rescued": 0, "ignored": 0}


cb = callback_loader.get("buildstate")
assert cb is not None, "the buildstate callback was not found"
cb.set_options(direct={"db": db, "build_id": build_id, "record_tasks": True})
cb._stats = Stats()
cb._begin(15, "play 'bench'")
assert cb._active == 15, "the state did not start: is the build at state 10?"
host = Host("localhost")
per_task = []
for i in range(tasks):
    task = Task(i)
    t0 = time.perf_counter()
    cb.v2_runner_on_start(host, task)
    cb.v2_runner_on_ok(Result(host, task))
    per_task.append(time.perf_counter() - t0)
t0 = time.perf_counter()
cb._finish()
cb._store.flush()
finish = time.perf_counter() - t0
recorded = sum(1 for e in cb._store.events(build_id) if e["kind"] == "task")
assert recorded == tasks, (recorded, tasks)
print("%d\t%.1f\t%.1f\t%.2f" % (tasks, statistics.median(per_task) * 1e6, statistics.mean(per_task) * 1e6, finish * 1e3))
