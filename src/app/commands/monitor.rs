//! monitor: the cron job that watches builds, delivers alerts, exports metrics, gives
//! statistics and reports, and archives old builds.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::cli::Common;
use crate::notify::slack::deliver;
use crate::{exit, monitor, time, Error, Result};
use clap::Subcommand;

/// Watch builds: find the ones that need a person or look stuck, deliver queued Slack
/// alerts, show a status table, wait for a build, export Prometheus metrics, give
/// statistics and an HTML timeline, and archive old builds to the remote.
///
/// Cron-ready: `monitor check` prints nothing and exits 0 when all is well, and exits 13
/// when something needs a person (each finding on stdout). Every subcommand has --json.
/// Slack: BUILDSTATE_SLACK_WEBHOOK_URL (or _FILE), or BUILDSTATE_SLACK_TOKEN (or _FILE)
/// with BUILDSTATE_SLACK_CHANNEL; secrets come from the environment or a file only.
#[derive(clap::Parser)]
#[command(
    version,
    subcommand_value_name = "COMMAND",
    after_help = "Examples (crontab):
  */5 * * * *  monitor check && monitor deliver
  * * * * *    monitor metrics --textfile /var/lib/node_exporter/buildstate.prom
  0 3 * * *    monitor archive --completed-before 30d --cancelled-before 7d --remote s3://bucket/builds
  0 4 * * *    monitor prune-tasks --older-than 30d
  monitor status
  monitor wait img-42 --until completed --timeout 3h
  monitor stats --since 7d
  monitor report --html builds.html
With --remote URL (or BUILDSTATE_REMOTE) the database is a cache of the remote (docs/fleet.md)."
)]
struct Args {
    #[command(subcommand)]
    command: Command,

    #[command(flatten)]
    common: Common,
}

/// Which history `stats` and `report` read.
#[derive(clap::Args)]
struct Window {
    /// The window: events at most this old
    #[arg(long, value_name = "DURATION", default_value = "30days", value_parser = crate::cli::positive_duration)]
    since: Duration,
    /// Only builds for this cloud
    #[arg(long, value_name = "CLOUD")]
    cloud: Option<String>,
    /// Only builds of this image
    #[arg(long, value_name = "IMAGE")]
    image: Option<String>,
    /// Only builds of the plan with this name
    #[arg(long, value_name = "NAME")]
    plan: Option<String>,
}

impl Window {
    fn stats(&self, store: &crate::store::Store, now: SystemTime) -> Result<crate::stats::Stats> {
        let filter = crate::stats::Filter {
            cloud: self.cloud.clone(),
            image: self.image.clone(),
            plan: self.plan.clone(),
        };
        crate::stats::stats(store, time::ago(now, self.since), &filter, now)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Find blocked and stuck builds; queue a stuck alert once per episode; exit 13 if a
    /// person is needed
    Check {
        /// Running longer than this many times its state's expected duration is stuck
        #[arg(long, value_name = "X", default_value_t = monitor::STUCK_FACTOR, value_parser = crate::cli::factor)]
        factor: f64,
    },
    /// Deliver queued alerts to Slack, within a time budget; drop old delivered ones.
    /// With --remote: pull every build and deliver the alerts that travel with them,
    /// claimed through the remote (each sent once, whichever machines run this)
    Deliver {
        /// Stop starting new deliveries after this long
        #[arg(long, value_name = "DURATION", default_value = "50s", value_parser = crate::cli::duration)]
        budget: Duration,
        /// Keep delivered and given-up alerts this long
        #[arg(long, value_name = "DURATION", default_value = "30days", value_parser = crate::cli::duration)]
        retention: Duration,
    },
    /// Run the verify commands of completed builds not verified for a while (cron):
    /// a failure is drift (the build reruns from that state, a `drift` alert is queued
    /// once); one that cannot run is recorded as unverified
    ///
    /// With --remote: pull every build first; results are written through the remote.
    /// Exit 0 when every result holds, 13 when a build drifted.
    #[command(
        after_help = "Examples:\n  monitor verify --older-than 24h --concurrency 4 --budget 30m\n  monitor verify --remote s3://bucket/builds --json"
    )]
    Verify {
        /// Verify builds whose last verify is older than this (or that have none)
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = crate::cli::duration)]
        older_than: Duration,
        /// How many builds to verify at once
        #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
        concurrency: u16,
        /// Start no new build after this long
        #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = crate::cli::duration)]
        budget: Duration,
        /// How long each verify command may run
        #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = crate::cli::positive_duration)]
        verify_timeout: Duration,
    },
    /// A table of every build: status, state, attempt, age, when last verified, who
    /// holds it; with --tree, the builds that wait for builds (docs/plan.md#dependencies)
    Status {
        /// The graph of dependencies instead: each build under the builds it waits for,
        /// with whether each dependency holds (--json: every node with its parents and
        /// children)
        #[arg(long)]
        tree: bool,
    },
    /// Wait until a build reaches a state (or completes); replaces polling loops
    Wait {
        #[arg(value_name = "BUILD_ID")]
        build_id: String,
        /// A state number, or "completed"
        #[arg(long, value_name = "STATE|completed")]
        until: String,
        /// Give up after this long (exit 19)
        #[arg(long, value_name = "DURATION", value_parser = crate::cli::duration)]
        timeout: Duration,
        /// How often to look
        #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = crate::cli::positive_duration)]
        interval: Duration,
    },
    /// Statistics over a window: per state, runs, success rate, attempts per success,
    /// p50/p95 duration against the plan's expected, time waiting for retries and for
    /// people, top failure categories and error lines; per build, total time and time
    /// lost to retries
    Stats {
        #[command(flatten)]
        window: Window,
        /// How many builds the table lists, most time lost first (--json lists all)
        #[arg(long, value_name = "N", default_value = "10")]
        builds: usize,
    },
    /// Write one self-contained HTML file: a timeline of each build's states (a bar per
    /// attempt, the waits between), the statistics as charts, and the builds that need
    /// attention
    Report {
        /// The file to write (replaced whole)
        #[arg(long, value_name = "FILE")]
        html: PathBuf,
        #[command(flatten)]
        window: Window,
        /// How many builds the timeline shows, the most recently written first
        #[arg(long, value_name = "N", default_value = "50")]
        builds: usize,
    },
    /// Move old completed and cancelled builds to the remote's archive/ prefix: each
    /// snapshot is written create-only, read back and compared, then the build leaves
    /// this database in one transaction; a run killed half-way loses nothing and a
    /// rerun finishes the job
    Archive {
        /// Archive builds completed (last written) longer ago than this
        #[arg(long, value_name = "DURATION", value_parser = crate::cli::duration)]
        completed_before: Option<Duration>,
        /// Archive builds cancelled longer ago than this
        #[arg(long, value_name = "DURATION", value_parser = crate::cli::duration)]
        cancelled_before: Option<Duration>,
        /// Then VACUUM the database to give the space back (rewrites the whole file)
        #[arg(long)]
        vacuum: bool,
    },
    /// Task results' own retention: remove the task results (one per Ansible task and
    /// host) recorded longer ago than --older-than from every build, archived or not;
    /// one write per build records how many left (a `pruned` event). States, attempts
    /// and every other event stay
    PruneTasks {
        /// Remove task results recorded longer ago than this
        #[arg(long, value_name = "DURATION", default_value = "30days", value_parser = crate::cli::duration)]
        older_than: Duration,
    },
    /// Clean up what builds left behind: run the --cleanup command of every orphaned
    /// resource (its attempt was taken over, its state forced, rerun, rolled back past or
    /// reset, its build cancelled, or failed, blocked or idle longer than --older-than),
    /// newest first, with retries; each deletion is an event (docs/resources.md). Exit 23
    /// if a cleanup failed every try
    Gc {
        /// How long a failed, blocked or idle build keeps its resources
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = crate::cli::duration)]
        older_than: Duration,
        /// Say what would be deleted and why; run and record nothing
        #[arg(long)]
        dry_run: bool,
        /// How long one try of a cleanup command may run
        #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = crate::cli::positive_duration)]
        timeout: Duration,
        /// How many tries a cleanup gets in one run
        #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
        tries: u32,
        /// The pause between two tries
        #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = crate::cli::duration)]
        retry_delay: Duration,
    },
    /// Bring an archived build back whole (history, metadata, serial) from the remote's
    /// archive
    Unarchive {
        #[arg(value_name = "BUILD_ID")]
        build_id: String,
    },
    /// Prometheus metrics, on stdout or into a node_exporter textfile: builds by status,
    /// durations, retries, alerts, and the figures of `monitor stats` over a window
    Metrics {
        /// Write here (temporary file + rename) instead of stdout
        #[arg(long, value_name = "PATH")]
        textfile: Option<PathBuf>,
        /// The window of the buildstate_state_* figures
        #[arg(long, value_name = "DURATION", default_value = "30days", value_parser = crate::cli::positive_duration)]
        since: Duration,
    },
}

/// The database the subcommand reads. In remote mode (--remote, BUILDSTATE_REMOTE) the
/// remote is the truth and the local database a cache of it, created when missing and
/// brought up to date first; only builds whose objects changed since the last pull are
/// fetched (`sync::pull_all`). A build that cannot be pulled is named on stderr with
/// `unpulled` (what that means for this subcommand) and the rest go on.
fn fleet(args: &Args, unpulled: &str) -> Result<crate::sync::Writer> {
    let mut store = args.common.writer(false)?;
    if store.is_remote() {
        for (id, r) in store.pull_all(&|_, _| {})? {
            if let Err(e) = r {
                eprintln!("monitor: warning: build '{id}' was not pulled ({unpulled}): {e}");
            }
        }
    }
    Ok(store)
}

/// The remote archive and unarchive use: --remote / BUILDSTATE_REMOTE, required.
fn archive_remote(args: &Args) -> Result<crate::remote::Remote> {
    args.common.open_remote()?.ok_or_else(|| {
        Error::InvalidInput(
            "archiving needs a remote to keep the builds: pass --remote URL or set BUILDSTATE_REMOTE (a file:// folder works like any other)".into(),
        )
    })
}

/// Print `value` as one line of JSON (every subcommand's --json answer).
fn json_line(value: &impl serde::Serialize) -> Result<()> {
    crate::cli::outln(format_args!(
        "{}",
        serde_json::to_string(value).expect("serializes")
    ))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn run(args: &Args) -> Result<i32> {
    let now = SystemTime::now();
    let json = args.common.json;
    match &args.command {
        Command::Check { factor } => {
            let store = fleet(args, "not checked")?;
            let findings = monitor::check(store.store(), now, *factor)?;
            if json {
                json_line(&findings)?;
            } else {
                for f in &findings {
                    let state = f
                        .state
                        .map(|s| format!(" at state {s}"))
                        .unwrap_or_default();
                    crate::cli::outln(format_args!(
                        "{}: {}{state}: {}",
                        f.build_id, f.what, f.reason
                    ))?;
                }
            }
            Ok(if findings.is_empty() {
                exit::OK
            } else {
                exit::BLOCKED
            })
        }
        Command::Verify {
            older_than,
            concurrency,
            budget,
            verify_timeout,
        } => {
            let mut store = fleet(args, "not verified")?;
            let due = store.store().due_for_verify(time::ago(now, *older_than))?;
            let actor = crate::environment::actor("monitor");
            let report = crate::verify::verify_fleet(
                &mut store,
                &due,
                usize::from(*concurrency),
                *budget,
                *verify_timeout,
                &actor,
                &|v| {
                    if !json {
                        let state = v
                            .state
                            .map(|s| format!(" at state {s}"))
                            .unwrap_or_default();
                        eprintln!(
                            "monitor: verify {}: {}{state}{}",
                            v.build_id,
                            v.outcome,
                            if v.message.is_empty() {
                                String::new()
                            } else {
                                format!(": {}", v.message)
                            }
                        );
                    }
                },
            )?;
            if json {
                json_line(&report)?;
            } else {
                let count = |o: &str| report.builds.iter().filter(|b| b.outcome == o).count();
                crate::cli::outln(format_args!(
                    "verified {} build(s): {} passed, {} drifted, {} unverified, {} failed; {} left for the next run",
                    report.builds.len(),
                    count("passed"),
                    count("drift"),
                    count("unverified"),
                    count("failed"),
                    report.left
                ))?;
            }
            Ok(if report.builds.iter().any(|b| b.outcome == "drift") {
                exit::BLOCKED
            } else if report.builds.iter().any(|b| b.outcome == "failed") {
                exit::INTERNAL
            } else {
                exit::OK
            })
        }
        Command::Deliver { budget, retention } => {
            // Remote mode: the alerts travel with their builds; the local database is a
            // cache of the remote (created when missing), brought up to date first.
            let mut store = fleet(args, "its alerts wait")?;
            let target = crate::environment::slack_target()?.ok_or_else(|| {
                Error::InvalidInput(
                    "Slack is not configured: set BUILDSTATE_SLACK_WEBHOOK_URL (or _FILE), or BUILDSTATE_SLACK_TOKEN (or _FILE) and BUILDSTATE_SLACK_CHANNEL".into(),
                )
            })?;
            let worker = crate::environment::actor("monitor").lease_owner();
            let opts = crate::notify::slack::Options {
                budget: *budget,
                ..crate::cli::settings()?.slack.clone()
            };
            let report = deliver(&mut store, &target, &opts, &worker)?;
            let pruned = crate::notify::prune(store.store(), *retention, now)?;
            if json {
                let mut v = serde_json::to_value(&report).expect("serializes");
                v["pruned"] = pruned.into();
                crate::cli::outln(format_args!("{v}"))?;
            } else if report.delivered + report.retried + report.gave_up > 0 || report.left > 0 {
                crate::cli::outln(format_args!(
                    "delivered {}, retrying {}, gave up {}, still due {}",
                    report.delivered, report.retried, report.gave_up, report.left
                ))?;
            }
            Ok(exit::OK)
        }
        Command::Status { tree: true } => {
            let store = fleet(args, "shown as last pulled")?;
            let nodes = crate::parents::graph(&store.store().graph_facts()?);
            if json {
                json_line(&nodes)?;
            } else {
                let mut out = String::new();
                monitor::write_tree(&mut out, &nodes);
                crate::cli::out(format_args!("{out}"))?;
            }
            Ok(exit::OK)
        }
        Command::Status { tree: false } => {
            let store = fleet(args, "shown as last pulled")?;
            let rows = monitor::status(store.store(), now)?;
            if json {
                json_line(&rows)?;
                return Ok(exit::OK);
            }
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let written = monitor::write_table(&mut out, &rows);
            match written {
                // A reader that stopped early (| head) is not an error.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(exit::OK),
                other => other.map_err(|source| Error::Io {
                    path: "stdout".into(),
                    source,
                })?,
            }
            drop(out);
            let (pending, _, gave_up) = monitor::outbox_counts(store.store())?;
            crate::cli::outln(format_args!(
                "{} build(s); alerts: {pending} waiting, {gave_up} given up",
                rows.len()
            ))?;
            let with: Vec<&monitor::Row> =
                rows.iter().filter(|r| r.orphaned_resources > 0).collect();
            if !with.is_empty() {
                let n: u32 = with.iter().map(|r| r.orphaned_resources).sum();
                let failed: u32 = with.iter().map(|r| r.cleanup_failed_resources).sum();
                let names: Vec<&str> = with.iter().take(5).map(|r| r.build_id.as_str()).collect();
                crate::cli::outln(format_args!(
                    "resources: {n} orphaned, {failed} of them whose cleanup failed, in {} build(s) ({}{}): `monitor gc --dry-run` says which and why",
                    with.len(),
                    names.join(", "),
                    if with.len() > names.len() { ", ..." } else { "" }
                ))?;
            }
            // Outcomes this machine journaled while the remote was away (docs/sync.md).
            for j in store.waiting(None)? {
                crate::cli::outln(format_args!(
                    "journaled here, not yet shared with remote {}: build {}: {} at {}",
                    j.remote, j.build_id, j.outcome, j.happened_at
                ))?;
            }
            Ok(exit::OK)
        }
        Command::Wait {
            build_id,
            until,
            timeout,
            interval,
        } => {
            crate::model::validate_build_id(build_id)?;
            let target = match until.as_str() {
                "completed" => None,
                s => Some(s.parse::<u8>().map_err(|_| {
                    Error::InvalidInput(format!(
                        "--until '{s}': give a state number or 'completed'"
                    ))
                })?),
            };
            let mut store = args.common.writer(false)?;
            let (b, what, code) = monitor::wait(&mut store, build_id, target, *timeout, *interval)?;
            if json {
                crate::cli::outln(format_args!(
                    "{}",
                    serde_json::json!({"build_id": build_id, "outcome": what, "status": b.status, "current_state": b.current_state, "exit_code": code})
                ))?;
            } else {
                crate::cli::outln(format_args!(
                    "build {build_id}: {} (status {}, last completed state {})",
                    what.replace('_', " "),
                    b.status,
                    b.current_state.map_or("none".into(), |s| s.to_string())
                ))?;
            }
            Ok(code)
        }
        Command::Stats { window, builds } => {
            let store = fleet(args, "left out of the figures")?;
            let stats = window.stats(store.store(), now)?;
            if json {
                json_line(&stats)?;
            } else {
                crate::cli::out(format_args!("{}", stats.text(*builds)))?;
            }
            Ok(exit::OK)
        }
        Command::Report {
            html,
            window,
            builds,
        } => {
            let store = fleet(args, "left out of the report")?;
            let stats = window.stats(store.store(), now)?;
            let mut recent = Vec::new();
            for b in &stats.per_build {
                if let Some(build) = store.store().build(&b.build_id)? {
                    recent.push((build.updated_at, b.build_id.clone()));
                }
            }
            recent.sort_by(|a, b| b.cmp(a));
            recent.truncate(*builds);
            let mut lines = Vec::new();
            for (_, id) in &recent {
                lines.push(crate::timeline::line(store.store(), id, now)?);
            }
            let (attention, _) = monitor::findings(store.store(), now, monitor::STUCK_FACTOR)?;
            let left = crate::timeline::leftovers(store.store(), None, now)?;
            let graph = crate::parents::graph(&store.store().graph_facts()?);
            let page = crate::timeline::page(
                &format!("buildstate: builds since {}", stats.since),
                &lines,
                Some(&stats),
                &crate::timeline::Extra {
                    attention: &attention,
                    left: &left,
                    facts: &[],
                    graph: &graph,
                },
                now,
            );
            crate::timeline::write(html, &page)?;
            if json {
                crate::cli::outln(format_args!(
                    "{}",
                    serde_json::json!({"html": html, "builds": lines.len(), "attention": attention.len(), "leftover_resources": left.len()})
                ))?;
            } else {
                crate::cli::outln(format_args!(
                    "wrote {}: {} build(s) in the timeline, {} needing attention, {} resource(s) left behind",
                    html.display(),
                    lines.len(),
                    attention.len(),
                    left.len()
                ))?;
            }
            Ok(exit::OK)
        }
        Command::Archive {
            completed_before,
            cancelled_before,
            vacuum,
        } => {
            if completed_before.is_none() && cancelled_before.is_none() {
                return Err(Error::InvalidInput(
                    "say which builds to archive: --completed-before DURATION and/or --cancelled-before DURATION (e.g. 30d)".into(),
                ));
            }
            let remote = archive_remote(args)?;
            let mut store = args.common.open()?;
            let cutoff = |d: &Option<Duration>| d.map(|d| time::ago(now, d));
            let report = crate::cli::with_progress(json, |p| {
                crate::archive::archive(
                    &mut store,
                    &remote,
                    cutoff(completed_before),
                    cutoff(cancelled_before),
                    *vacuum,
                    p,
                )
            })?;
            for (id, why) in &report.failed {
                eprintln!("monitor: {id}: not archived: {why}");
            }
            for (id, why) in &report.skipped {
                eprintln!("monitor: {id}: left here: {why}");
            }
            if json {
                json_line(&report)?;
            } else {
                crate::cli::outln(format_args!(
                    "archived {} of {} matching build(s) to {}; database {} -> {}{}",
                    report.archived.len(),
                    report.matched,
                    remote.name(),
                    mib(report.size_before_bytes),
                    mib(report.size_after_bytes),
                    if report.vacuumed {
                        " (vacuumed)"
                    } else if report.vacuum_deferred {
                        " (vacuumed, but another process is reading the database: the space is given back once it closes and a later write checkpoints)"
                    } else {
                        " (space is reused by new rows; --vacuum gives it back to the disk)"
                    }
                ))?;
            }
            Ok(if report.failed.is_empty() {
                exit::OK
            } else {
                exit::REMOTE
            })
        }
        Command::PruneTasks { older_than } => {
            // Remote mode: each build's removal is a write through the remote.
            let mut store = fleet(args, "its task results stay")?;
            let actor = crate::environment::actor("monitor");
            let before = time::ago(now, *older_than);
            let report = crate::cli::with_progress(json, |p| {
                crate::archive::prune_tasks(&mut store, before, &actor, p)
            })?;
            for (id, why) in &report.failed {
                eprintln!("monitor: {id}: task results not pruned: {why}");
            }
            if json {
                json_line(&report)?;
            } else {
                let removed: u64 = report.pruned.iter().map(|(_, n)| n).sum();
                crate::cli::outln(format_args!(
                    "removed {removed} task result(s) recorded before {} from {} build(s); database {} -> {} (space is reused by new rows)",
                    time::format(before),
                    report.pruned.len(),
                    mib(report.size_before_bytes),
                    mib(report.size_after_bytes),
                ))?;
            }
            Ok(report.failure_code.unwrap_or(exit::OK))
        }
        Command::Gc {
            older_than,
            dry_run,
            timeout,
            tries,
            retry_delay,
        } => {
            let mut store = fleet(args, "its resources are not collected")?;
            if store.is_remote() && !*dry_run && crate::cli::settings()?.remote.keys.is_none() {
                // Cleanup commands come from snapshots in the bucket: unsigned, anyone who
                // can write there could have this host run anything.
                return Err(Error::InvalidInput(
                    "monitor gc runs the cleanup commands recorded in the remote's snapshots: in remote mode it needs them signed; set BUILDSTATE_SNAPSHOT_KEY (or _FILE) on every worker and here (docs/sync.md), or pass --dry-run to only look".into(),
                ));
            }
            let actor = crate::environment::actor("monitor");
            // `fleet` pulled every build already (remote mode).
            let now = store.now()?;
            let ledgers = store.store().all_resources(now, *older_than)?;
            let opts = crate::gc::Options {
                window: *older_than,
                dry_run: *dry_run,
                timeout: *timeout,
                tries: *tries,
                retry_delay: *retry_delay,
            };
            let done = crate::gc::collect(&mut store, &actor, &ledgers, now, &opts, &|c| {
                if !json {
                    let _ = crate::cli::outln(format_args!(
                        "{} {} {} (build {}): {}{}",
                        c.outcome,
                        c.rtype,
                        c.id,
                        c.build_id,
                        c.why,
                        c.message
                            .as_deref()
                            .map(|m| format!("\n  {}", crate::decide::headline(m, 300)))
                            .unwrap_or_default()
                    ));
                }
            })?;
            if json {
                #[derive(serde::Serialize)]
                struct Report<'a> {
                    dry_run: bool,
                    resources: &'a [crate::gc::Collected],
                }
                json_line(&Report {
                    dry_run: *dry_run,
                    resources: &done,
                })?;
            } else if done.is_empty() {
                crate::cli::outln(format_args!(
                    "no orphaned resources in {} build(s) with resources",
                    ledgers.len()
                ))?;
            }
            Ok(if done.iter().any(|c| c.outcome == "failed") {
                exit::CLEANUP_FAILED
            } else {
                exit::OK
            })
        }
        Command::Unarchive { build_id } => {
            let remote = archive_remote(args)?;
            let mut store = args.common.create()?;
            let r = crate::archive::unarchive(&mut store, &remote, build_id)?;
            if json {
                json_line(&r)?;
            } else {
                crate::cli::outln(format_args!(
                    "build {}: back from the archive of {} (serial {}, {} events)",
                    r.build_id,
                    remote.name(),
                    r.serial,
                    r.events
                ))?;
            }
            Ok(exit::OK)
        }
        Command::Metrics { textfile, since } => {
            let store = fleet(args, "counted as last pulled")?;
            let mut text = monitor::metrics(store.store(), now)?;
            let stats = crate::stats::stats(
                store.store(),
                time::ago(now, *since),
                &crate::stats::Filter::default(),
                now,
            )?;
            text.push_str(&stats.prometheus(*since));
            match textfile {
                Some(path) => monitor::write_textfile(path, &text)?,
                None => crate::cli::out(format_args!("{text}"))?,
            }
            Ok(exit::OK)
        }
    }
}

crate::command!("monitor", run);
