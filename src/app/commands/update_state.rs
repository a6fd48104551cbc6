//! update-state: record one transition of a build (start, complete, fail, meta), or a
//! person's intervention (retry, skip, rollback, cancel, force, reset).

use std::path::{Path, PathBuf};

use crate::cli::Common;
use crate::model::{parse_meta_pair, Transition};
use crate::policy::Category;
use crate::report::Report;
use crate::session::{Inputs, Session, Start};
use crate::{exit, Error, Result};
use clap::Subcommand;

/// Record one transition of a build, durably, in one transaction.
///
/// A failure is classified (transient, persistent, unknown) by the plan's rules unless
/// --category says, and the state's retry policy then schedules a retry or blocks the
/// build for a person (docs/retries.md). retry, skip, rollback, cancel, force and reset
/// are for people: each records who did it and why. `complete` records the state's
/// inputs when the plan declares them; `start` of a completed state whose inputs changed
/// reruns it (docs/plan.md#inputs). A refused transition (unknown build, state not in the
/// plan, out of order, moving backwards, retry not due) writes nothing and exits with a
/// distinct code: docs/exit-codes.md.
#[derive(clap::Parser)]
#[command(
    version,
    subcommand_value_name = "ACTION",
    subcommand_help_heading = "Actions",
    after_help = "Examples:
  update-state img-42 start 15
  update-state img-42 complete 15
  update-state img-42 fail 15 --error \"ansible-playbook exited 2\" --exit-code 2
  some-command 2>&1 | update-state img-42 fail 15 --error-file -
  update-state img-42 meta ami_id=ami-0abc git_sha=1a2b3c
  update-state img-42 output ami_id=ami-0abc
  update-state img-42 retry 10 --reason \"opened port 22 in the security group\"
  update-state img-42 rollback --to 60 --reason \"hardening broke sshd\"
  update-state img-42 force 20 --reason \"users role fixed upstream\"
  update-state img-42 reset --reason \"new base image\""
)]
struct Args {
    /// The build id given to init-state
    #[arg(value_name = "BUILD_ID")]
    build_id: String,

    #[command(subcommand)]
    action: Action,

    /// The directory the plan's input globs are relative to: `complete` records the
    /// state's inputs, `start` of a completed state whose inputs changed reruns it
    /// [default: the working directory]
    #[arg(
        long,
        value_name = "DIR",
        env = "BUILDSTATE_INPUTS_ROOT",
        global = true
    )]
    inputs_root: Option<PathBuf>,

    /// The lease holder: `start` takes the build's lease for it, and while that lease
    /// lives only the same owner may complete or fail the state (default: USER@HOST)
    #[arg(long, value_name = "NAME", env = "BUILDSTATE_OWNER", global = true)]
    owner: Option<String>,

    #[command(flatten)]
    common: Common,
}

#[derive(Subcommand)]
enum Action {
    /// Record that a state started (a new attempt of it), taking the build's lease
    Start {
        /// The state's number in the build's plan (0 to 100)
        #[arg(value_name = "STATE")]
        state: u8,
        /// How long the lease lives; nothing renews it, so past this the state counts as
        /// abandoned and another worker may take it over [default: the state's timeout,
        /// else twice its expected duration]
        #[arg(long, value_name = "DURATION", value_parser = crate::cli::lease_ttl)]
        lease_ttl: Option<std::time::Duration>,
    },
    /// Record that a state completed; it becomes the build's current state
    Complete {
        /// The state's number in the build's plan (0 to 100)
        #[arg(value_name = "STATE")]
        state: u8,
        /// Fencing: refuse (exit 14) unless this attempt is still the one running under
        /// --owner's lease, e.g. the attempt printed by `start`
        #[arg(long, value_name = "N")]
        attempt: Option<u32>,
    },
    /// Record that a state failed; the current state stays at the last completed one
    Fail {
        /// The state's number in the build's plan (0 to 100)
        #[arg(value_name = "STATE")]
        state: u8,
        /// What went wrong (stored verbatim, secrets redacted)
        #[arg(
            long,
            value_name = "MESSAGE",
            required_unless_present = "error_file",
            conflicts_with = "error_file"
        )]
        error: Option<String>,
        /// Read the message from a file, or '-' for stdin (for messages over argv's 128 KiB).
        /// At most 4 MiB: a longer file gives its end, a longer stdin is refused
        #[arg(long, value_name = "FILE")]
        error_file: Option<PathBuf>,
        /// What kind of failure this is: transient, persistent or unknown [default:
        /// decided by the plan's rules]
        #[arg(long, value_name = "CATEGORY", value_parser = category_parser())]
        category: Option<Category>,
        /// The failed command's exit code (used to classify the failure)
        #[arg(long, value_name = "N", allow_negative_numbers = true)]
        exit_code: Option<i32>,
        /// Fencing: refuse (exit 14) unless this attempt is still the one running under
        /// --owner's lease
        #[arg(long, value_name = "N")]
        attempt: Option<u32>,
    },
    /// Set metadata on the build (KEY=VALUE, several at once)
    Meta {
        #[arg(value_name = "KEY=VALUE", required = true)]
        pairs: Vec<String>,
    },
    /// Record values the active state (or --state) produced, KEY=VALUE: later states see
    /// the current ones (check-state --json, BUILDSTATE_OUTPUT_<KEY> in run-state's
    /// command); a new attempt, force, reset, rerun or rollback of the state supersedes
    /// them (docs/outputs.md)
    #[command(after_help = "Examples:
  update-state img-42 output ami_id=ami-0abc region=us-east-1
  update-state img-42 output --state 40 report_url=s3://reports/img-42.html
  update-state img-42 output --packer-manifest manifest.json")]
    Output {
        #[arg(value_name = "KEY=VALUE", required_unless_present = "packer_manifest")]
        pairs: Vec<String>,
        /// The state that produced them, one that is running or has run [default: the
        /// active state]
        #[arg(long, value_name = "STATE")]
        state: Option<u8>,
        /// Also record the builds of the last run in this Packer manifest.json (its
        /// `manifest` post-processor): `<name>_artifact_id`, `<name>_builder_type`,
        /// `<name>_<custom_data key>`, and unprefixed keys when the run had one build
        /// Its artifacts (all but the null builder's) are recorded as resources too:
        /// type the builder type, id the artifact id (docs/resources.md)
        #[arg(long, value_name = "FILE")]
        packer_manifest: Option<PathBuf>,
        /// With --packer-manifest: the shell command that deletes each artifact (run by
        /// monitor gc with BUILDSTATE_RESOURCE_ID set to the artifact id)
        #[arg(long, value_name = "CMD", requires = "packer_manifest")]
        cleanup: Option<String>,
        /// With --packer-manifest: the shell command that tells whether each artifact is
        /// still there (check-state --resources --refresh)
        #[arg(long, value_name = "CMD", requires = "packer_manifest")]
        check: Option<String>,
        /// Fencing: refuse (exit 14) unless this attempt is still the one running under
        /// --owner's lease
        #[arg(long, value_name = "N")]
        attempt: Option<u32>,
    },
    /// Record a cloud resource the active state created, or that one is gone: the ledger
    /// `monitor gc` cleans orphans from (docs/resources.md)
    #[command(subcommand)]
    Resource(ResourceAction),
    /// Allow one more attempt of a waiting or blocked state now, even after its policy's
    /// attempts are used up
    Retry {
        /// The state's number in the build's plan (0 to 100)
        #[arg(value_name = "STATE")]
        state: u8,
        /// Why (recorded with who did it)
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
    /// Mark the next (or the failed) state done without running it
    Skip {
        /// The state's number in the build's plan (0 to 100)
        #[arg(value_name = "STATE")]
        state: u8,
        /// Why (recorded with who did it)
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
    /// Move the build back to the state completed before the current one, or to --to;
    /// the states after it run again
    Rollback {
        /// The completed state to go back to
        #[arg(long, value_name = "STATE")]
        to: Option<u8>,
        /// Why (recorded with who did it)
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
    /// Mark STATE and every state after it to run again (--all: the whole build);
    /// history is kept and the force is recorded with who did it and why
    Force {
        /// The first state to run again (a completed one, or the failed one)
        #[arg(
            value_name = "STATE",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        state: Option<u8>,
        /// Every state runs again
        #[arg(long)]
        all: bool,
        /// Why (recorded with who did it)
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
    /// Start the build over: every state runs again, in a new epoch (check-state shows
    /// it); the history of earlier epochs is kept
    Reset {
        /// Why (recorded with who did it)
        #[arg(long, value_name = "TEXT")]
        reason: String,
        /// Then run the cleanup command of every resource the old epoch left (exit 23
        /// if one fails)
        #[arg(long)]
        cleanup: bool,
    },
    /// Withdraw the build's current outputs (a bad image): builds that consumed them
    /// (inputs.builds) become stale and are alerted; builds that wait for this one wait
    /// until it makes new ones
    #[command(after_help = "Example:
  update-state base-rhel9 revoke --reason 'CVE-2026-1234 in the kernel of ami-0aaa1111'")]
    Revoke {
        /// Why (recorded with who did it, and sent with the alerts)
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
    /// Stop the build for good: check-state reports it blocked and nothing can start
    Cancel {
        /// Why (recorded with who did it)
        #[arg(long, value_name = "TEXT")]
        reason: String,
        /// Then run the cleanup command of every resource the build left (as
        /// `monitor gc` does; exit 23 if one fails)
        #[arg(long)]
        cleanup: bool,
    },
}

#[derive(Subcommand)]
enum ResourceAction {
    /// Record that the active state's attempt (or --state's) created TYPE ID
    #[command(after_help = "Examples:
  update-state img-42 resource add key-pair bs-img-42 --cleanup 'aws ec2 delete-key-pair --key-name \"$BUILDSTATE_RESOURCE_ID\"'
  update-state img-42 resource add security-group sg-0abc --prop region=us-east-1 \\
    --cleanup 'aws ec2 delete-security-group --group-id \"$BUILDSTATE_RESOURCE_ID\" --region \"$BUILDSTATE_RESOURCE_PROP_region\"'")]
    Add {
        /// What kind of thing it is (key-pair, security-group, instance, snapshot, ...)
        #[arg(value_name = "TYPE")]
        rtype: String,
        /// Its id in the cloud
        #[arg(value_name = "ID")]
        id: String,
        /// A property, KEY=VALUE (several at once); its cleanup and check get
        /// BUILDSTATE_RESOURCE_PROP_<KEY>
        #[arg(long = "prop", value_name = "KEY=VALUE")]
        props: Vec<String>,
        /// The shell command that deletes it, run by `monitor gc` with
        /// BUILDSTATE_RESOURCE_TYPE, _ID and _PROP_<KEY> set; deleting what is already gone
        /// must succeed
        #[arg(long, value_name = "CMD")]
        cleanup: Option<String>,
        /// The shell command that exits 0 while it exists (`check-state --resources
        /// --refresh`)
        #[arg(long, value_name = "CMD")]
        check: Option<String>,
        /// The state that created it, one that is running or has run [default: the
        /// active state]
        #[arg(long, value_name = "STATE")]
        state: Option<u8>,
        /// Fencing: refuse (exit 14) unless this attempt is still the one running under
        /// --owner's lease
        #[arg(long, value_name = "N")]
        attempt: Option<u32>,
    },
    /// Record that TYPE ID is gone (deleted some other way than by its cleanup)
    Delete {
        #[arg(value_name = "TYPE")]
        rtype: String,
        #[arg(value_name = "ID")]
        id: String,
    },
}

/// transient, persistent or unknown: the values are listed, so the shells complete them,
/// and the crate's one parser reads them.
fn category_parser() -> impl clap::builder::TypedValueParser<Value = Category> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["transient", "persistent", "unknown"])
        .try_map(|s: String| Category::parse_input(&s).map_err(|e| e.to_string()))
}

fn read_message(path: &Path) -> Result<String> {
    let (note, bytes) =
        crate::files::read_limited(path, "--error-file", crate::files::MAX_MESSAGE_FILE, true)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        Error::InvalidInput(format!(
            "the message in {} is not UTF-8 (invalid byte at offset {}): convert it first",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })?;
    if !note.is_empty() {
        eprintln!(
            "update-state: note: {} is longer than {} bytes: its end is recorded",
            path.display(),
            crate::files::MAX_MESSAGE_FILE
        );
    }
    Ok(note + &text)
}

fn transition(action: &Action) -> Result<Transition> {
    Ok(match action {
        Action::Start { state, .. } => Transition::Start { state: *state },
        Action::Complete { state, .. } => Transition::complete(*state),
        Action::Fail {
            state,
            error,
            error_file,
            category,
            exit_code,
            ..
        } => Transition::Fail {
            state: *state,
            message: match (error, error_file) {
                (Some(m), _) => m.clone(),
                (None, Some(path)) => read_message(path)?,
                (None, None) => unreachable!("clap requires --error or --error-file"),
            },
            category: *category,
            exit_code: *exit_code,
            signal: None,
            timed_out: false,
        },
        Action::Meta { pairs } => Transition::Meta {
            pairs: pairs
                .iter()
                .map(|p| parse_meta_pair(p))
                .collect::<Result<_>>()?,
        },
        Action::Output {
            pairs,
            state,
            packer_manifest,
            cleanup,
            check,
            ..
        } => {
            let mut all = pairs
                .iter()
                .map(|p| crate::outputs::parse_pair(p))
                .collect::<Result<Vec<_>>>()?;
            let mut resources = Vec::new();
            if let Some(path) = packer_manifest {
                let (_, bytes) = crate::files::read_limited(
                    path,
                    "--packer-manifest",
                    crate::files::MAX_MESSAGE_FILE,
                    false,
                )?;
                let run =
                    crate::outputs::from_packer_manifest(&bytes, &path.display().to_string())?;
                all.extend(run.outputs);
                resources = run.artifacts;
                for op in &mut resources {
                    if let crate::resources::Op::Add {
                        cleanup: c,
                        check: k,
                        ..
                    } = op
                    {
                        c.clone_from(cleanup);
                        k.clone_from(check);
                    }
                }
            }
            Transition::Output {
                state: *state,
                pairs: all,
                resources,
            }
        }
        Action::Retry { state, reason } => Transition::Retry {
            state: *state,
            reason: reason.clone(),
        },
        Action::Skip { state, reason } => Transition::Skip {
            state: *state,
            reason: reason.clone(),
        },
        Action::Rollback { to, reason } => Transition::Rollback {
            to: *to,
            reason: reason.clone(),
        },
        Action::Resource(ResourceAction::Add {
            rtype,
            id,
            props,
            cleanup,
            check,
            state,
            ..
        }) => Transition::Resource {
            state: *state,
            op: crate::resources::Op::Add {
                rtype: rtype.clone(),
                id: id.clone(),
                props: props
                    .iter()
                    .map(|p| crate::outputs::parse_pair(p))
                    .collect::<Result<_>>()?,
                cleanup: cleanup.clone(),
                check: check.clone(),
            },
        },
        Action::Resource(ResourceAction::Delete { rtype, id }) => Transition::Resource {
            state: None,
            op: crate::resources::Op::Delete {
                rtype: rtype.clone(),
                id: id.clone(),
            },
        },
        Action::Cancel { reason, .. } => Transition::Cancel {
            reason: reason.clone(),
        },
        Action::Revoke { reason } => Transition::Revoke {
            reason: reason.clone(),
        },
        Action::Force { state, reason, .. } => Transition::Reopen {
            from: *state,
            reason: reason.clone(),
            why: crate::model::Reopen::Force,
        },
        Action::Reset { reason, .. } => Transition::Reopen {
            from: None,
            reason: reason.clone(),
            why: crate::model::Reopen::Reset,
        },
    })
}

fn run(args: &Args) -> Result<i32> {
    let t = transition(&args.action)?;
    crate::model::validate_build_id(&args.build_id)?;
    let mut store = args.common.writer(false)?;
    let actor = crate::environment::actor("update-state");
    let owner = args
        .owner
        .clone()
        .unwrap_or_else(|| format!("{}@{}", actor.user, actor.host));
    let mut session = Session {
        writer: &mut store,
        actor: &actor,
        owner: &owner,
    };
    let root = args.inputs_root.as_deref();
    // Who a revocation makes stale, to say so (the write alerts them itself).
    let consumed = if let Transition::Revoke { .. } = t {
        let values = crate::outputs::values(&session.writer.store().outputs(&args.build_id)?);
        session.writer.store().consumers(&args.build_id, &values)?
    } else {
        Vec::new()
    };
    let build = match (&args.action, &t) {
        (Action::Start { state, lease_ttl }, _) => {
            let start = Start {
                state: *state,
                lease_ttl: *lease_ttl,
                inputs_root: root,
                ..Start::default()
            };
            session
                .start(&args.build_id, &start)?
                .running(&args.build_id)?
                .0
        }
        (Action::Complete { state, attempt }, _) => session.complete(
            &args.build_id,
            *state,
            Inputs::Hash { root, extra: &[] },
            *attempt,
        )?,
        (
            Action::Fail { attempt, .. }
            | Action::Output { attempt, .. }
            | Action::Resource(ResourceAction::Add { attempt, .. }),
            t,
        ) => session.record(&args.build_id, t, *attempt)?,
        (_, t) => session.record(&args.build_id, t, None)?,
    };
    let cleanup = matches!(
        args.action,
        Action::Cancel { cleanup: true, .. } | Action::Reset { cleanup: true, .. }
    );
    let failed = if cleanup {
        cleanup_now(&mut store, &actor, &args.build_id)?
    } else {
        false
    };
    let code = if failed {
        exit::CLEANUP_FAILED
    } else {
        exit::OK
    };
    crate::cli::deliver_after_write("update-state", &mut store);
    let build = store.store().build(&args.build_id)?.unwrap_or(build);
    let (report, plan) = Report::after_write(store.store(), &build, std::time::SystemTime::now())?;
    if args.common.json {
        crate::cli::outln(format_args!("{}", report.to_json()))?;
        return Ok(code);
    }
    let label = |s: Option<u8>| s.map(|s| plan.label(s)).unwrap_or_default();
    let what = match &t {
        Transition::Start { state } => format!(
            "started {} (attempt {}); {owner} holds the lease until {}",
            plan.label(*state),
            build.attempt,
            build
                .lease_expires_at
                .map(crate::time::format)
                .unwrap_or_default()
        ),
        Transition::Complete { state, .. } => format!("completed {}", plan.label(*state)),
        Transition::Fail { state, .. } => format!(
            "recorded failure of {} (attempt {}, {})",
            plan.label(*state),
            build.attempt,
            build.last_category.map_or("unknown", |c| c.as_str())
        ),
        Transition::Meta { pairs } => format!("set {} metadata value(s)", pairs.len()),
        Transition::Resource { op, .. } => format!("recorded: {}", crate::resources::summary(op)),
        Transition::Output {
            state,
            pairs,
            resources,
        } => format!(
            "recorded {} output(s){} of {}",
            pairs.len(),
            if resources.is_empty() {
                String::new()
            } else {
                format!(" and {} resource(s)", resources.len())
            },
            label(state.or(build.active_state).or(build.current_state))
        ),
        Transition::Retry { state, .. } => format!(
            "allowed attempt {} of {} now",
            build.attempt + 1,
            plan.label(*state)
        ),
        Transition::Skip { state, .. } => format!("skipped {}", plan.label(*state)),
        Transition::Rollback { .. } => format!("rolled back to {}", label(build.current_state)),
        Transition::Cancel { .. } => "cancelled".to_string(),
        Transition::Revoke { .. } => {
            let n = consumed.len();
            let names: Vec<String> = consumed
                .iter()
                .map(|c| {
                    format!(
                        "{} at {}{}",
                        c.build.build_id,
                        c.plan.label(c.state),
                        if c.running { ", running" } else { "" }
                    )
                })
                .collect();
            format!(
                "revoked its outputs; {n} build(s) consumed them and are alerted (stale now, or when their running state ends){}",
                if n == 0 {
                    String::new()
                } else {
                    format!(": {}", names.join(", "))
                }
            )
        }
        Transition::Interrupt { .. } => "recorded an interruption".to_string(),
        Transition::Tasks { .. } => "recorded task results".to_string(),
        Transition::PruneTasks { count, .. } => format!("removed {count} old task results"),
        Transition::Reopen { from, .. } => match (from, &args.action) {
            (_, Action::Reset { .. }) => format!(
                "started over: epoch {}, every state runs again",
                report.epoch
            ),
            (Some(s), _) => format!("{} and every state after it will run again", plan.label(*s)),
            (None, _) => "every state will run again".to_string(),
        },
        Transition::Unmet { .. }
        | Transition::Verified { .. }
        | Transition::Late { .. }
        | Transition::Reuse { .. } => {
            unreachable!("update-state does not record these")
        }
    };
    crate::cli::outln(format_args!(
        "build {}: {what}; status {} (serial {})\n  next: {}",
        args.build_id, build.status, build.serial, report.decision.reason
    ))?;
    Ok(code)
}

/// `cancel --cleanup`, `reset --cleanup`: collect the build's orphans now, as
/// `monitor gc` would (each said on stderr). Whether a cleanup failed.
fn cleanup_now(
    store: &mut crate::sync::Writer,
    actor: &crate::context::Actor,
    build_id: &str,
) -> Result<bool> {
    let opts = crate::gc::Options {
        // Only what the cancel or reset orphaned: not idleness.
        window: std::time::Duration::MAX,
        dry_run: false,
        timeout: std::time::Duration::from_secs(600),
        tries: 3,
        retry_delay: std::time::Duration::from_secs(5),
    };
    store.refresh(build_id)?;
    let now = store.now()?;
    let ledger = store.store().resources(build_id, now, opts.window)?;
    let ledgers = [(build_id.to_string(), ledger)];
    let done = crate::gc::collect(store, actor, &ledgers, now, &opts, &|c| {
        eprintln!(
            "update-state: cleanup: {} {} {}{}",
            c.rtype,
            c.id,
            c.outcome,
            c.message
                .as_deref()
                .map(|m| format!(": {}", crate::decide::headline(m, 300)))
                .unwrap_or_default()
        );
    })?;
    Ok(done.iter().any(|c| c.outcome == "failed"))
}

crate::command!("update-state", run);
