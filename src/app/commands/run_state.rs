//! run-state: run one state's command under the state's retry policy.

use std::ffi::OsString;
use std::time::Duration;

use crate::cli::Common;
use crate::runner::{run, Outcome, RunOptions};
use crate::{time, Result};

/// Run a state's command under its retry policy, holding the build's lease.
///
/// Records the start, streams the command's output through unchanged, renews the lease by
/// heartbeat, enforces the state's timeout, forwards SIGINT/SIGTERM to the command, keeps
/// the (redacted) end of stderr as the failure message, classifies the failure, and then
/// retries in this process when the next attempt is due within --max-wait, or records the
/// scheduled retry and exits. The command gets BUILDSTATE_BUILD_ID, BUILDSTATE_STATE,
/// BUILDSTATE_ATTEMPT and the build's metadata (`BUILDSTATE_META_<KEY>`) in its environment.
///
/// A state's `requires` command (in the plan) runs first; if it fails the state is
/// blocked as `prerequisite` without using an attempt. The state's declared inputs are
/// hashed before the command runs and recorded when it completes; a completed state runs
/// again only when it is stale (its inputs changed, or its verify failed).
///
/// Exit codes: 0 completed; 10 nothing left (--next); 11 another worker holds the build;
/// 12 a retry is scheduled later than --max-wait; 13 needs a person; 14 this worker lost
/// its lease while the command ran (it was stopped, nothing more recorded); 20 this
/// machine's clock is too far from the remote's; 128+N interrupted by signal N (recorded;
/// the attempt does not count). See docs/exit-codes.md.
#[derive(clap::Parser)]
#[command(
    version,
    after_help = "Examples:
  run-state img-42 5 -- ./kickstart.sh --mirror eu
  run-state img-42 --next --max-wait 10m -- ./run-state.sh      # state in $BUILDSTATE_STATE
  run-state img-42 70 --timeout 3h -- make integration-test"
)]
struct Args {
    /// The build id given to init-state
    #[arg(value_name = "BUILD_ID")]
    build_id: String,

    /// The state to run (or --next)
    #[arg(
        value_name = "STATE",
        required_unless_present = "next",
        conflicts_with = "next"
    )]
    state: Option<u8>,

    /// Run whichever state check-state says is next
    #[arg(long)]
    next: bool,

    /// Retry in this process when the next attempt is due within this long
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = crate::cli::duration)]
    max_wait: Duration,

    /// The lease's time to live; it is renewed every third of it while the command runs
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = crate::cli::lease_ttl, env = "BUILDSTATE_LEASE_TTL")]
    lease_ttl: Duration,

    /// Override the plan's timeout for the state
    #[arg(long, value_name = "DURATION", value_parser = crate::cli::positive_duration)]
    timeout: Option<Duration>,

    /// After a timeout's SIGTERM, wait this long before SIGKILL
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::cli::duration)]
    kill_grace: Duration,

    /// How much of the end of stderr to keep as the failure message
    #[arg(long, value_name = "BYTES", default_value = "16384", value_parser = crate::cli::stderr_tail)]
    stderr_tail: usize,

    /// The directory the plan's input globs are relative to [default: the working
    /// directory]
    #[arg(long, value_name = "DIR", env = "BUILDSTATE_INPUTS_ROOT")]
    inputs_root: Option<std::path::PathBuf>,

    #[command(flatten)]
    common: Common,

    /// The command to run, after --
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

fn run_state(args: &Args) -> Result<i32> {
    crate::model::validate_build_id(&args.build_id)?;
    let mut store = args.common.writer(false)?;
    let opts = RunOptions {
        build_id: args.build_id.clone(),
        state: args.state,
        command: args.command.clone(),
        max_wait: args.max_wait,
        lease_ttl: args.lease_ttl,
        timeout: args.timeout,
        kill_grace: args.kill_grace,
        tail_bytes: args.stderr_tail,
        inputs_root: args.inputs_root.clone(),
    };
    let outcome = run(&mut store, &opts, &crate::environment::actor("run-state"));
    crate::cli::deliver_after_write("run-state", &mut store);
    let outcome = outcome?;
    let (status, text) = match &outcome {
        Outcome::Completed { state } => ("completed", format!("state {state} completed")),
        Outcome::Waiting { state, at } => (
            "waiting",
            format!(
                "state {state} failed; its retry is scheduled at {}",
                time::format(*at)
            ),
        ),
        Outcome::Blocked { state, reason } => (
            "blocked",
            format!("state {state} failed and needs a person: {reason}"),
        ),
        Outcome::Interrupted { state, signal } => (
            "interrupted",
            format!(
                "interrupted by {}{}",
                crate::runner::signal_name(*signal),
                state
                    .map(|s| format!(" while running state {s}"))
                    .unwrap_or_default()
            ),
        ),
        Outcome::NotRun(d) => ("not_run", format!("nothing run: {}", d.reason)),
    };
    let code = outcome.exit_code();
    if args.common.json {
        let body = serde_json::json!({
            "build_id": args.build_id, "outcome": status, "message": text, "exit_code": code,
        });
        crate::cli::outln(format_args!("{body}"))?;
    } else {
        eprintln!(
            "run-state: build {}: {}",
            args.build_id,
            crate::redact::printable(&text)
        );
    }
    Ok(code)
}

crate::command!("run-state", run_state);
