//! init-state: create a build record, or confirm that an identical one exists.

use std::path::PathBuf;
use std::time::SystemTime;

use crate::cli::Common;
use crate::model::{parse_meta_pair, InitRequest};
use crate::report::Report;
use crate::{exit, Result};

/// Create a build record, or confirm that an identical one exists.
///
/// Repeating the same init is safe and changes nothing; the same build id with a
/// different cloud, image, plan or metadata is a conflict (exit 4). Exit codes:
/// docs/exit-codes.md.
#[derive(clap::Parser)]
#[command(
    version,
    after_help = "Example:\n  init-state img-2026-11-22 --cloud aws --image rhel9 --meta git_sha=1a2b3c"
)]
struct Args {
    /// The build id: 1-128 letters, digits, '.', '_' or '-'
    #[arg(value_name = "BUILD_ID")]
    build_id: String,

    /// Cloud provider the image is built for (aws, azure, gcp, ...)
    #[arg(long, value_name = "PROVIDER")]
    cloud: String,

    /// Image type (rhel9, ubuntu-24.04, ...)
    #[arg(long, value_name = "TYPE")]
    image: String,

    /// Plan file (TOML, see docs/plan.md) [default: the built-in classic image-build plan]
    #[arg(long, value_name = "FILE", env = "BUILDSTATE_PLAN")]
    plan: Option<PathBuf>,

    /// Metadata to record with the build; repeat for several
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    meta: Vec<String>,

    /// Wait for another build's state before any of this build's states runs:
    /// BUILD:STATE (e.g. base-rhel9:100); repeat for several. The parent must exist
    /// (exit 8 otherwise), and must not wait for this build (docs/plan.md#dependencies)
    #[arg(long = "after", value_name = "BUILD:STATE")]
    after: Vec<String>,

    /// Reuse what an identical build did: record as reused every leading state of
    /// BUILD whose recorded inputs equal what this build's hash to now and whose outputs
    /// are current; the first that differs runs normally (docs/plan.md#reuse)
    #[arg(long, value_name = "BUILD")]
    reuse_from: Option<String>,

    /// With --reuse-from: the directory the plan's input globs are relative to
    /// [default: BUILDSTATE_INPUTS_ROOT, else the working directory]
    #[arg(long, value_name = "DIR", requires = "reuse_from")]
    inputs_root: Option<PathBuf>,

    #[command(flatten)]
    common: Common,
}

fn run(args: &Args) -> Result<i32> {
    let plan = crate::files::plan(args.plan.as_deref())?;
    let meta = args
        .meta
        .iter()
        .map(|m| parse_meta_pair(m))
        .collect::<Result<Vec<_>>>()?;
    let req = InitRequest {
        build_id: args.build_id.clone(),
        cloud: args.cloud.clone(),
        image: args.image.clone(),
        plan,
        meta,
        after: args.after.clone(),
    };
    req.validate()?;
    let mut store = args.common.writer(true)?;
    let now = SystemTime::now();
    let actor = crate::environment::actor("init-state");
    let (outcome, reused) = match &args.reuse_from {
        Some(from) => crate::session::init_reusing(
            &mut store,
            &req,
            &actor,
            now,
            from,
            args.inputs_root.as_deref(),
        )?,
        None => (crate::session::init(&mut store, &req, &actor, now)?, None),
    };
    crate::cli::deliver_after_write("init-state", &mut store);
    let (mut report, stored_plan) = Report::after_write(store.store(), &outcome.build, now)?;
    report.created = Some(outcome.created);
    report.reuse = reused.clone();
    if let Some(r) = reused.as_ref().filter(|r| r.error.is_some()) {
        eprintln!(
            "init-state: warning: build {} was created, but reusing from {} failed ({}): {}",
            req.build_id,
            r.from,
            r.error.as_deref().unwrap_or_default(),
            r.stopped.as_deref().unwrap_or_default()
        );
    }
    if args.common.json {
        crate::cli::outln(format_args!("{}", report.to_json()))?;
    } else if outcome.created {
        let first = stored_plan.first();
        let init = match stored_plan.done_at_init() {
            Some(s) => format!("{} recorded as done", stored_plan.label(s.id)),
            None if first.id == 0 => format!(
                "{} has work of its own (work = true in the plan): run it first",
                stored_plan.label(0)
            ),
            None => "nothing done yet".to_string(),
        };
        crate::cli::outln(format_args!(
            "created build {} (cloud {}, image {}, plan {} with {} states); {init}\n  next: {}",
            req.build_id,
            req.cloud,
            req.image,
            stored_plan.name,
            stored_plan.states.len(),
            report.decision.reason
        ))?;
        if let Some(r) = &reused {
            let states: Vec<String> = r
                .reused
                .iter()
                .map(|s| {
                    format!(
                        "{} {}{}",
                        s.state,
                        s.name,
                        s.attempt
                            .map_or(String::new(), |a| format!(" (attempt {a})"))
                    )
                })
                .collect();
            crate::cli::outln(format_args!(
                "  reused from {}: {}{}",
                r.from,
                if states.is_empty() {
                    "nothing".to_string()
                } else {
                    states.join(", ")
                },
                r.stopped
                    .as_ref()
                    .map_or(String::new(), |w| format!("\n  not reused: {w}"))
            ))?;
        }
    } else {
        crate::cli::outln(format_args!(
            "build {} already exists with the same identity; nothing changed (serial {})",
            req.build_id, outcome.build.serial
        ))?;
    }
    Ok(exit::OK)
}

crate::command!("init-state", run);
