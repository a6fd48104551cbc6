# buildstate callback plugin for Ansible: playbooks advance build states by themselves.
# Licensed under the Apache License 2.0. All state logic lives in the buildstate crate;
# this file maps Ansible's events onto it and keeps the playbook running whatever happens
# to the database.

from __future__ import annotations

DOCUMENTATION = r"""
name: buildstate
type: notification
short_description: Advance buildstate build states as plays run, and record task results
description:
  - Records an image build's progress in a buildstate database, the same SQLite file that
    the C(init-state), C(check-state) and C(run-state) commands use.
  - A play with the variable C(buildstate_state) (in C(vars), C(vars_files) or extra vars,
    templated as Ansible does) advances that state. The state is started when the play's
    first task other than C(meta) and fact gathering starts, and completed or failed when
    the play ends (after its last batch under C(serial)), judged from the playbook's
    statistics; rescued and ignored failures do not fail it. A play that runs no such task
    (C(--limit), C(--tags), C(--start-at-task)) records nothing and says so.
  - Re-running a playbook resumes it. A play whose state is already completed is reported
    in one line and records nothing; the state that is due (an interrupted or failed state
    whose retry is due) is started when its play starts; later plays are recorded as
    usual. A play the build refuses (out of order, a retry not yet due) is reported and
    not recorded, and the plays after it still are.
  - Check mode (C(--check), or a play with C(check_mode) set) records nothing and says so.
  - When no play sets C(buildstate_state), the O(state) option maps the whole playbook to
    one state.
  - A failure message names every failed or unreachable host with the task and the
    module's message (secrets redacted, size bounded). If every failing host was
    unreachable, the failure is classified as transient.
  - A completed state records the SHA-256 of its inputs, the plan's declared ones and
    the files of the roles and task files its play loaded (relative to O(inputs_root)).
    When one of them changes, the state is stale; re-running the playbook runs its play
    again (and every later one), and C(check-state) decides C(rerun).
  - O(force) (or the extra variable C(buildstate_force)) marks a state and every later
    one to run again before the first play starts, as C(update-state force).
  - Task results are recorded as events (task, host, status, duration) when
    O(record_tasks) is on. SIGINT or SIGTERM marks the running state as interrupted.
  - A state that waits for other builds (its plan's C(after), or C(init-state --after))
    holds its play before the first task until they hold, looking again every 2 seconds,
    for at most O(parent_wait) seconds, as C(run-state --max-wait) does. If they still do
    not hold, the playbook stops (exit 12, as C(check-state)'s wait) with what each
    parent lacks, and nothing is recorded.
  - Trouble of its own (a missing or locked database, an unknown build) prints one warning
    and lets the playbook run on, unless O(strict) is on, which fails the playbook.
requirements:
  - the C(buildstate) Python package in the Python that runs ansible-playbook
options:
  db:
    description:
      - The buildstate database file. The same variable the buildstate commands read.
      - Defaults to the commands' default, C($XDG_STATE_HOME/buildstate/buildstate.db).
    type: path
    env:
      - name: BUILDSTATE_DB
    ini:
      - section: callback_buildstate
        key: db
  build_id:
    description:
      - The build to advance. Create it first with C(init-state), or set O(cloud) and
        O(image) and the callback creates it (and the database) when it is missing.
    type: str
    env:
      - name: BUILDSTATE_BUILD_ID
    ini:
      - section: callback_buildstate
        key: build_id
  cloud:
    description:
      - The cloud provider of a build the callback creates when it does not exist yet,
        as C(init-state --cloud). With O(image); an existing build must match them.
    type: str
    env:
      - name: BUILDSTATE_CLOUD
    ini:
      - section: callback_buildstate
        key: cloud
  image:
    description: The image type of a build the callback creates, as C(init-state --image).
    type: str
    env:
      - name: BUILDSTATE_IMAGE
    ini:
      - section: callback_buildstate
        key: image
  lease_ttl:
    description:
      - Seconds the lease on a running state lives without renewal. The callback renews
        it every third of that while the play runs; if ansible-playbook dies, the state
        becomes resumable by another worker once it runs out.
    type: int
    default: 60
    env:
      - name: BUILDSTATE_LEASE_TTL_SECONDS
    ini:
      - section: callback_buildstate
        key: lease_ttl
  state:
    description: The state the whole playbook advances, when no play sets C(buildstate_state).
    type: int
    env:
      - name: BUILDSTATE_STATE
    ini:
      - section: callback_buildstate
        key: state
  strict:
    description: Fail the playbook when the callback cannot record, instead of warning once.
    type: bool
    default: false
    env:
      - name: BUILDSTATE_STRICT
    ini:
      - section: callback_buildstate
        key: strict
  record_tasks:
    description: Record every task result on every host as an event.
    type: bool
    default: true
    env:
      - name: BUILDSTATE_RECORD_TASKS
    ini:
      - section: callback_buildstate
        key: record_tasks
  inputs_root:
    description:
      - The directory the plan's input globs, and the role and task files recorded, are
        relative to. Defaults to the working directory, as for the commands.
    type: path
    env:
      - name: BUILDSTATE_INPUTS_ROOT
    ini:
      - section: callback_buildstate
        key: inputs_root
  force:
    description:
      - A state number, or C(all), to run again from, before the first play starts
        (recorded with O(force_reason) and who ran the playbook). The extra variable
        C(buildstate_force) does the same.
    type: str
    env:
      - name: BUILDSTATE_FORCE
    ini:
      - section: callback_buildstate
        key: force
  force_reason:
    description: Why O(force) is given, recorded with it.
    type: str
    default: forced from ansible-playbook
    env:
      - name: BUILDSTATE_FORCE_REASON
    ini:
      - section: callback_buildstate
        key: force_reason
  parent_wait:
    description:
      - Seconds a play whose state waits for other builds waits for them before the
        playbook stops (exit 12). C(0) stops at once.
      - A whole number of seconds, 0 or more (empty means the default); anything else stops
        the playbook before its first play (exit 2) rather than let it run without
        waiting.
    type: str
    default: "3600"
    env:
      - name: BUILDSTATE_PARENT_WAIT
    ini:
      - section: callback_buildstate
        key: parent_wait
  busy_timeout:
    description: Milliseconds to wait for another writer before giving up.
    type: int
    default: 5000
    env:
      - name: BUILDSTATE_BUSY_TIMEOUT
    ini:
      - section: callback_buildstate
        key: busy_timeout
"""

import atexit
import os
import signal
import sys
import time

from ansible import context
from ansible.plugins.callback import CallbackBase

_IMPORT_ERROR = None
try:
    import buildstate
except ImportError as _error:  # reported as a warning (or strict failure) at playbook start
    buildstate = None
    _IMPORT_ERROR = str(_error)

# Tasks that are no work of the play's own: they neither start its state nor count as work.
NO_WORK_ACTIONS = frozenset(
    (
        "meta", "ansible.builtin.meta", "ansible.legacy.meta",
        "gather_facts", "ansible.builtin.gather_facts",
        "setup", "ansible.builtin.setup", "ansible.legacy.setup",
    )
)

# One host's line in a failure message, and the whole message, at most.
MAX_HOST_CHARS = 1000
MAX_MESSAGE_CHARS = 16 * 1024


def _bounded(text, limit):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "buildstate"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, display=None):
        super().__init__(display=display)
        self._store = None
        self._off = False  # after trouble (not strict): record nothing more
        self._build_id = None
        self._playbook_state = None  # the state mapped to the whole playbook, if any
        self._active = None  # the state we started and have not finished
        self._label = ""  # "play 'name'" or "playbook 'file'"
        self._stats = None  # the run's AggregateStats
        self._baseline = {}  # host -> stats.summarize(host) when the active state started
        self._rescued_seen = {}  # host -> rescued count already attributed
        self._problems = {}  # host -> (task name, message, unreachable) in the active state
        self._task_started = {}  # (host, task uuid) -> time.monotonic()
        self._previous_handlers = {}
        self._pid = os.getpid()
        self._pending = None  # (state, label): the play's state, started at its first task
        self._play_uuid = None  # the play being run (its batches share it under serial)
        self._check = False  # ansible-playbook --check: record nothing
        self._play_check = False  # the current play runs in check mode: record nothing of it
        self._inputs = set()  # globs of the role and task files the active state's play loaded
        self._forced = False  # the force option has been applied
        self._playbook_file = None  # its own tasks are not an input of one play's state

    def set_options(self, task_keys=None, var_options=None, direct=None):
        super().set_options(task_keys=task_keys, var_options=var_options, direct=direct)
        self._db = self.get_option("db")
        self._build_id = self.get_option("build_id")
        self._playbook_state = self.get_option("state")
        self._strict = self.get_option("strict")
        self._record_tasks = self.get_option("record_tasks")
        self._busy_timeout = self.get_option("busy_timeout")
        self._cloud = self.get_option("cloud")
        self._image = self.get_option("image")
        self._lease_ttl = self.get_option("lease_ttl")
        self._parent_wait = self._seconds("parent_wait", self.get_option("parent_wait"))
        self._inputs_root = self.get_option("inputs_root")
        self._force = self.get_option("force")
        self._force_reason = self.get_option("force_reason")

    # --- trouble handling: never break a playbook unless asked to -------------------------

    def _trouble(self, message):
        message = "buildstate: " + message
        if self._strict:
            self._display.error(message + " (strict mode: stopping the playbook)")
            # SystemExit is not an Exception, so Ansible's callback dispatch lets it through.
            raise SystemExit(1)
        self._display.warning(message + "; the playbook goes on without recording build states")
        self._off = True

    def _record(self, what, fn, *args, **kwargs):
        if self._off:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # anything of ours: a warning, not a traceback
            self._trouble("could not %s: %s" % (what, e))
            return None

    def _open(self):
        if self._store is not None:
            return self._store
        if buildstate is None:
            raise RuntimeError("the buildstate Python package is not importable (%s): pip install it into the Python that runs ansible" % _IMPORT_ERROR)
        if not self._build_id:
            raise RuntimeError("no build id: set BUILDSTATE_BUILD_ID or build_id in [callback_buildstate]")
        create = bool(self._cloud and self._image)
        try:
            store = buildstate.Store(self._db, create=create, busy_timeout_ms=self._busy_timeout, tool="ansible")
        except buildstate.NoDatabaseError as e:
            raise RuntimeError("%s; or set BUILDSTATE_CLOUD and BUILDSTATE_IMAGE so that the callback creates the build" % e)
        if create:
            # Creates the build, or confirms an existing one has this identity.
            store.init(self._build_id, self._cloud, self._image)
        elif not store.decide(self._build_id, inputs=False)["exists"]:
            raise RuntimeError(
                "build %r is not in %s: create it with init-state first, or set BUILDSTATE_CLOUD and BUILDSTATE_IMAGE so that the callback creates it"
                % (self._build_id, store.path)
            )
        self._store = store
        return store

    # --- states ----------------------------------------------------------------------------

    def _say(self, message):
        self._display.display("buildstate: " + message)

    def _begin(self, state, label):
        store = self._record("open the database", self._open)
        if store is None:
            return
        answer = self._record("read the build", store.state_done, self._build_id, state, inputs_root=self._inputs_root)
        if answer is None:
            return
        if answer["done"]:
            self._say("%s: state %s is already completed (the build is at %s); nothing recorded" % (label, state, answer["report"].get("current_state")))
            return
        if not self._parents_hold(store, state, label, answer["report"]):
            return
        self._record("record the context", store.set_context, {"ansible_run": label})
        try:
            store.start(self._build_id, state, lease_ttl_ms=int(self._lease_ttl) * 1000, inputs_root=self._inputs_root)
        except (buildstate.RefusedError, buildstate.BlockedError, buildstate.LeasedError, buildstate.LeaseLostError) as e:
            # This play's state cannot start now; the build and the plays after it are fine.
            self._display.warning("buildstate: %s: state %s is not recorded: %s" % (label, state, e))
            return
        except Exception as e:
            self._trouble("could not start state %s: %s" % (state, e))
            return
        self._active, self._label = state, label
        self._baseline = self._snapshot()
        self._problems = {}

    def _seconds(self, name, value):
        """A whole number of seconds, 0 or more (empty: the default, 3600); else the
        playbook stops (exit 2): a gate
        whose setting is wrong must not let the play run as if nothing waited."""
        text = str(value).strip() or "3600"
        if not text.isdigit() or not text.isascii():
            self._display.error(
                "buildstate: %s must be a whole number of seconds, 0 or more, not %r; stopping the playbook, nothing recorded"
                % (name, _bounded(str(value), 100))
            )
            raise SystemExit(2)
        return int(text)

    def _parents_hold(self, store, state, label, report):
        """Hold the play until the builds its state waits for hold, within parent_wait;
        stop the playbook (exit 12) if they do not. False when the callback is off."""
        deadline = time.monotonic() + self._parent_wait
        said = False
        waited = time.monotonic()
        while report.get("decision") == "wait" and report.get("waiting_for") and report.get("next_state") == state:
            if not said:
                self._say("%s: state %s waits for other builds (up to %ss): %s" % (label, state, self._parent_wait, report.get("reason")))
                said = True
            if time.monotonic() >= deadline:
                why = report.get("reason")
                self._display.error(
                    "buildstate: %s: state %s still waits for other builds after %ss: %s; stopping the playbook, nothing recorded"
                    % (label, state, self._parent_wait, why)
                )
                raise SystemExit(12)
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
            answer = self._record("read the build", store.state_done, self._build_id, state, inputs_root=self._inputs_root)
            if answer is None:
                return False
            report = answer["report"]
        if said:
            self._say("%s: the builds state %s waits for hold, after %.0fs" % (label, state, time.monotonic() - waited))
        return True

    def _snapshot(self):
        if self._stats is None:
            return {}
        return {host: self._stats.summarize(host) for host in self._stats.processed}

    def _finish(self):
        """Complete or fail the active state, judged from the statistics since it began."""
        if self._pending is not None:
            state, label = self._pending
            self._pending = None
            self._say("%s ran no task: state %s is not recorded" % (label, state))
        if self._active is None:
            return
        state, self._active = self._active, None
        failed = []  # (host, failures, unreachable)
        if self._stats is not None:
            for host in self._stats.processed:
                now, before = self._stats.summarize(host), self._baseline.get(host, {})
                failures = now["failures"] - before.get("failures", 0)
                unreachable = now["unreachable"] - before.get("unreachable", 0)
                if failures > 0 or unreachable > 0:
                    failed.append((host, failures, unreachable))
        else:  # no statistics object found: fall back on what the callbacks told us
            failed = [(h, 0 if u else 1, 1 if u else 0) for h, (_task, _why, u) in self._problems.items()]
        if not failed:
            inputs, self._inputs = sorted(self._inputs), set()
            self._record(
                "complete state %s" % state,
                self._store.complete,
                self._build_id,
                state,
                inputs=inputs,
                inputs_root=self._inputs_root,
            )
            return
        # One line, so that one-line summaries (check-state, history) show every host.
        details = []
        for host, failures, unreachable in sorted(failed):
            task, why, _unreachable = self._problems.get(host, ("?", "failed", bool(unreachable)))
            what = "%s (unreachable)" % host if unreachable and not failures else host
            details.append(_bounded("%s: task '%s': %s" % (what, task, why), MAX_HOST_CHARS))
        message = "%s failed on %d host(s): %s" % (self._label, len(failed), "; ".join(details))
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 1] + "…"
        only_unreachable = all(f == 0 for _host, f, _unreachable in failed)
        self._record(
            "fail state %s" % state,
            self._store.fail,
            self._build_id,
            state,
            message,
            category="transient" if only_unreachable else None,
        )

    # --- Ansible events --------------------------------------------------------------------

    def v2_playbook_on_start(self, playbook):
        self._stats = self._find_stats()
        name = getattr(playbook, "_file_name", None)
        self._playbook_file = os.path.realpath(name) if name else None
        self._check = bool((context.CLIARGS or {}).get("check"))
        if self._check:
            self._say("check mode: no build state or task result is recorded")
            self._off = True
            return
        self._install_signal_handlers()
        if self._playbook_state is not None:
            self._apply_force(None)
            self._begin(int(self._playbook_state), "playbook '%s'" % os.path.basename(playbook._file_name))
        else:
            # Open now: trouble is reported at the start, and task results are recorded
            # even in plays that advance no state.
            self._record("open the database", self._open)

    def v2_playbook_on_play_start(self, play):
        if self._playbook_state is not None:
            # The whole playbook is one state: every play's roles are its inputs.
            for role in self._roles(play):
                self._add_input(getattr(role, "_role_path", None), directory=True)
            return
        uuid = getattr(play, "_uuid", None)
        if uuid is not None and uuid == self._play_uuid:
            return  # the next batch of a rolling (serial) play: the same state goes on
        self._finish()
        self._apply_force(play)
        self._play_uuid = uuid
        self._play_check = getattr(play, "check_mode", None) is True
        label = "play '%s'" % play.get_name()
        state = self._play_state(play, label)
        if state is None:
            return
        self._inputs = set()
        for role in self._roles(play):
            self._add_input(getattr(role, "_role_path", None), directory=True)
        if self._check or self._play_check:
            self._say("%s: check mode, state %s is not recorded" % (label, state))
            return
        self._pending = (state, label)

    def _play_state(self, play, label):
        """The play's buildstate_state, resolved as Ansible resolves variables (vars,
        vars_files, extra vars, templating); None when it has none or it is not a state."""
        raw = (getattr(play, "vars", None) or {}).get("buildstate_state")
        value = raw
        try:
            manager = getattr(play, "_variable_manager", None)
            if manager is not None:
                from ansible.template import Templar

                variables = manager.get_vars(play=play)
                if "buildstate_state" in variables:
                    value = Templar(loader=play._loader, variables=variables).template(variables["buildstate_state"])
        except Exception as e:
            self._display.warning("buildstate: %s: could not resolve buildstate_state (%s); the play is not recorded" % (label, e))
            return None
        if value is None:
            return None
        try:
            state = int(str(value).strip())
        except (TypeError, ValueError):
            state = None
        if state is None or not 0 <= state <= 100:
            self._display.warning("buildstate: %s: buildstate_state must be a state number from 0 to 100, not %r; the play is not recorded" % (label, value))
            return None
        return state

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._start_pending(task)
        self._add_task_file(task)

    def v2_playbook_on_handler_task_start(self, task):
        self._start_pending(task)
        self._add_task_file(task)

    def v2_playbook_on_include(self, included_file):
        self._add_input(getattr(included_file, "_filename", None))

    # --- inputs: the files a state's play loaded ---------------------------------------------

    @staticmethod
    def _roles(play):
        roles = []
        try:
            for role in play.get_roles() or []:
                roles.append(role)
                roles.extend(role.get_all_dependencies() or [])
        except Exception:
            pass
        return roles

    def _add_task_file(self, task):
        try:
            path = task.get_path()  # "file:line"
        except Exception:
            return
        if path:
            self._add_input(path.rsplit(":", 1)[0])

    def _add_input(self, path, directory=False):
        """Record `path` (a role's directory: every file under it) as an input of the
        play's state, as a glob relative to the inputs root; paths outside it are left out."""
        if not path or self._off:
            return
        root = os.path.realpath(self._inputs_root or os.getcwd())
        full = os.path.realpath(path)
        if not directory and not os.path.isfile(full):
            return
        if full == self._playbook_file:
            return  # every play's tasks are in it: an edit would make every state stale
        rel = os.path.relpath(full, root)
        if rel == ".." or rel.startswith(".." + os.sep) or os.path.isabs(rel):
            return
        glob = "".join("[%s]" % c if c in "*?[]{}\\" else c for c in rel.replace(os.sep, "/"))
        if not directory and any(g.endswith("/**") and glob.startswith(g[:-2]) for g in self._inputs):
            return  # a task file of a role already recorded whole
        self._inputs.add(glob + "/**" if directory else glob)

    def _apply_force(self, play):
        """Apply the force option (or -e buildstate_force=N) once, before any state starts."""
        if self._forced or self._off or self._check:
            return
        self._forced = True
        force = self._force
        try:
            extra = getattr(getattr(play, "_variable_manager", None), "extra_vars", None) or {}
            force = extra.get("buildstate_force", force)
        except Exception:
            pass
        if force is None or str(force).strip() == "":
            return
        store = self._record("open the database", self._open)
        if store is None:
            return
        text = str(force).strip()
        if text.lower() == "all":
            state = None
        else:
            try:
                state = int(text)
            except ValueError:
                self._trouble("buildstate_force must be a state number or 'all', not %r" % text)
                return
        try:
            store.force(self._build_id, state, reason=self._force_reason)
        except (buildstate.RefusedError, buildstate.InvalidInputError) as e:
            self._display.warning("buildstate: force %s is not recorded: %s" % (text, e))
            return
        except Exception as e:
            self._trouble("could not force %s: %s" % (text, e))
            return
        self._say("forced %s to run again: %s" % ("every state" if state is None else "state %d and every later state" % state, self._force_reason))

    def _start_pending(self, task):
        """The play's state starts with its first task that is work of its own."""
        if self._pending is None:
            return
        if getattr(task, "action", None) in NO_WORK_ACTIONS or getattr(task, "implicit", False) or getattr(task, "check_mode", None) is True:
            return
        (state, label), self._pending = self._pending, None
        self._begin(state, label)

    def v2_playbook_on_stats(self, stats):
        self._stats = self._stats or stats
        self._finish()
        if self._store is not None:
            self._record("write the task results", self._store.flush)
        self._restore_signal_handlers()

    def v2_runner_on_start(self, host, task):
        self._task_started[(host.get_name(), task._uuid)] = time.monotonic()

    def v2_runner_on_ok(self, result):
        self._task(result, "changed" if result.is_changed() else "ok")

    def v2_runner_on_skipped(self, result):
        self._task(result, "skipped")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        host = result.host.get_name()
        message = self._module_message(result)
        if ignore_errors:
            status = "ignored"
        elif self._was_rescued(host):
            status = "rescued"
        else:
            status = "failed"
            self._problems[host] = (result.task.get_name(), message, False)
        self._task(result, status, message)

    def v2_runner_on_unreachable(self, result):
        host = result.host.get_name()
        message = self._module_message(result)
        self._problems.setdefault(host, (result.task.get_name(), message, True))
        self._task(result, "unreachable", message)

    # --- helpers ---------------------------------------------------------------------------

    def _was_rescued(self, host):
        """Ansible counts a rescued failure in the statistics before calling us."""
        if self._stats is None:
            return False
        rescued = self._stats.summarize(host).get("rescued", 0)
        if rescued > self._rescued_seen.get(host, 0):
            self._rescued_seen[host] = rescued
            return True
        return False

    @staticmethod
    def _module_message(result):
        r = result.result or {}
        text = r.get("msg") or r.get("stderr") or r.get("module_stderr") or r.get("exception") or "failed"
        return _bounded(text, MAX_HOST_CHARS)

    def _task(self, result, status, message=None):
        if not self._record_tasks or self._off or self._store is None or self._play_check:
            return
        if getattr(result.task, "check_mode", None) is True:
            return  # a preview of a task is no result of it
        host, task = result.host.get_name(), result.task
        started = self._task_started.pop((host, task._uuid), None)
        duration = int((time.monotonic() - started) * 1000) if started is not None else None
        self._record(
            "record a task result",
            self._store.task,
            self._build_id,
            task.get_name(),
            host,
            status,
            state=self._active,
            duration_ms=duration,
            message=message,
        )

    @staticmethod
    def _find_stats():
        """The run's AggregateStats. Callbacks are not handed it before the end, but the
        TaskQueueManager dispatching this event holds it; rescued failures are only told
        apart from real ones there."""
        frame = sys._getframe(1)
        for _depth in range(8):
            if frame is None:
                break
            stats = getattr(frame.f_locals.get("self"), "_stats", None)
            if stats is not None and hasattr(stats, "summarize"):
                return stats
            frame = frame.f_back
        return None

    # --- interruption ------------------------------------------------------------------------

    def _install_signal_handlers(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous_handlers[sig] = signal.getsignal(sig)
                signal.signal(sig, self._on_signal)
            except (ValueError, OSError):  # not the main thread
                pass
        atexit.register(self._on_exit)

    def _restore_signal_handlers(self):
        for sig, handler in self._previous_handlers.items():
            try:
                signal.signal(sig, handler)
            except (ValueError, OSError, TypeError):
                pass
        self._previous_handlers = {}

    def _interrupt(self, why):
        # Only the controller records: forked workers inherit this handler too.
        if self._active is None or self._store is None or self._off or os.getpid() != self._pid:
            return
        state, self._active = self._active, None
        try:
            self._store.interrupt(self._build_id, state, why)
        except Exception as e:
            self._display.warning("buildstate: could not record the interruption of state %s: %s" % (state, e))

    def _flush_quietly(self):
        if self._store is not None and not self._off and os.getpid() == self._pid:
            try:
                self._store.flush()
            except Exception as e:
                self._display.warning("buildstate: could not write the last task results: %s" % e)

    def _on_signal(self, signum, frame):
        self._interrupt(signal.Signals(signum).name)
        # Whether or not a state was running, the task results queued so far are written
        # before the signal takes its course (which may end the process at once).
        self._flush_quietly()
        previous = self._previous_handlers.get(signum, signal.SIG_DFL)
        signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            os.kill(os.getpid(), signum)

    def _on_exit(self):
        self._interrupt("ansible-playbook exiting before the play ended")
        self._flush_quietly()
