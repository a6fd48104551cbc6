//! The report every binary prints: the build's summary, the decision, metadata and
//! (on request) history, as text for people and as JSON for scripts. Also the files
//! `check-state --output DIR` writes for a Concourse task.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::SystemTime;

use serde::Serialize;

use crate::decide::{decide, headline, Decision};
use crate::model::{Build, Event, Status};
use crate::plan::Plan;
use crate::policy::Category;
use crate::store::Store;
use crate::{time, Error, Result};

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub build_id: String,
    /// False when there is no record of the build (decision "start").
    pub exists: bool,
    pub lineage: Option<String>,
    /// 0 when the build does not exist.
    pub serial: u64,
    pub cloud: Option<String>,
    pub image: Option<String>,
    pub plan: String,
    pub plan_hash: Option<String>,
    pub current_state: Option<u8>,
    pub current_state_name: Option<String>,
    pub status: Option<Status>,
    pub active_state: Option<u8>,
    pub attempt: u32,
    /// 1, plus one for every `update-state reset` (0 when the build does not exist).
    pub epoch: u32,
    #[serde(flatten)]
    pub decision: Decision,
    /// check-state's exit code for this decision.
    pub exit_code: i32,
    pub last_error: Option<String>,
    pub last_category: Option<Category>,
    /// Who holds the build while a state runs, and until when (renewed by heartbeats
    /// under run-state and the Ansible callback).
    pub lease_owner: Option<String>,
    #[serde(with = "crate::time::rfc3339::option")]
    pub lease_expires_at: Option<SystemTime>,
    #[serde(with = "crate::time::rfc3339::option")]
    pub created_at: Option<SystemTime>,
    #[serde(with = "crate::time::rfc3339::option")]
    pub updated_at: Option<SystemTime>,
    pub metadata: BTreeMap<String, String>,
    /// What the states produced that is current, by key (`update-state output`:
    /// docs/outputs.md): its value, the state and attempt that recorded it, and when.
    pub outputs: BTreeMap<String, crate::outputs::Output>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<Event>>,
    /// init only: whether this call created the build.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<bool>,
    /// init with `--reuse-from` only: the states reused, and why the next was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reuse: Option<crate::reuse::Outcome>,
    /// Outcomes of this build journaled on this machine that wait to be shared with the
    /// remote (remote mode, after an outage: docs/sync.md).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub journaled: Vec<crate::share::Waiting>,
}

impl Report {
    /// Whether `state` is done for a front end about to run it (an Ansible play, the
    /// state module's `complete`): the build is completed, or the state is at or before
    /// the current one and is not the one running; unless the decision reruns it (a
    /// stale state at or before it). Otherwise starting it is the next step (the start
    /// records a rerun first).
    pub fn state_done(&self, state: u8) -> bool {
        let done = self.status == Some(Status::Completed)
            || (self.current_state.is_some_and(|c| state <= c) && self.active_state != Some(state));
        let rerun = self.decision.decision == crate::decide::Action::Rerun
            && self.decision.next_state.is_some_and(|from| state >= from);
        done && !rerun
    }

    /// Report on `build_id`. `store` is `None` when the database does not exist yet;
    /// `fallback_plan` is the plan reported for a build that does not exist.
    pub fn load(
        store: Option<&Store>,
        build_id: &str,
        fallback_plan: &Plan,
        now: SystemTime,
        with_history: bool,
    ) -> Result<Report> {
        crate::model::validate_build_id(build_id)?;
        let build = store.map(|s| s.build(build_id)).transpose()?.flatten();
        match (store, build) {
            (Some(store), Some(b)) => {
                let plan = store.plan(&b.plan_hash)?;
                let metadata = store.metadata(build_id)?;
                let history = with_history.then(|| store.events(build_id)).transpose()?;
                let mut r = Report::of(&b, &plan, metadata, history, now);
                r.epoch = store.epoch(build_id)?;
                r.outputs = store.outputs(build_id)?;
                r.journaled = store
                    .journaled(None, Some(build_id))?
                    .iter()
                    .map(crate::share::Waiting::of)
                    .collect();
                Ok(r)
            }
            _ => {
                let decision = decide(None, fallback_plan, now);
                Ok(Report {
                    build_id: build_id.to_string(),
                    exists: false,
                    lineage: None,
                    serial: 0,
                    cloud: None,
                    image: None,
                    plan: fallback_plan.name.clone(),
                    plan_hash: None,
                    current_state: None,
                    current_state_name: None,
                    status: None,
                    active_state: None,
                    attempt: 0,
                    epoch: 0,
                    exit_code: decision.decision.exit_code(),
                    decision,
                    last_error: None,
                    last_category: None,
                    lease_owner: None,
                    lease_expires_at: None,
                    created_at: None,
                    updated_at: None,
                    metadata: BTreeMap::new(),
                    outputs: BTreeMap::new(),
                    history: with_history.then(Vec::new),
                    created: None,
                    reuse: None,
                    journaled: Vec::new(),
                })
            }
        }
    }

    fn of(
        b: &Build,
        plan: &Plan,
        metadata: BTreeMap<String, String>,
        history: Option<Vec<Event>>,
        now: SystemTime,
    ) -> Report {
        let decision = decide(Some(b), plan, now);
        Report {
            build_id: b.build_id.clone(),
            exists: true,
            lineage: Some(b.lineage.clone()),
            serial: b.serial,
            cloud: Some(b.cloud.clone()),
            image: Some(b.image.clone()),
            plan: plan.name.clone(),
            plan_hash: Some(b.plan_hash.clone()),
            current_state: b.current_state,
            current_state_name: b
                .current_state
                .and_then(|s| plan.state(s))
                .map(|s| s.name.clone()),
            status: Some(b.status),
            active_state: b.active_state,
            attempt: b.attempt,
            epoch: 1,
            exit_code: decision.decision.exit_code(),
            decision,
            last_error: b.last_error.clone(),
            last_category: b.last_category,
            lease_owner: b.lease_owner.clone(),
            lease_expires_at: b.lease_expires_at,
            created_at: Some(b.created_at),
            updated_at: Some(b.updated_at),
            metadata,
            outputs: BTreeMap::new(),
            history,
            created: None,
            reuse: None,
            journaled: Vec::new(),
        }
    }

    /// The report on a build just written, with the plan it was judged by: what every
    /// command (and the Python API) answers after a write.
    pub fn after_write(store: &Store, b: &Build, now: SystemTime) -> Result<(Report, Plan)> {
        let plan = store.plan(&b.plan_hash)?;
        let mut report = Report::of(b, &plan, store.metadata(&b.build_id)?, None, now);
        report.epoch = store.epoch(&b.build_id)?;
        report.outputs = store.outputs(&b.build_id)?;
        Ok((report, plan))
    }

    /// The report as a front end with `syntax` shows it: the decision's reason says
    /// what to do in that front end's terms ([`Decision::in_syntax`]).
    pub fn in_syntax(mut self, syntax: crate::error::Syntax) -> Report {
        self.decision = self.decision.in_syntax(syntax);
        self
    }

    /// The decision again, knowing which completed states are stale
    /// ([`crate::decide::decide_with_stale`]).
    pub fn with_stale(
        mut self,
        b: &Build,
        plan: &Plan,
        now: SystemTime,
        stale: Vec<crate::manifest::Stale>,
    ) -> Report {
        self.decision = crate::decide::decide_with_stale(Some(b), plan, now, stale);
        self.exit_code = self.decision.decision.exit_code();
        self
    }

    /// The decision again, knowing which of the other builds its next state waits for
    /// have not done what it waits for ([`crate::decide::gate`]; in remote mode each
    /// parent is read from the remote).
    pub fn with_parents(
        mut self,
        writer: &mut crate::sync::Writer,
        b: &Build,
        plan: &Plan,
    ) -> Result<Report> {
        let unmet = crate::parents::unmet(writer, b, plan, self.decision.next_state)?;
        self.decision = crate::decide::gate(self.decision, plan, unmet);
        self.exit_code = self.decision.decision.exit_code();
        Ok(self)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes")
    }

    /// The decision headline: "build X: resume at state 20 (ansible-users)".
    pub fn headline(&self) -> String {
        let state = |s: Option<u8>| match (s, &self.decision.next_state_name) {
            (Some(s), Some(n)) => format!("state {s} ({n})"),
            (Some(s), None) => format!("state {s}"),
            (None, _) => String::new(),
        };
        let next = state(self.decision.next_state);
        let what = match self.decision.decision {
            crate::decide::Action::Start => format!("start a new build at {next}"),
            crate::decide::Action::Resume => format!("resume at {next}"),
            crate::decide::Action::Retry => format!("retry {next}"),
            crate::decide::Action::Wait if !self.decision.waiting_for.is_empty() => {
                format!("wait for other builds before {next}")
            }
            crate::decide::Action::Wait => format!("wait to retry {next}"),
            crate::decide::Action::Blocked if next.is_empty() => "needs a person".to_string(),
            crate::decide::Action::Blocked => format!("blocked at {next}: needs a person"),
            crate::decide::Action::Busy => format!("busy: {next} is in progress"),
            crate::decide::Action::Rerun => format!("rerun from {next}: it is stale"),
            crate::decide::Action::Completed => "completed".to_string(),
        };
        format!("build {}: {what}", self.build_id)
    }

    /// A few lines for people; `--json` is the stable form for scripts.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.headline());
        let _ = writeln!(out, "  why:      {}", self.decision.reason);
        if self.exists {
            let current = match (self.current_state, &self.current_state_name) {
                (Some(s), Some(n)) => format!("{s} ({n})"),
                (Some(s), None) => s.to_string(),
                _ => "none yet".to_string(),
            };
            let status = self.status.map_or("-", |s| s.as_str());
            let _ = writeln!(out, "  status:   {status}, last completed state {current}");
            if self.epoch > 1 {
                let _ = writeln!(
                    out,
                    "  epoch:    {} (started over by `update-state reset`)",
                    self.epoch
                );
            }
            for st in &self.decision.stale {
                let _ = writeln!(out, "  stale:    {}", st.sentence());
            }
            for j in &self.journaled {
                let _ = writeln!(
                    out,
                    "  journal:  {} at {} waits to be shared with remote {} (this machine keeps it; the next command here in remote mode lands it){}",
                    j.outcome,
                    j.happened_at,
                    j.remote,
                    j.last_error
                        .as_deref()
                        .map(|e| format!("; last try: {}", crate::decide::headline(e, 200)))
                        .unwrap_or_default()
                );
            }
            let _ = writeln!(
                out,
                "  build:    cloud {}, image {}, plan {}",
                self.cloud.as_deref().unwrap_or("-"),
                self.image.as_deref().unwrap_or("-"),
                self.plan
            );
            let _ = writeln!(
                out,
                "  serial:   {} (lineage {})",
                self.serial,
                self.lineage.as_deref().unwrap_or("-")
            );
            if let (Some(e), Some(Status::Waiting | Status::Blocked)) =
                (&self.last_error, self.status)
            {
                let _ = writeln!(out, "  error:    {}", headline(e, 300));
            }
            if let Some(t) = self.updated_at {
                let _ = writeln!(out, "  updated:  {}", time::format(t));
            }
            for (k, v) in &self.metadata {
                let _ = writeln!(out, "  meta:     {k}={}", headline(v, 200));
            }
            for (k, o) in &self.outputs {
                let _ = writeln!(
                    out,
                    "  output:   {k}={} (state {})",
                    headline(&o.value, 200),
                    o.state
                );
            }
        }
        if let Some(history) = &self.history {
            out.push_str(&history_table(history));
        }
        out
    }

    /// `KEY=VALUE` lines a shell (or a Concourse task) can source. Values are quoted for
    /// sh; metadata and output keys are prefixed (`BUILDSTATE_META_`, `BUILDSTATE_OUTPUT_`) so
    /// they cannot clobber the task's own variables.
    pub fn resume_metadata(&self) -> String {
        let mut lines: Vec<(String, String)> = vec![
            ("RESUME_STATE".into(), opt(self.decision.next_state)),
            ("BUILDSTATE_BUILD_ID".into(), self.build_id.clone()),
            (
                "BUILDSTATE_DECISION".into(),
                self.decision.decision.as_str().into(),
            ),
            (
                "BUILDSTATE_NEXT_STATE".into(),
                opt(self.decision.next_state),
            ),
            (
                "BUILDSTATE_NEXT_STATE_NAME".into(),
                self.decision.next_state_name.clone().unwrap_or_default(),
            ),
            ("BUILDSTATE_CURRENT_STATE".into(), opt(self.current_state)),
            (
                "BUILDSTATE_STATUS".into(),
                self.status.map_or(String::new(), |s| s.as_str().into()),
            ),
            ("BUILDSTATE_ATTEMPT".into(), self.attempt.to_string()),
            ("BUILDSTATE_SERIAL".into(), self.serial.to_string()),
            (
                "BUILDSTATE_LINEAGE".into(),
                self.lineage.clone().unwrap_or_default(),
            ),
            (
                "BUILDSTATE_CLOUD".into(),
                self.cloud.clone().unwrap_or_default(),
            ),
            (
                "BUILDSTATE_IMAGE".into(),
                self.image.clone().unwrap_or_default(),
            ),
            ("BUILDSTATE_EXIT_CODE".into(), self.exit_code.to_string()),
        ];
        for (k, v) in &self.metadata {
            lines.push((format!("BUILDSTATE_META_{k}"), v.clone()));
        }
        lines.extend(crate::outputs::env(&crate::outputs::values(&self.outputs)));
        lines
            .into_iter()
            .map(|(k, v)| format!("{k}={}\n", shell_quote(&v)))
            .collect()
    }

    /// Write `decision.json` and `resume-metadata` into `dir` (created if missing). Each
    /// file is written whole under a temporary name of its own and renamed, so a reader
    /// never sees half, also with two writers at once.
    pub fn write_output(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        for (name, body) in [
            ("decision.json", self.to_json() + "\n"),
            ("resume-metadata", self.resume_metadata()),
        ] {
            crate::monitor::write_whole(&dir.join(name), body.as_bytes(), ".buildstate-output")?;
        }
        Ok(())
    }
}

/// Where [`Report::write_output`] writes (`what`: "--output", "in: the destination") must
/// be a directory or nothing yet (it is created): a path that exists as anything else is
/// refused before any work (exit 8).
pub fn check_output_dir(dir: &Path, what: &str) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => Err(Error::InvalidInput(format!(
            "{what} {}: exists and is not a directory: give a directory (it is created if missing)",
            crate::redact::echo(&dir.display().to_string())
        ))),
        _ => Ok(()),
    }
}

fn opt(v: Option<u8>) -> String {
    v.map(|s| s.to_string()).unwrap_or_default()
}

/// Quote for POSIX sh: bare when safe, otherwise single quotes with `'\''` for `'`.
pub fn shell_quote(v: &str) -> String {
    let safe = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-:/@%+,".contains(c));
    if safe {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\'', r"'\''"))
    }
}

fn history_table(events: &[Event]) -> String {
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::NOTHING);
    table.set_header(vec![
        "seq",
        "time (UTC)",
        "event",
        "state",
        "try",
        "took",
        "by",
        "message",
    ]);
    for e in events {
        table.add_row(vec![
            e.seq.to_string(),
            time::format(e.at)
                .replace('T', " ")
                .trim_end_matches('Z')
                .to_string(),
            e.kind.to_string(),
            opt(e.state),
            e.attempt.map(|a| a.to_string()).unwrap_or_default(),
            e.duration_ms
                .map(|ms| time::format_duration(std::time::Duration::from_millis(ms)))
                .unwrap_or_default(),
            // The lease holder that wrote it when there is one (`--owner W1`), else who ran it.
            e.owner
                .clone()
                .unwrap_or_else(|| format!("{}@{}", e.actor.user, e.actor.host)),
            e.message
                .as_deref()
                .map(|m| headline(m, 80))
                .unwrap_or_default(),
        ]);
    }
    // The last column is padded to the widest message; trailing blanks help nobody.
    let mut out = String::from("history:\n");
    for line in table.to_string().lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Build ids in `store` that look like `id` (a typo of it: close in edit distance, or the
/// same letters and digits), at most five, closest first.
pub fn similar_builds(store: &crate::store::Store, id: &str) -> crate::Result<Vec<String>> {
    let squash = |s: &str| -> String {
        s.chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect()
    };
    let want = squash(id);
    let mut close: Vec<(usize, String)> = store
        .build_serials()?
        .into_iter()
        .map(|(b, _)| b)
        .filter(|b| b != id)
        .filter_map(|b| {
            let d = strsim::levenshtein(&b, id);
            let limit = (id.len() / 4).clamp(1, 3);
            (d <= limit || squash(&b) == want).then_some((d, b))
        })
        .collect();
    close.sort();
    Ok(close.into_iter().take(5).map(|(_, b)| b).collect())
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn shell_quoting_survives_sh() {
        for v in [
            "20",
            "",
            "it's",
            "a b",
            "$(rm -rf /)",
            "x'\"y",
            "line\nbreak",
            "ümlaut",
        ] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("V={}; printf %s \"$V\"", shell_quote(v)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), v);
        }
        assert_eq!(shell_quote("20"), "20");
    }
}

/// One state in `check-state --plan`: where it stands and why it would run or be skipped.
#[derive(Debug, Clone, Serialize)]
pub struct PlanRow {
    pub state: u8,
    pub name: String,
    /// done, stale, drifted, forced, pending, running, waiting, blocked, cancelled
    pub status: &'static str,
    pub why: String,
    #[serde(with = "crate::time::rfc3339::option")]
    pub done_at: Option<SystemTime>,
    #[serde(with = "crate::time::rfc3339::option")]
    pub verified_at: Option<SystemTime>,
    /// Whether the plan declares inputs, a verify and a requires command for it.
    pub inputs: bool,
    pub verify: bool,
    pub requires: bool,
}

/// `check-state --plan`: the decision, and every state of the plan with its status.
#[derive(Debug, Clone, Serialize)]
pub struct PlanView {
    pub build_id: String,
    pub plan: String,
    pub epoch: u32,
    #[serde(flatten)]
    pub decision: Decision,
    pub exit_code: i32,
    pub states: Vec<PlanRow>,
}

fn who(e: &Event) -> String {
    e.owner
        .clone()
        .unwrap_or_else(|| format!("{}@{}", e.actor.user, e.actor.host))
}

impl PlanView {
    /// The plan view of `b`, whose stale states are `stale` (every one checked).
    pub fn of(report: &Report, b: &Build, plan: &Plan, events: &[Event]) -> PlanView {
        let stale = &report.decision.stale;
        let mut rows = Vec::new();
        for s in &plan.states {
            let done = crate::manifest::last_done(events, s.id);
            let verified = events
                .iter()
                .rev()
                .take_while(|e| done.is_some_and(|d| e.seq > d.seq))
                .find(|e| e.kind == crate::model::EventKind::Verified && e.state == Some(s.id))
                .map(|e| e.at);
            let completed = b.current_state.is_some_and(|c| s.id <= c);
            let active = b.active_state == Some(s.id);
            let (status, why) = if active && b.status != Status::Pending {
                let st = match b.status {
                    Status::Running => "running",
                    Status::Waiting => "waiting",
                    Status::Cancelled => "cancelled",
                    _ => "blocked",
                };
                (st, report.decision.reason.clone())
            } else if let Some(st) = stale.iter().find(|x| x.state == s.id).filter(|_| completed) {
                let status = match st.kind {
                    crate::manifest::StaleKind::Drifted => "drifted",
                    _ => "stale",
                };
                (status, st.reasons.join(", "))
            } else if completed {
                let why = match done {
                    Some(e) if e.kind == crate::model::EventKind::Skip => format!(
                        "skipped at {} by {}: {}",
                        time::format(e.at),
                        who(e),
                        headline(e.message.as_deref().unwrap_or(""), 120)
                    ),
                    Some(e) if e.kind == crate::model::EventKind::Complete => format!(
                        "completed at {} by {}{}",
                        time::format(e.at),
                        who(e),
                        match (&e.inputs, &s.inputs) {
                            (Some(_), _) => ", inputs unchanged",
                            (None, Some(_)) => ", inputs not recorded",
                            _ => "",
                        }
                    ),
                    // "reused from B1: attempt 2 completed at ... by ... with the same inputs"
                    Some(e) if e.kind == crate::model::EventKind::Reused => {
                        headline(e.message.as_deref().unwrap_or("reused"), 300)
                    }
                    _ => "recorded as done when the build was created".to_string(),
                };
                let reused = done.is_some_and(|e| e.kind == crate::model::EventKind::Reused);
                (if reused { "reused" } else { "done" }, why)
            } else if b.status == Status::Cancelled {
                ("cancelled", "the build was cancelled".to_string())
            } else {
                // Not done: did a force, a reset or stale inputs send it back?
                let reopened = events
                    .iter()
                    .rev()
                    .find(|e| e.kind.reopens() && e.state.is_none_or(|from| from <= s.id));
                let ran_since = reopened.is_some_and(|r| {
                    events.iter().any(|e| {
                        e.seq > r.seq
                            && e.state == Some(s.id)
                            && e.kind == crate::model::EventKind::Complete
                    })
                });
                let was_done = reopened.is_some_and(|r| {
                    events.iter().any(|e| {
                        e.seq < r.seq
                            && e.state == Some(s.id)
                            && matches!(
                                e.kind,
                                crate::model::EventKind::Complete | crate::model::EventKind::Skip
                            )
                    })
                });
                match reopened.filter(|_| was_done && !ran_since) {
                    Some(r) if r.kind == crate::model::EventKind::Rerun => (
                        "stale",
                        format!(
                            "runs again: {}",
                            headline(r.message.as_deref().unwrap_or(""), 200)
                        ),
                    ),
                    Some(r) => (
                        "forced",
                        format!(
                            "{} at {} by {}: {}",
                            if r.kind == crate::model::EventKind::Reset {
                                "reset"
                            } else {
                                "forced"
                            },
                            time::format(r.at),
                            who(r),
                            headline(r.message.as_deref().unwrap_or(""), 120)
                        ),
                    ),
                    None => ("pending", "not run yet".to_string()),
                }
            };
            rows.push(PlanRow {
                state: s.id,
                name: s.name.clone(),
                status,
                why,
                done_at: done.filter(|_| completed).map(|e| e.at),
                verified_at: verified.filter(|_| completed),
                inputs: s.inputs.is_some(),
                verify: s.verify.is_some(),
                requires: s.requires.is_some(),
            });
        }
        PlanView {
            build_id: report.build_id.clone(),
            plan: plan.name.clone(),
            epoch: report.epoch,
            decision: report.decision.clone(),
            exit_code: report.exit_code,
            states: rows,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a plan view always serializes")
    }

    /// A table for people.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "build {} (plan {}, epoch {}): {}",
            self.build_id, self.plan, self.epoch, self.decision.reason
        );
        let mut table = comfy_table::Table::new();
        table.load_style(comfy_table::presets::NOTHING);
        table.set_header(vec!["state", "name", "status", "why"]);
        for r in &self.states {
            table.add_row(vec![
                r.state.to_string(),
                r.name.clone(),
                r.status.to_string(),
                headline(&r.why, 160),
            ]);
        }
        for line in table.to_string().lines() {
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}
