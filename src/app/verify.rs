//! Checks against reality: a state's `verify` command (does its result still hold?) and
//! its `requires` command (may it start?). Both are shell commands from the plan, run
//! with the build's identity and metadata in the environment, under a timeout, their
//! output (stdout and stderr together) kept as a redacted tail.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::context::Actor;
use crate::model::{Ctx, Status, Transition, VerifyResult};
use crate::runner::{kill_group, last_bytes};
use crate::sync::Writer;
use crate::{Error, Result};

/// How much of a check's output is kept.
pub const OUTPUT_TAIL: usize = 16 * 1024;

/// The default time a verify or requires command may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// How a check command ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub ok: bool,
    /// Whether it ran to a verdict: not when it could not be run (exit 126 or 127, as a
    /// shell says "not executable" and "not found"), timed out or was killed by a signal.
    pub ran: bool,
    /// "exited with code 1", "timed out after 10s", "passed".
    pub how: String,
    /// The end of its output, redacted.
    pub output: String,
    pub duration: Duration,
}

impl Checked {
    /// One message: how it ended, then its output.
    pub fn message(&self) -> String {
        let out = self.output.trim_end();
        if out.is_empty() {
            self.how.clone()
        } else {
            let last = out
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            format!("{}: {}\n--- output ---\n{out}", self.how, last.trim())
        }
    }
}

/// The environment a check runs with: the build's id, the state, and its metadata as
/// `BUILDSTATE_META_<KEY>` (as `check-state --output` writes them).
pub fn check_env(
    build_id: &str,
    state: u8,
    meta: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut env = vec![
        ("BUILDSTATE_BUILD_ID".to_string(), build_id.to_string()),
        ("BUILDSTATE_STATE".to_string(), state.to_string()),
    ];
    for (k, v) in meta {
        env.push((format!("BUILDSTATE_META_{k}"), v.clone()));
    }
    env
}

/// After the timeout's SIGTERM, how long a check has before SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// Run `command` with `sh -c`, stdin closed, under `timeout` (then its whole process
/// group and whatever it started outside the group get SIGTERM, and SIGKILL 5 s
/// later). It returns within the timeout and the grace, whatever its
/// children do: what it left running is ended when it ends, and output still held open
/// by a child that escaped even that is not waited for.
pub fn run_check(command: &str, env: &[(String, String)], timeout: Duration) -> Result<Checked> {
    let begun = Instant::now();
    let tracked = crate::procs::Tracked::new();
    let mut child = Command::new("sh")
        .arg("-c")
        // One stream: the output reads as the command printed it.
        .arg(format!("exec 2>&1\n{command}"))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env(tracked.env().0, tracked.env().1)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|source| Error::Io {
            path: "sh".into(),
            source,
        })?;
    let pgid = child.id();
    let mut pipe = child.stdout.take().expect("stdout is piped");
    let tail = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let tail_w = std::sync::Arc::clone(&tail);
    let (read_all, reader_done) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let keep = OUTPUT_TAIL * 4;
        let mut buf = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            let mut tail = tail_w.lock().unwrap_or_else(|e| e.into_inner());
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > 2 * keep {
                let excess = tail.len() - keep;
                tail.drain(..excess);
            }
        }
        let _ = read_all.send(());
    });
    let mut timed_out = false;
    let mut kill_at = None;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|source| Error::Io {
            path: "sh".into(),
            source,
        })? {
            break status;
        }
        let now = Instant::now();
        if !timed_out && now.duration_since(begun) >= timeout {
            timed_out = true;
            kill_group(pgid, libc::SIGTERM);
            tracked.signal(libc::SIGTERM);
            kill_at = Some(now + KILL_GRACE);
        }
        if kill_at.is_some_and(|k| now >= k) {
            kill_group(pgid, libc::SIGKILL);
            tracked.signal(libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // Whatever the command left running goes with it: in its group, and outside it.
    kill_group(pgid, libc::SIGKILL);
    tracked.signal(libc::SIGKILL);
    // A child that cleared its environment may still hold the output open: read what
    // came for a moment more, then go on with it.
    let _ = reader_done.recv_timeout(Duration::from_secs(1));
    let tail = std::mem::take(&mut *tail.lock().unwrap_or_else(|e| e.into_inner()));
    let text = String::from_utf8_lossy(&tail);
    let redacted = crate::redact::redact(&text);
    let output = last_bytes(&redacted, OUTPUT_TAIL).to_string();
    let duration = begun.elapsed();
    let how = if timed_out {
        format!("timed out after {}", crate::time::format_duration(timeout))
    } else if status.success() {
        "passed".to_string()
    } else {
        match (
            status.code(),
            std::os::unix::process::ExitStatusExt::signal(&status),
        ) {
            (Some(c), _) => format!("exited with code {c}"),
            (None, Some(s)) => format!("killed by {}", crate::runner::signal_name(s)),
            _ => "failed".to_string(),
        }
    };
    Ok(Checked {
        ok: status.success() && !timed_out,
        ran: !timed_out && status.code().is_some_and(|c| c != 126 && c != 127),
        how,
        output,
        duration,
    })
}

/// One verify command to run: which state, the command, its environment, and the
/// number of the state's last completion or pass (see [`VerifyResult::since`]).
#[derive(Debug, Clone)]
pub struct PlannedCheck {
    pub state: u8,
    pub label: String,
    pub command: String,
    pub env: Vec<(String, String)>,
    pub since: u64,
}

/// The verify commands of the build's completed states, in plan order, up to (not
/// including) `stale_from`; a skipped state was never built and has none to run.
pub fn planned_checks(
    w: &Writer,
    build_id: &str,
    stale_from: Option<u8>,
) -> Result<Vec<PlannedCheck>> {
    let (b, plan) = w.store().build_and_plan(build_id)?;
    let Some(current) = b.current_state else {
        return Ok(Vec::new());
    };
    let meta = w.store().metadata(build_id)?;
    let events = w.store().events(build_id)?;
    let mut out = Vec::new();
    for s in plan.states.iter().filter(|s| s.id <= current) {
        if stale_from.is_some_and(|f| s.id >= f) {
            break;
        }
        let Some(cmd) = &s.verify else { continue };
        if crate::manifest::last_done(&events, s.id)
            .is_none_or(|e| e.kind != crate::model::EventKind::Complete)
        {
            continue;
        }
        let since = since(&events, s.id);
        out.push(PlannedCheck {
            state: s.id,
            label: plan.label(s.id),
            command: cmd.clone(),
            env: check_env(build_id, s.id, &meta),
            since,
        });
    }
    Ok(out)
}

/// The number of `state`'s last completion or passed verify in `events`, 0 if none
/// (see [`VerifyResult::since`]).
pub fn since(events: &[crate::model::Event], state: u8) -> u64 {
    events
        .iter()
        .rev()
        .find(|e| {
            e.state == Some(state)
                && matches!(
                    e.kind,
                    crate::model::EventKind::Complete | crate::model::EventKind::Verified
                )
        })
        .map_or(0, |e| e.seq)
}

/// Run `checks` in order, stopping at the first that does not pass. `progress` hears
/// each result as it comes.
pub fn run_checks(
    checks: &[PlannedCheck],
    timeout: Duration,
    progress: &dyn Fn(&str, &Checked),
) -> Result<Vec<VerifyResult>> {
    let mut results = Vec::new();
    for c in checks {
        let checked = run_check(&c.command, &c.env, timeout)?;
        progress(&c.label, &checked);
        results.push(VerifyResult {
            state: c.state,
            ok: checked.ok,
            ran: checked.ran,
            since: c.since,
            message: if checked.ok {
                format!(
                    "verify passed in {}",
                    crate::time::format_duration(checked.duration)
                )
            } else if checked.ran {
                checked.message()
            } else {
                format!(
                    "could not verify (nothing is known of the result): {}",
                    checked.message()
                )
            },
            duration_ms: u64::try_from(checked.duration.as_millis()).unwrap_or(u64::MAX),
        });
        if !checked.ok {
            break;
        }
    }
    Ok(results)
}

/// Record verify results in one write (`verified`, `drift` and `unverified` events).
fn record(w: &mut Writer, build_id: &str, results: &[VerifyResult], actor: &Actor) -> Result<()> {
    if !results.is_empty() {
        let t = Transition::Verified {
            results: results.to_vec(),
        };
        w.transition(build_id, &t, actor, &Ctx::live())?;
    }
    Ok(())
}

/// `check-state --verify`: run the verify commands of the build's completed states, in
/// plan order, up to (not including) `stale_from`, stopping at the first that does not
/// pass; record the results in one write. `progress` hears each result as it comes.
/// Returns the results (empty: nothing to verify).
pub fn verify_build(
    w: &mut Writer,
    build_id: &str,
    stale_from: Option<u8>,
    timeout: Duration,
    actor: &Actor,
    progress: &dyn Fn(&str, &Checked),
) -> Result<Vec<VerifyResult>> {
    let checks = planned_checks(w, build_id, stale_from)?;
    let results = run_checks(&checks, timeout, progress)?;
    record(w, build_id, &results, actor)?;
    Ok(results)
}

/// One build's verification in `monitor verify`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildVerified {
    pub build_id: String,
    /// `passed`, `drift` (the result no longer holds), `unverified` (a check could not
    /// run to a verdict), or `failed` (it could not be recorded: `message` says why).
    pub outcome: &'static str,
    /// The state of the check that did not pass, if any.
    pub state: Option<u8>,
    pub message: String,
}

/// What `monitor verify` did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FleetVerified {
    pub builds: Vec<BuildVerified>,
    /// Due builds not started before the budget ran out (the next run takes them).
    pub left: usize,
}

/// `monitor verify`: verify the completed builds `due` (see
/// [`crate::store::Store::due_for_verify`]), `concurrency` builds at a time, starting no
/// new build after `budget`. The checks run in parallel; their results are recorded
/// here, one write per build, as each build finishes (in remote mode through the
/// remote). `progress` hears each build's outcome.
pub fn verify_fleet(
    w: &mut Writer,
    due: &[String],
    concurrency: usize,
    budget: Duration,
    timeout: Duration,
    actor: &Actor,
    progress: &dyn Fn(&BuildVerified),
) -> Result<FleetVerified> {
    let mut work = Vec::new();
    for id in due {
        let checks = planned_checks(w, id, None)?;
        if !checks.is_empty() {
            work.push((id.clone(), checks));
        }
    }
    let deadline = Instant::now() + budget;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let started = std::sync::atomic::AtomicUsize::new(0);
    let mut report = FleetVerified::default();
    let (tx, rx) = std::sync::mpsc::channel::<(String, Result<Vec<VerifyResult>>)>();
    std::thread::scope(|scope| -> Result<()> {
        for _ in 0..concurrency.clamp(1, 64).min(work.len().max(1)) {
            let tx = tx.clone();
            let (work, next, started) = (&work, &next, &started);
            scope.spawn(move || loop {
                if Instant::now() >= deadline {
                    return;
                }
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((id, checks)) = work.get(i) else {
                    return;
                };
                started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = tx.send((id.clone(), run_checks(checks, timeout, &|_, _| {})));
            });
        }
        drop(tx);
        for (id, results) in rx {
            let done = results.and_then(|r| record(w, &id, &r, actor).map(|()| r));
            let v = match done {
                Err(e) => BuildVerified {
                    build_id: id,
                    outcome: "failed",
                    state: None,
                    message: e.to_string(),
                },
                Ok(results) => {
                    let last = results.last();
                    let outcome = match last {
                        Some(r) if !r.ok && r.ran => "drift",
                        Some(r) if !r.ok => "unverified",
                        _ => "passed",
                    };
                    BuildVerified {
                        build_id: id,
                        outcome,
                        state: last.filter(|r| !r.ok).map(|r| r.state),
                        message: last
                            .map(|r| crate::decide::headline(&r.message, 200))
                            .unwrap_or_default(),
                    }
                }
            };
            progress(&v);
            report.builds.push(v);
        }
        Ok(())
    })?;
    report.left = work.len() - started.load(std::sync::atomic::Ordering::Relaxed);
    Ok(report)
}

/// Before run-state starts `state`: run its `requires` command, if any. A failure is
/// recorded (the state blocked as `prerequisite`, no attempt used) and returned.
pub fn check_requires(
    w: &mut Writer,
    build_id: &str,
    state: u8,
    actor: &Actor,
    ctx: &Ctx<'_>,
) -> Result<Option<String>> {
    let (b, plan) = w.store().build_and_plan(build_id)?;
    let Some(cmd) = plan.state(state).and_then(|s| s.requires.clone()) else {
        return Ok(None);
    };
    if b.status == Status::Running && b.active_state == Some(state) {
        // Its lease holder is working on it; the start that follows says so.
        return Ok(None);
    }
    let meta = w.store().metadata(build_id)?;
    let timeout = plan
        .timeout_for(state)
        .unwrap_or(DEFAULT_TIMEOUT)
        .min(DEFAULT_TIMEOUT);
    let checked = run_check(&cmd, &check_env(build_id, state, &meta), timeout)?;
    if checked.ok {
        return Ok(None);
    }
    // Redacted here, not only when stored: run-state prints it too.
    let message = crate::redact::redact(&format!(
        "prerequisite `{}` {}",
        crate::decide::headline(&cmd, 200),
        checked.message()
    ))
    .into_owned();
    let t = Transition::Unmet {
        state,
        message: message.clone(),
    };
    let ctx = Ctx {
        lease_ttl: None,
        fence: None,
        ..*ctx
    };
    w.transition(build_id, &t, actor, &ctx)?;
    Ok(Some(message))
}
