//! Running one state's command under its retry policy: the engine behind `run-state`.
//!
//! The runner takes the build's lease, records the start, runs the command with stdout
//! passed straight through and stderr copied through while its tail is kept, renews the
//! lease by heartbeat, enforces the state's timeout, forwards SIGINT/SIGTERM to the
//! command's process group, and records the outcome. A failure whose retry is due within
//! `max_wait` is retried in the same process; otherwise the scheduled retry is recorded
//! and the caller exits with the matching code.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::context::Actor;
use crate::decide::{Action, Decision};
use crate::model::{Status, Transition};
use crate::session::{Inputs, Session, Start, Started};
use crate::share::LeaseKeeper;
use crate::sync::Writer;
use crate::{exit, time, Error, Result};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub build_id: String,
    /// The state to run; `None` runs whichever state `decide()` says is next.
    pub state: Option<u8>,
    /// The command and its arguments.
    pub command: Vec<OsString>,
    /// Wait in-process for a retry that is due within this long; later ones are recorded.
    pub max_wait: Duration,
    /// How long the lease lives without a heartbeat.
    pub lease_ttl: Duration,
    /// Overrides the plan's timeout for the state.
    pub timeout: Option<Duration>,
    /// After the timeout's SIGTERM, how long before SIGKILL.
    pub kill_grace: Duration,
    /// How much of the end of stderr to keep as the failure message.
    pub tail_bytes: usize,
    /// The directory the plan's input globs are relative to (`None`:
    /// `BUILDSTATE_INPUTS_ROOT`, else the working directory).
    pub inputs_root: Option<std::path::PathBuf>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Completed {
        state: u8,
    },
    /// The command failed; a retry is scheduled at `at`, later than `max_wait`.
    Waiting {
        state: u8,
        at: SystemTime,
    },
    /// The command failed and needs a person.
    Blocked {
        state: u8,
        reason: String,
    },
    /// SIGINT or SIGTERM arrived; it was forwarded and recorded.
    Interrupted {
        state: Option<u8>,
        signal: i32,
    },
    /// Nothing was run: the decision says why (completed, busy, blocked, wait).
    NotRun(Decision),
}

impl Outcome {
    /// run-state's exit code (docs/exit-codes.md).
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Completed { .. } => exit::OK,
            Outcome::Waiting { .. } => exit::WAIT,
            Outcome::Blocked { .. } => exit::BLOCKED,
            Outcome::Interrupted { signal, .. } => 128 + signal,
            Outcome::NotRun(d) => match d.decision.exit_code() {
                exit::OK => exit::INTERNAL,
                code => code,
            },
        }
    }
}

/// The name of a signal for messages.
pub fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGHUP => "SIGHUP".into(),
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGABRT => "SIGABRT".into(),
        n => format!("signal {n}"),
    }
}

/// SIGINT/SIGTERM received by this process, as the signal number (0 for none).
struct Signals(Arc<AtomicUsize>);

impl Signals {
    fn install() -> Result<Signals> {
        let flag = Arc::new(AtomicUsize::new(0));
        for sig in [libc::SIGINT, libc::SIGTERM] {
            signal_hook::flag::register_usize(sig, Arc::clone(&flag), sig as usize).map_err(
                |source| Error::Io {
                    path: "signal handler".into(),
                    source,
                },
            )?;
        }
        Ok(Signals(flag))
    }

    fn take(&self) -> Option<i32> {
        match self.0.swap(0, Ordering::SeqCst) {
            0 => None,
            n => Some(n as i32),
        }
    }
}

/// Sleep until `until`, waking early for a signal (returned).
fn sleep_until(until: SystemTime, signals: &Signals) -> Option<i32> {
    loop {
        if let Some(sig) = signals.take() {
            return Some(sig);
        }
        let left = until.duration_since(SystemTime::now()).unwrap_or_default();
        if left.is_zero() {
            return None;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

pub(crate) fn kill_group(pgid: u32, sig: i32) {
    // The child leads its own process group (see `spawn`), so its children get it too.
    // SAFETY: killpg has no memory-safety preconditions; a stale group id fails with ESRCH.
    unsafe {
        libc::killpg(pgid as libc::pid_t, sig);
    }
}

/// A forked watcher that kills the command's process group when this process dies.
///
/// The kernel closes our end of a pipe whatever way we die; the reaper blocks reading
/// its end. One byte means "the command is finished, stand down"; end-of-file without
/// it means we died, and it sends SIGTERM to the group, then SIGKILL after the grace.
/// (PR_SET_PDEATHSIG would reach only the command itself, not what it started.)
struct Reaper {
    notify: libc::c_int,
    pid: libc::pid_t,
}

impl Reaper {
    fn start(pgid: u32, grace: Duration) -> std::io::Result<Reaper> {
        let pgid = pgid as libc::pid_t;
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 writes two descriptors into the array it is given.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let [watch, notify] = fds;
        // SAFETY: after fork the child calls only async-signal-safe functions (signal,
        // close, read, killpg, nanosleep, _exit) and never returns into Rust code.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: closing descriptors we own.
            unsafe {
                libc::close(watch);
                libc::close(notify);
            }
            return Err(e);
        }
        if pid == 0 {
            // SAFETY: see above; this branch ends in _exit.
            unsafe {
                // A Ctrl-C at the terminal reaches our whole process group: the reaper
                // must outlive run-state to do its job, so it ignores such signals.
                for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGPIPE] {
                    libc::signal(sig, libc::SIG_IGN);
                }
                // Hold nothing open: not the terminal, not pipes a caller waits on.
                for fd in 0..1024 {
                    if fd != watch {
                        libc::close(fd);
                    }
                }
                let mut byte = 0u8;
                let n = loop {
                    let n = libc::read(watch, (&mut byte as *mut u8).cast(), 1);
                    if n < 0 && *libc::__errno_location() == libc::EINTR {
                        continue;
                    }
                    break n;
                };
                if n != 1 {
                    libc::killpg(pgid, libc::SIGTERM);
                    let step = libc::timespec {
                        tv_sec: 0,
                        tv_nsec: 50_000_000,
                    };
                    let mut waited = 0u64;
                    while waited < grace_ms && libc::killpg(pgid, 0) == 0 {
                        libc::nanosleep(&step, std::ptr::null_mut());
                        waited += 50;
                    }
                    libc::killpg(pgid, libc::SIGKILL);
                }
                libc::_exit(0);
            }
        }
        // SAFETY: the child has its own copy; ours of the read end is not needed.
        unsafe { libc::close(watch) };
        Ok(Reaper { notify, pid })
    }
}

impl Drop for Reaper {
    /// We are alive and done with the command (it finished, or we killed it ourselves):
    /// the reaper exits without killing anything.
    fn drop(&mut self) {
        // SAFETY: writing one byte from a live buffer to our own descriptor, then
        // closing it and collecting our own child.
        unsafe {
            libc::write(self.notify, [1u8].as_ptr().cast(), 1);
            libc::close(self.notify);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// What became of one attempt's command.
struct Finished {
    exit_code: Option<i32>,
    signal: Option<i32>,
    timed_out: bool,
    interrupted: Option<i32>,
    lease_lost: bool,
    tail: String,
}

/// How often run-state looks again at the other builds a state waits for.
const PARENT_POLL: Duration = Duration::from_secs(2);

/// Run the build's state(s) until one completes, a retry lies beyond `max_wait`, the
/// build blocks, or a signal arrives.
pub fn run(store: &mut Writer, opts: &RunOptions, actor: &Actor) -> Result<Outcome> {
    if opts.command.is_empty() {
        return Err(Error::InvalidInput(
            "no command given: put it after --, e.g. `run-state BUILD 5 -- ./kickstart.sh`".into(),
        ));
    }
    let signals = Signals::install()?;
    let owner = actor.lease_owner();
    // Waiting for other builds (a plan's `after`) counts against --max-wait as a
    // scheduled retry does.
    let began = std::time::Instant::now();
    let mut said: Option<String> = None;
    loop {
        store.refresh(&opts.build_id)?;
        let now = store.now()?;
        let build = store
            .store()
            .build(&opts.build_id)?
            .ok_or_else(|| Error::UnknownBuild(opts.build_id.clone()))?;
        let plan = store.store().plan(&build.plan_hash)?;
        // Judged once per round on the copy just pulled: the decision and the rerun
        // below share it (None: not judged, the rerun judges for an explicit state).
        let stale = (opts.state.is_none()
            && matches!(build.status, Status::Pending | Status::Completed))
        .then(|| crate::inputs::stale_of(store, &build, &plan, opts.inputs_root.as_deref(), false))
        .transpose()?;
        let decision = crate::decide::decide_with_stale(
            Some(&build),
            &plan,
            now,
            stale.clone().unwrap_or_default(),
        );

        // Which state, and is it time?
        let state = match opts.state {
            Some(s) => s,
            None => match decision.decision {
                Action::Start | Action::Resume | Action::Retry | Action::Rerun => decision
                    .next_state
                    .expect("a go-ahead decision names a state"),
                Action::Wait => decision.next_state.unwrap_or_default(),
                _ => return Ok(Outcome::NotRun(decision)),
            },
        };
        // Does it wait for other builds? Polled until they have done it, within
        // --max-wait; beyond it, nothing is run and the decision says what it waits for.
        let unmet = crate::parents::unmet(store, &build, &plan, Some(state))?;
        if !unmet.is_empty() {
            let mut waiting = decision.clone();
            waiting.next_state = Some(state);
            let waiting = crate::decide::waiting_for(waiting, &plan, unmet);
            let left = opts.max_wait.saturating_sub(began.elapsed());
            if left.is_zero() {
                return Ok(Outcome::NotRun(waiting));
            }
            if said.as_deref() != Some(waiting.reason.as_str()) {
                eprintln!(
                    "run-state: {} (waiting up to {} more)",
                    waiting.reason,
                    time::format_duration(left)
                );
                said = Some(waiting.reason.clone());
            }
            let pause = left.min(PARENT_POLL);
            if let Some(signal) = sleep_until(SystemTime::now() + pause, &signals) {
                return Ok(Outcome::Interrupted {
                    state: None,
                    signal,
                });
            }
            continue;
        }
        if build.status == Status::Waiting && build.active_state == Some(state) {
            if let Some(due) = build.next_attempt_at.filter(|d| *d > now) {
                let wait = due.duration_since(now).unwrap_or_default();
                if wait > opts.max_wait {
                    return Ok(Outcome::Waiting { state, at: due });
                }
                eprintln!(
                    "run-state: waiting {} for the retry of {} ({})",
                    time::format_duration(wait),
                    plan.label(state),
                    decision.attempt_text().unwrap_or_default()
                );
                if let Some(signal) = sleep_until(due, &signals) {
                    return Ok(Outcome::Interrupted {
                        state: None,
                        signal,
                    });
                }
                continue;
            }
        }

        let meta = store.store().metadata(&opts.build_id)?;
        let mut session = Session {
            writer: &mut *store,
            actor,
            owner: &owner,
        };
        // Judged on the copy pulled at the top of this round; the inputs the command
        // runs with are hashed now and recorded when it completes.
        let start = Start {
            state,
            lease_ttl: Some(opts.lease_ttl),
            renewed: true,
            inputs_root: opts.inputs_root.as_deref(),
            refreshed: true,
            known_stale: stale.as_deref(),
            hash_inputs: true,
        };
        let (started, lease_ttl, inputs) = match session.start(&opts.build_id, &start)? {
            Started::Running {
                build,
                lease_ttl,
                inputs,
            } => (build, lease_ttl, inputs),
            Started::Unmet { reason } => return Ok(Outcome::Blocked { state, reason }),
        };
        // Every write about this attempt carries its fencing token: if the lease is lost
        // meanwhile, the store refuses the write instead of recording a stale result.
        let fence = Some(started.attempt);
        let keeper = LeaseKeeper::start(
            session.writer.store().path(),
            session.writer.remote(),
            &opts.build_id,
            &owner,
            started.attempt,
            lease_ttl,
        )?;
        let timeout = opts.timeout.or(plan.timeout_for(state));
        let env = command_env(opts, state, &started, &meta, &owner, session.writer)?;
        let watched = spawn_and_watch(opts, &env, timeout, &signals, &keeper);
        drop(keeper);
        let done = match watched {
            Ok(done) => done,
            Err(spawn_error) => {
                // The command could not even start: that is the state's failure, and
                // retrying the same missing program will not help.
                let t = Transition::Fail {
                    state,
                    message: spawn_error,
                    category: Some(crate::policy::Category::Persistent),
                    exit_code: Some(127),
                    signal: None,
                    timed_out: false,
                };
                let b = session.record(&opts.build_id, &t, fence)?;
                return Ok(Outcome::Blocked {
                    state,
                    reason: b.blocked_reason.unwrap_or_default(),
                });
            }
        };
        if done.lease_lost {
            return Err(Error::Fenced(format!(
                "build '{}': this worker lost the lease on {} (cancelled, or taken over after a missed heartbeat); the command was stopped and nothing more was recorded",
                opts.build_id,
                plan.label(state)
            )));
        }
        if let Some(signal) = done.interrupted {
            let t = Transition::Interrupt {
                state,
                signal: signal_name(signal),
            };
            session.record(&opts.build_id, &t, fence)?;
            return Ok(Outcome::Interrupted {
                state: Some(state),
                signal,
            });
        }
        if done.exit_code == Some(0) && !done.timed_out {
            session.complete(&opts.build_id, state, Inputs::Known(inputs), fence)?;
            return Ok(Outcome::Completed { state });
        }
        let what = if done.timed_out {
            format!(
                "timed out after {}",
                time::format_duration(timeout.unwrap_or_default())
            )
        } else if let Some(sig) = done.signal {
            format!("killed by {}", signal_name(sig))
        } else {
            format!("exited with code {}", done.exit_code.unwrap_or(-1))
        };
        // The first line is what people see in one-line summaries: lead with the last
        // thing the command said; the whole tail follows.
        let last_line = done.tail.lines().rev().find(|l| !l.trim().is_empty());
        let message = match last_line {
            None => format!("command {what}"),
            Some(line) => format!(
                "command {what}: {}\n--- end of stderr ---\n{}",
                line.trim(),
                done.tail
            ),
        };
        let t = Transition::Fail {
            state,
            message,
            category: None,
            exit_code: done.exit_code,
            signal: done.signal,
            timed_out: done.timed_out,
        };
        let b = session.record(&opts.build_id, &t, fence)?;
        match (b.status, b.next_attempt_at) {
            (Status::Waiting, Some(at)) => {
                let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
                if wait > opts.max_wait {
                    return Ok(Outcome::Waiting { state, at });
                }
                eprintln!(
                    "run-state: {} failed ({}, {}); retrying in {} (attempt {} of {})",
                    plan.label(state),
                    what,
                    b.last_category.map_or("unknown", |c| c.as_str()),
                    time::format_duration(wait),
                    b.attempt + 1,
                    crate::model::attempts_allowed(&b, &plan, state)
                );
                if let Some(signal) = sleep_until(at, &signals) {
                    return Ok(Outcome::Interrupted {
                        state: None,
                        signal,
                    });
                }
            }
            _ => {
                return Ok(Outcome::Blocked {
                    state,
                    reason: b.blocked_reason.unwrap_or_default(),
                })
            }
        }
    }
}

/// How much stderr before the kept tail is read too, for redaction to see a secret whole.
const REDACT_CONTEXT: usize = 64 * 1024;

/// The last `n` bytes of `text`, on a character boundary.
pub(crate) fn last_bytes(text: &str, n: usize) -> &str {
    let mut start = text.len().saturating_sub(n);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// The variables a state's command gets on top of run-state's own environment: what a
/// check gets (the build, the state, its metadata), the attempt, the current outputs of
/// the states before it as `BUILDSTATE_OUTPUT_<KEY>` (read after the start, which
/// superseded this state's own), and what `update-state` needs to record this attempt's
/// outputs from inside the command: the lease owner, the database and the remote.
fn command_env(
    opts: &RunOptions,
    state: u8,
    started: &crate::model::Build,
    meta: &std::collections::BTreeMap<String, String>,
    owner: &str,
    writer: &crate::sync::Writer,
) -> Result<Vec<(String, String)>> {
    let mut env = crate::verify::check_env(&opts.build_id, state, meta);
    env.push(("BUILDSTATE_ATTEMPT".into(), started.attempt.to_string()));
    env.push(("BUILDSTATE_OWNER".into(), owner.to_string()));
    let db = std::path::absolute(writer.store().path())
        .unwrap_or_else(|_| writer.store().path().to_path_buf());
    env.push(("BUILDSTATE_DB".into(), db.display().to_string()));
    if let Some(remote) = writer.remote() {
        env.push(("BUILDSTATE_REMOTE".into(), remote.name().to_string()));
    }
    let outputs = writer.store().outputs(&opts.build_id)?;
    env.extend(crate::outputs::env(&crate::outputs::values(&outputs)));
    Ok(env)
}

/// Spawn the command and watch it: heartbeat, timeout, signals. `Err` carries the message
/// when the command could not be started at all.
fn spawn_and_watch(
    opts: &RunOptions,
    env: &[(String, String)],
    timeout: Option<Duration>,
    signals: &Signals,
    lease: &LeaseKeeper,
) -> std::result::Result<Finished, String> {
    let program = &opts.command[0];
    // What the command starts outside its process group carries this token, so that a
    // timeout, a signal or a lost lease ends that too (crate::procs).
    let tracked = crate::procs::Tracked::new();
    let mut child = Command::new(program)
        .args(&opts.command[1..])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env(tracked.env().0, tracked.env().1)
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        // Its own process group: signals and the timeout reach everything it started.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", program.to_string_lossy()))?;
    let pgid = child.id();
    // If this process dies (even by SIGKILL), the reaper takes the command down with it,
    // so that a worker taking over never races a leftover of this attempt.
    let reaper = Reaper::start(pgid, opts.kill_grace)
        .map_err(|e| format!("cannot start the reaper for the command: {e}"));
    let reaper = match reaper {
        Ok(r) => r,
        Err(e) => {
            kill_group(pgid, libc::SIGKILL);
            let _ = child.wait();
            return Err(e);
        }
    };

    // Copy stderr through unchanged while keeping its last `tail_bytes`, and some more
    // before them: secrets are redacted before the tail is cut, so that a private key
    // whose first lines fall off the cut is still recognised as one.
    let keep = opts.tail_bytes.saturating_add(REDACT_CONTEXT);
    let tail = Arc::new(Mutex::new(VecDeque::<u8>::with_capacity(keep.min(1 << 20))));
    let mut pipe = child.stderr.take().expect("stderr is piped");
    let tail_w = Arc::clone(&tail);
    let (copied, copier_done) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        let mut err = std::io::stderr();
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            let _ = err.write_all(&buf[..n]);
            let mut t = tail_w.lock().expect("tail lock");
            t.extend(&buf[..n]);
            let excess = t.len().saturating_sub(keep);
            t.drain(..excess);
        }
        let _ = copied.send(());
    });

    let begun = Instant::now();
    let mut timed_out = false;
    let mut interrupted = None;
    let mut lease_lost = false;
    let mut kill_at: Option<Instant> = None;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => {
                // Its outcome cannot be known: stop it rather than leave it running.
                kill_group(pgid, libc::SIGKILL);
                return Err(format!("lost track of the command: {e}"));
            }
        }
        let now = Instant::now();
        let stop = |sig| {
            kill_group(pgid, sig);
            tracked.signal(sig);
        };
        if let Some(sig) = signals.take() {
            interrupted = Some(sig);
            stop(sig);
            kill_at.get_or_insert(now + opts.kill_grace);
        }
        if let Some(limit) = timeout {
            if !timed_out && interrupted.is_none() && now.duration_since(begun) >= limit {
                timed_out = true;
                stop(libc::SIGTERM);
                kill_at = Some(now + opts.kill_grace);
            }
        }
        if !lease_lost && lease.lost() {
            lease_lost = true;
            stop(libc::SIGTERM);
            kill_at = Some(now + opts.kill_grace);
        }
        if kill_at.is_some_and(|k| now >= k) {
            stop(libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // A command that was stopped takes everything it started with it, in its group or
    // not, within what is left of the grace: nothing of it outlives run-state to race
    // the next attempt or hold the caller's output open. (A command that ended by
    // itself keeps what it started on purpose.)
    if let Some(k) = kill_at {
        kill_group(pgid, libc::SIGKILL);
        tracked.end_all(k.saturating_duration_since(Instant::now()));
    }
    drop(reaper);
    // A background process the command left behind may hold stderr open for ever:
    // give the copier a moment to drain, then go on with what it has.
    let _ = copier_done.recv_timeout(Duration::from_secs(2));
    let tail = tail.lock().expect("tail lock");
    let (a, b) = tail.as_slices();
    let tail = String::from_utf8_lossy(&[a, b].concat()).into_owned();
    let tail = last_bytes(&crate::redact::redact(&tail), opts.tail_bytes).to_string();
    Ok(Finished {
        exit_code: status.code(),
        signal: status.signal(),
        timed_out,
        interrupted,
        lease_lost,
        tail,
    })
}
