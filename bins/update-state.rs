//! update-state: record one transition of a build (start, complete, fail, meta).

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use buildstate::cli::{finish, Common};
use buildstate::context::Actor;
use buildstate::model::{parse_meta_pair, Category, Transition};
use buildstate::report::Report;
use buildstate::{exit, Error, Result};
use clap::{Parser, Subcommand, ValueEnum};

/// Record one transition of a build, durably, in one transaction.
///
/// A refused transition (unknown build, state not in the plan, out of order, moving
/// backwards) writes nothing and exits with a distinct code: docs/exit-codes.md.
#[derive(Parser)]
#[command(
    version,
    subcommand_value_name = "ACTION",
    subcommand_help_heading = "Actions",
    after_help = "Examples:\n  update-state img-42 start 15\n  update-state img-42 complete 15\n  update-state img-42 fail 15 --error \"ansible-playbook exited 2\"\n  some-command 2>&1 | update-state img-42 fail 15 --error-file -\n  update-state img-42 meta ami_id=ami-0abc git_sha=1a2b3c"
)]
struct Args {
    /// The build id given to init-state
    #[arg(value_name = "BUILD_ID")]
    build_id: String,

    #[command(subcommand)]
    action: Action,

    #[command(flatten)]
    common: Common,
}

#[derive(Subcommand)]
enum Action {
    /// Record that a state started (a new attempt of it)
    Start {
        #[arg(value_name = "STATE")]
        state: u8,
    },
    /// Record that a state completed; it becomes the build's current state
    Complete {
        #[arg(value_name = "STATE")]
        state: u8,
    },
    /// Record that a state failed; the current state stays at the last completed one
    Fail {
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
        /// Read the message from a file, or '-' for stdin (for messages over argv's 128 KiB)
        #[arg(long, value_name = "FILE")]
        error_file: Option<PathBuf>,
        /// What kind of failure this is
        #[arg(long, value_enum, value_name = "CATEGORY")]
        category: Option<CategoryArg>,
        /// The failed command's exit code
        #[arg(long, value_name = "N", allow_negative_numbers = true)]
        exit_code: Option<i32>,
    },
    /// Set metadata on the build (KEY=VALUE, several at once)
    Meta {
        #[arg(value_name = "KEY=VALUE", required = true)]
        pairs: Vec<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum CategoryArg {
    Transient,
    Persistent,
    Unknown,
}

fn read_message(path: &PathBuf) -> Result<String> {
    let io = |source| Error::Io {
        path: path.clone(),
        source,
    };
    let mut bytes = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut bytes).map_err(io)?;
    } else {
        bytes = std::fs::read(path).map_err(io)?;
    }
    String::from_utf8(bytes).map_err(|e| {
        Error::InvalidInput(format!(
            "the message in {} is not UTF-8 (invalid byte at offset {}): convert it first",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}

fn run(args: &Args) -> Result<i32> {
    let transition = match &args.action {
        Action::Start { state } => Transition::Start { state: *state },
        Action::Complete { state } => Transition::Complete { state: *state },
        Action::Fail {
            state,
            error,
            error_file,
            category,
            exit_code,
        } => Transition::Fail {
            state: *state,
            message: match (error, error_file) {
                (Some(m), _) => m.clone(),
                (None, Some(path)) => read_message(path)?,
                (None, None) => unreachable!("clap requires --error or --error-file"),
            },
            category: category.map(|c| match c {
                CategoryArg::Transient => Category::Transient,
                CategoryArg::Persistent => Category::Persistent,
                CategoryArg::Unknown => Category::Unknown,
            }),
            exit_code: *exit_code,
        },
        Action::Meta { pairs } => Transition::Meta {
            pairs: pairs
                .iter()
                .map(|p| parse_meta_pair(p))
                .collect::<Result<_>>()?,
        },
    };
    buildstate::model::validate_build_id(&args.build_id)?;
    let mut store = args.common.open()?;
    let now = SystemTime::now();
    let build = store.transition(
        &args.build_id,
        &transition,
        &Actor::from_env("update-state"),
        now,
    )?;
    if args.common.json {
        let plan = store.plan(&build.plan_hash)?;
        let report = Report::of(&build, &plan, store.metadata(&args.build_id)?, None, now);
        println!("{}", report.to_json());
    } else {
        let plan = store.plan(&build.plan_hash)?;
        let what = match &transition {
            Transition::Start { state } => {
                format!("started {} (attempt {})", plan.label(*state), build.attempt)
            }
            Transition::Complete { state } => format!("completed {}", plan.label(*state)),
            Transition::Fail { state, .. } => format!(
                "recorded failure of {} (attempt {})",
                plan.label(*state),
                build.attempt
            ),
            Transition::Meta { pairs } => format!("set {} metadata value(s)", pairs.len()),
        };
        println!(
            "build {}: {what}; status {} (serial {})",
            args.build_id, build.status, build.serial
        );
    }
    Ok(exit::OK)
}

fn main() -> ExitCode {
    let args = Args::parse();
    finish("update-state", args.common.json, run(&args))
}
