//! check-state: what should a pipeline do next with this build?

use std::path::PathBuf;

use crate::cli::Common;
use crate::plan::Plan;
use crate::report::Report;
use crate::Result;

/// Print what a pipeline should do next with a build, and exit with a code a task can
/// gate on: 0 go ahead (start, resume, retry, rerun), 10 already completed, 11 in
/// progress elsewhere, 12 wait for a scheduled retry, 13 needs a person. An unknown
/// build id is "start a new build", not an error; a missing database file is (exit 9),
/// since only init-state creates one. Details: docs/exit-codes.md.
///
/// When the plan declares inputs, a completed state whose inputs changed since it
/// completed is stale and the decision is `rerun` from the earliest stale state, naming
/// what changed (docs/plan.md#inputs); --verify also checks completed states against
/// reality with their verify commands.
#[derive(clap::Parser)]
#[command(
    version,
    after_help = "Examples:\n  check-state img-42\n  check-state img-42 --json | jq -r .decision\n  check-state img-42 --output state/ && . state/resume-metadata && echo \"$RESUME_STATE\"\n  check-state img-42 --plan\n  check-state img-42 --verify --inputs-root ~/src/image-pipeline"
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

    /// List the build's resources instead (docs/resources.md): status (present,
    /// deleted, missing, cleanup_failed), who created them, the last check, and whether
    /// they are orphaned; exits 0
    #[arg(long)]
    resources: bool,

    /// With --resources: run each resource's --check command whose last check is older
    /// than --max-age, recording present or missing
    #[arg(long, requires = "resources")]
    refresh: bool,

    /// With --refresh: how old a check may be before it runs again
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = crate::cli::duration, requires = "refresh")]
    max_age: std::time::Duration,

    /// With --resources: how long a failed, blocked or idle build keeps its resources
    /// before they count as orphaned (as `monitor gc --older-than`)
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = crate::cli::duration, requires = "resources")]
    older_than: std::time::Duration,

    /// Show every state of the plan with its status and why it would run or be skipped
    /// (done, stale, drifted, forced, pending): a dry run
    #[arg(long)]
    plan: bool,

    /// The plan to report for a build that does not exist yet [default: built-in]
    #[arg(long, value_name = "FILE", env = "BUILDSTATE_PLAN")]
    plan_file: Option<PathBuf>,

    /// The directory the plan's input globs are relative to [default: the working
    /// directory]
    #[arg(long, value_name = "DIR", env = "BUILDSTATE_INPUTS_ROOT")]
    inputs_root: Option<PathBuf>,

    /// Do not compare the inputs of completed states: report the recorded state only
    #[arg(long, conflicts_with = "verify")]
    no_inputs: bool,

    /// Also write the build's timeline as one self-contained HTML file (docs/fleet.md)
    #[arg(long, value_name = "FILE")]
    html: Option<std::path::PathBuf>,

    /// Run the verify commands of completed states, in order; a failure is recorded as
    /// drift and its state reruns (this writes to the build's history)
    #[arg(long)]
    verify: bool,

    /// How long each verify command may run
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = crate::cli::positive_duration)]
    verify_timeout: std::time::Duration,

    #[command(flatten)]
    common: Common,
}

fn run(args: &Args) -> Result<i32> {
    let plan = crate::files::plan(args.plan_file.as_deref())?;
    crate::model::validate_build_id(&args.build_id)?;
    if let Some(dir) = &args.output {
        crate::report::check_output_dir(dir, "--output")?;
    }
    let mut store = args.common.writer(false)?;
    let now = store.now()?;
    store.refresh(&args.build_id)?;
    if store.store().build(&args.build_id)?.is_none() {
        if let Some(a) = store.store().archived(&args.build_id)? {
            return Err(a.error());
        }
    }
    // The report as the local copy holds it now, under `plan`.
    let load = |w: &crate::sync::Writer, plan: &Plan| {
        Report::load(Some(w.store()), &args.build_id, plan, now, args.history)
    };
    if args.resources {
        return resources(args, &mut store, now);
    }
    let mut report = load(&store, &plan)?;
    if let (Some(b), false) = (store.store().build(&args.build_id)?, args.no_inputs) {
        let plan = store.store().plan(&b.plan_hash)?;
        let root = args.inputs_root.as_deref();
        let mut stale = crate::inputs::stale_of(&mut store, &b, &plan, root, args.plan)?;
        if args.verify {
            let actor = crate::environment::actor("check-state");
            let quiet = args.common.json;
            // Verify up to the first state whose inputs changed: a drifted state (and
            // those after it) is verified again, so that a pass can clear the drift.
            let changed = stale
                .iter()
                .find(|s| s.kind == crate::manifest::StaleKind::Changed);
            let results = crate::verify::verify_build(
                &mut store,
                &args.build_id,
                changed.map(|s| s.state),
                args.verify_timeout,
                &actor,
                &|label, checked| {
                    if !quiet {
                        eprintln!(
                            "check-state: verify {label}: {} ({})",
                            checked.how,
                            crate::time::format_duration(checked.duration)
                        );
                    }
                },
            )?;
            if results.is_empty() {
                eprintln!("check-state: note: no completed state has a verify command to run");
            } else {
                stale = crate::inputs::stale_of(&mut store, &b, &plan, root, args.plan)?;
            }
            report = load(&store, &plan)?;
        }
        report = report.with_stale(&b, &plan, now, stale);
    }
    if let Some(b) = store.store().build(&args.build_id)? {
        let plan = store.store().plan(&b.plan_hash)?;
        report = report.with_parents(&mut store, &b, &plan)?;
        if args.plan {
            let events = store.store().events(&args.build_id)?;
            let view = crate::report::PlanView::of(&report, &b, &plan, &events);
            if args.common.json {
                crate::cli::outln(format_args!("{}", view.to_json()))?;
            } else {
                crate::cli::out(format_args!("{}", view.human()))?;
            }
            return Ok(view.exit_code);
        }
    }
    if !report.exists {
        // Exit code and output stay "start a new build"; a person who mistyped an id
        // learns which builds it may have meant.
        let similar = crate::report::similar_builds(store.store(), &args.build_id)?;
        if !similar.is_empty() {
            eprintln!(
                "check-state: note: there is no build '{}' here; similar ids: {}",
                args.build_id,
                similar.join(", ")
            );
        }
    }
    if let Some(path) = &args.html {
        if !report.exists {
            return Err(crate::Error::UnknownBuild(args.build_id.clone()));
        }
        let line = crate::timeline::line(store.store(), &args.build_id, now)?;
        let (attention, _) =
            crate::monitor::findings(store.store(), now, crate::monitor::STUCK_FACTOR)?;
        let attention: Vec<_> = attention
            .into_iter()
            .filter(|f| f.build_id == args.build_id)
            .collect();
        // The part of the graph about this build: it, what it waits for, what waits for it.
        let graph = crate::parents::around(
            crate::parents::graph(&store.store().graph_facts()?),
            &args.build_id,
        );
        let page = crate::timeline::page(
            &format!("buildstate: build {}", args.build_id),
            &[line],
            None,
            &crate::timeline::Extra {
                attention: &attention,
                left: &crate::timeline::leftovers(store.store(), Some(&args.build_id), now)?,
                facts: &facts(&report),
                graph: &graph,
            },
            now,
        );
        crate::timeline::write(path, &page)?;
        eprintln!("check-state: wrote {}", path.display());
    }
    if let Some(dir) = &args.output {
        report.write_output(dir)?;
    }
    if args.common.json {
        crate::cli::outln(format_args!("{}", report.to_json()))?;
    } else {
        crate::cli::out(format_args!("{}", report.human()))?;
    }
    Ok(report.exit_code)
}

/// `--resources`: the ledger, refreshed first with `--refresh`.
fn resources(
    args: &Args,
    store: &mut crate::sync::Writer,
    now: std::time::SystemTime,
) -> Result<i32> {
    let id = &args.build_id;
    if store.store().build(id)?.is_none() {
        return Err(crate::Error::UnknownBuild(id.clone()));
    }
    if args.refresh {
        let actor = crate::environment::actor("check-state");
        let owner = actor.lease_owner();
        let due: Vec<_> = store
            .store()
            .resources(id, now, args.older_than)?
            .into_iter()
            .filter(|r| r.exists() || r.status == crate::resources::Health::Missing)
            .filter(|r| r.check.is_some())
            .filter(|r| {
                r.last_check
                    .is_none_or(|t| crate::time::ago(now, args.max_age) >= t)
            })
            .collect();
        for r in due {
            let checked = crate::verify::run_check(
                r.check.as_deref().unwrap_or_default(),
                &r.env(id),
                args.verify_timeout,
            )?;
            if !args.common.json {
                eprintln!("check-state: check {} {}: {}", r.rtype, r.id, checked.how);
            }
            if !checked.ran {
                // A check that could not run says nothing about the resource.
                eprintln!(
                    "check-state: warning: the check of {} {} did not run ({}): nothing recorded",
                    r.rtype, r.id, checked.how
                );
                continue;
            }
            let t = crate::model::Transition::Resource {
                state: None,
                op: crate::resources::Op::Check {
                    rtype: r.rtype.clone(),
                    id: r.id.clone(),
                    present: checked.ok,
                },
            };
            let mut session = crate::session::Session {
                writer: store,
                actor: &actor,
                owner: &owner,
            };
            let b = session.record(id, &t, None)?;
            // A resource of a completed state that is gone: the state's result no longer
            // holds, as when its verify fails (drift: it runs again).
            let completed = b.current_state.is_some_and(|c| r.state <= c)
                && b.status != crate::model::Status::Cancelled;
            if !checked.ok && r.exists() && completed {
                let events = session.writer.store().events(id)?;
                let since = crate::verify::since(&events, r.state);
                let drift = crate::model::Transition::Verified {
                    results: vec![crate::model::VerifyResult {
                        state: r.state,
                        ok: false,
                        ran: true,
                        since,
                        message: format!(
                            "{} {} is missing (its check: {}): {}",
                            r.rtype,
                            r.id,
                            checked.how,
                            checked.output.trim_end()
                        ),
                        duration_ms: checked.duration.as_millis() as u64,
                    }],
                };
                session.record(id, &drift, None)?;
                eprintln!(
                    "check-state: {} {} of completed state {} is missing: recorded as drift; the state runs again",
                    r.rtype, r.id, r.state
                );
            }
        }
    }
    let now = store.now()?;
    let ledger = store.store().resources(id, now, args.older_than)?;
    if args.common.json {
        crate::cli::outln(format_args!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"build_id": id, "resources": ledger}))
                .expect("a ledger serializes")
        ))?;
        return Ok(crate::exit::OK);
    }
    if ledger.is_empty() {
        crate::cli::outln(format_args!("build {id}: no resources recorded"))?;
        return Ok(crate::exit::OK);
    }
    let mut out = format!("build {id}: {} resource(s)\n", ledger.len());
    for r in &ledger {
        out.push_str(&format!(
            "  {} {}: {}{} (state {}, attempt {}, {}){}\n",
            r.rtype,
            r.id,
            r.status.as_str(),
            r.orphaned
                .as_deref()
                .map(|w| format!(", orphaned: {w}"))
                .unwrap_or_default(),
            r.state,
            r.attempt.map_or("-".to_string(), |a| a.to_string()),
            crate::time::format(r.created_at),
            r.last_error
                .as_deref()
                .map(|e| format!("\n    last cleanup: {}", crate::decide::headline(e, 200)))
                .unwrap_or_default()
        ));
    }
    crate::cli::out(format_args!("{out}"))?;
    Ok(crate::exit::OK)
}

crate::command!("check-state", run);

/// What the single-build page says of the build, in words: its identity, where it
/// stands, its metadata and its current outputs.
fn facts(r: &crate::report::Report) -> Vec<(String, String)> {
    let or_none = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let mut out = vec![
        ("build".to_string(), r.build_id.clone()),
        ("cloud".to_string(), or_none(r.cloud.clone())),
        ("image".to_string(), or_none(r.image.clone())),
        ("plan".to_string(), r.plan.clone()),
        (
            "status".to_string(),
            or_none(r.status.map(|s| s.to_string())),
        ),
        (
            "last completed state".to_string(),
            match (r.current_state, &r.current_state_name) {
                (Some(s), Some(n)) => format!("{s} ({n})"),
                (Some(s), None) => s.to_string(),
                _ => "-".into(),
            },
        ),
        ("epoch".to_string(), r.epoch.to_string()),
        ("serial".to_string(), r.serial.to_string()),
        (
            "created".to_string(),
            or_none(r.created_at.map(crate::time::format)),
        ),
        (
            "updated".to_string(),
            or_none(r.updated_at.map(crate::time::format)),
        ),
    ];
    // A value is shown whole up to 300 characters (an output may hold 64 KiB).
    let shown = |v: &str| {
        if v.chars().count() > 300 {
            format!(
                "{}… ({} bytes)",
                v.chars().take(300).collect::<String>(),
                v.len()
            )
        } else {
            v.to_string()
        }
    };
    for (k, v) in &r.metadata {
        out.push((format!("metadata {k}"), shown(v)));
    }
    for (k, o) in &r.outputs {
        out.push((format!("output {k} (state {})", o.state), shown(&o.value)));
    }
    out
}
