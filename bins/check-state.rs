//! check-state: what should a pipeline do next with this build?

use std::path::PathBuf;
use std::process::ExitCode;

use buildstate::cli::{finish, Common};
use buildstate::plan::Plan;
use buildstate::report::Report;
use buildstate::Result;

/// Print what a pipeline should do next with a build, and exit with a code a task can
/// gate on: 0 go ahead (start, resume, retry), 10 already completed, 11 in progress
/// elsewhere, 12 wait for a scheduled retry, 13 needs a person. An unknown build id
/// is "start a new build", not an error; a missing database file is (exit 9), since
/// only init-state creates one. Details: docs/exit-codes.md.
#[derive(clap::Parser)]
#[command(
    version,
    after_help = "Examples:\n  check-state img-42\n  check-state img-42 --json | jq -r .decision\n  check-state img-42 --output state/ && . state/resume-metadata && echo \"$RESUME_STATE\""
)]
struct Args {
    /// The build id
    #[arg(value_name = "BUILD_ID")]
    build_id: String,

    /// Also write DIR/decision.json and DIR/resume-metadata (KEY=VALUE lines to source)
    #[arg(long, value_name = "DIR")]
    output: Option<PathBuf>,

    /// Include the build's full event history
    #[arg(long)]
    history: bool,

    /// The plan to report for a build that does not exist yet [default: built-in]
    #[arg(long, value_name = "FILE", env = "BUILDSTATE_PLAN")]
    plan: Option<PathBuf>,

    #[command(flatten)]
    common: Common,
}

fn run(args: &Args) -> Result<i32> {
    let plan = Plan::load(args.plan.as_deref())?;
    buildstate::model::validate_build_id(&args.build_id)?;
    let mut store = args.common.writer(false)?;
    let now = store.now()?;
    store.refresh(&args.build_id)?;
    let report = Report::load(Some(&store), &args.build_id, &plan, now, args.history)?;
    if !report.exists {
        // Exit code and output stay "start a new build"; a person who mistyped an id
        // learns which builds it may have meant.
        let similar = buildstate::report::similar_builds(&store, &args.build_id)?;
        if !similar.is_empty() {
            eprintln!(
                "check-state: note: there is no build '{}' here; similar ids: {}",
                args.build_id,
                similar.join(", ")
            );
        }
    }
    if let Some(dir) = &args.output {
        report.write_output(dir)?;
    }
    if args.common.json {
        buildstate::cli::outln(format_args!("{}", report.to_json()))?;
    } else {
        buildstate::cli::out(format_args!("{}", report.human()))?;
    }
    Ok(report.exit_code)
}

fn main() -> ExitCode {
    let args = match buildstate::cli::parse::<Args>("check-state") {
        Ok(args) => args,
        Err(code) => return code,
    };
    finish("check-state", args.common.json, run(&args))
}
