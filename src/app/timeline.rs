//! The HTML report: one self-contained file (inline CSS and SVG, no script, no network at
//! view time) with a timeline of each build's states, the statistics of
//! [`crate::stats`] as charts, and the builds that need attention. `monitor report
//! --html FILE` for the fleet, `check-state BUILD --html FILE` for one build. Markup is
//! written with maud, which escapes every value (build ids, messages, metadata).

use std::time::{Duration, SystemTime};

use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::model::{Event, EventKind};
use crate::monitor::Finding;
use crate::stats::Stats;
use crate::{time, Result};

/// One bar of a build's timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub state: u8,
    pub attempt: Option<u32>,
    pub from: SystemTime,
    pub to: SystemTime,
    /// ok, failed, interrupted, running, retry-wait, person-wait
    pub kind: &'static str,
    /// Who and where, and what happened (the tooltip).
    pub detail: String,
}

/// One build's row.
#[derive(Debug, Clone)]
pub struct BuildLine {
    pub build_id: String,
    pub status: String,
    pub segments: Vec<Segment>,
}

fn who(e: &Event) -> String {
    format!("{}@{} ({})", e.actor.user, e.actor.host, e.actor.tool)
}

/// The bars of one build's history: each attempt from its start to its end (or now),
/// and the waits after failures, for a retry or for a person.
pub fn segments(
    events: &[Event],
    state_name: &dyn Fn(u8) -> String,
    now: SystemTime,
) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut open: Option<(&Event, u8)> = None;
    let mut wait: Option<(SystemTime, u8, bool, String)> = None;
    for e in events {
        let person = e.kind.decided_by_person();
        if let Some((since, state, is_person, why)) = &wait {
            if person || (!is_person && e.kind == EventKind::Start) {
                out.push(Segment {
                    state: *state,
                    attempt: None,
                    from: *since,
                    to: e.at,
                    kind: if *is_person {
                        "person-wait"
                    } else {
                        "retry-wait"
                    },
                    detail: format!(
                        "state {state} {}: {why}; ended by {} of {}",
                        state_name(*state),
                        e.kind,
                        who(e)
                    ),
                });
                wait = None;
            }
        }
        // A person cancelling or resetting the build ends the attempt that was running:
        // it did not run on to now.
        if matches!(e.kind, EventKind::Cancel | EventKind::Reset) {
            if let Some((start, s)) = open.take() {
                out.push(Segment {
                    state: s,
                    attempt: start.attempt,
                    from: start.at,
                    to: e.at.max(start.at),
                    kind: "interrupted",
                    detail: format!(
                        "state {s} {}, attempt {}: ended after {} by {} of {}; started by {}",
                        state_name(s),
                        start.attempt.unwrap_or(0),
                        time::format_duration(e.at.duration_since(start.at).unwrap_or_default()),
                        e.kind,
                        who(e),
                        who(start)
                    ),
                });
            }
        }
        let Some(state) = e.state else { continue };
        match e.kind {
            EventKind::Start => open = Some((e, state)),
            EventKind::Complete | EventKind::Fail | EventKind::Interrupt => {
                let Some((start, s)) = open.take().filter(|(_, s)| *s == state) else {
                    continue;
                };
                let kind = match e.kind {
                    EventKind::Complete => "ok",
                    EventKind::Fail => "failed",
                    _ => "interrupted",
                };
                let message = e
                    .message
                    .as_deref()
                    .map(|m| format!(": {}", crate::decide::headline(m, 160)))
                    .unwrap_or_default();
                out.push(Segment {
                    state: s,
                    attempt: start.attempt,
                    from: start.at,
                    to: e.at.max(start.at),
                    kind,
                    detail: format!(
                        "state {s} {}, attempt {}: {kind} after {}{message}; started by {}, ended by {}",
                        state_name(s),
                        start.attempt.unwrap_or(0),
                        time::format_duration(e.at.duration_since(start.at).unwrap_or_default()),
                        who(start),
                        who(e)
                    ),
                });
                if e.kind == EventKind::Fail {
                    let why = if e.until.is_some() {
                        "waiting for the scheduled retry".to_string()
                    } else {
                        "blocked, waiting for a person".to_string()
                    };
                    wait = Some((e.at, s, e.until.is_none(), why));
                }
            }
            EventKind::Prerequisite => {
                wait = Some((
                    e.at,
                    state,
                    true,
                    "prerequisite failed, waiting for a person".into(),
                ));
            }
            _ => {}
        }
    }
    if let Some((start, s)) = open {
        out.push(Segment {
            state: s,
            attempt: start.attempt,
            from: start.at,
            to: now.max(start.at),
            kind: "running",
            detail: format!(
                "state {s} {}, attempt {}: running for {}, started by {}",
                state_name(s),
                start.attempt.unwrap_or(0),
                time::format_duration(now.duration_since(start.at).unwrap_or_default()),
                who(start)
            ),
        });
    }
    if let Some((since, s, is_person, why)) = wait {
        out.push(Segment {
            state: s,
            attempt: None,
            from: since,
            to: now.max(since),
            kind: if is_person {
                "person-wait"
            } else {
                "retry-wait"
            },
            detail: format!("state {s} {}: {why} (still)", state_name(s)),
        });
    }
    out
}

/// One build's row, from the store.
pub fn line(store: &crate::store::Store, build_id: &str, now: SystemTime) -> Result<BuildLine> {
    let build = store
        .build(build_id)?
        .ok_or_else(|| crate::Error::UnknownBuild(build_id.to_string()))?;
    let plan = store.plan(&build.plan_hash)?;
    let events = store.events(build_id)?;
    let name = |s: u8| plan.state(s).map(|d| d.name.clone()).unwrap_or_default();
    Ok(BuildLine {
        build_id: build_id.to_string(),
        status: build.status.to_string(),
        segments: segments(&events, &name, now),
    })
}

const CSS: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d232a}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 10px;border-bottom:1px solid #dde;text-align:left;vertical-align:top}
th{background:#f3f5f8}.num{text-align:right}
svg text{font:11px system-ui,sans-serif;fill:#333}
.ok{fill:#2e9e5b}.failed{fill:#d64545}.interrupted{fill:#9aa3ad}.running{fill:#e0a100}
.retry-wait{fill:#f2c6c6}.person-wait{fill:#c9b3e6}.expected{fill:none;stroke:#333;stroke-dasharray:3 2}
.legend span{display:inline-block;margin-right:14px}.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-2px}
.muted{color:#667}
";

fn legend() -> Markup {
    html! {
        p.legend {
            @for (class, label) in [("ok", "succeeded"), ("failed", "failed"), ("interrupted", "interrupted"), ("running", "running"), ("retry-wait", "waiting for a retry"), ("person-wait", "waiting for a person")] {
                span { svg width="12" height="12" { rect class=(class) width="12" height="12" {} } " " (label) }
            }
        }
    }
}

/// The timeline: one row per build, bars positioned on a shared time axis.
fn timeline(lines: &[BuildLine], now: SystemTime) -> Markup {
    let from = lines
        .iter()
        .flat_map(|l| l.segments.iter().map(|s| s.from))
        .min()
        .unwrap_or(now);
    let to = lines
        .iter()
        .flat_map(|l| l.segments.iter().map(|s| s.to))
        .max()
        .unwrap_or(now)
        .max(from + Duration::from_secs(1));
    let span = to.duration_since(from).unwrap_or_default().as_secs_f64();
    let (label_w, width, row) = (160.0, 900.0, 22.0);
    let x = |t: SystemTime| {
        label_w + t.duration_since(from).unwrap_or_default().as_secs_f64() / span * width
    };
    let height = row * lines.len() as f64 + 30.0;
    html! {
        svg #timeline width=(label_w + width + 10.0) height=(height) role="img" aria-label="timeline of each build's states" {
            @for (i, l) in lines.iter().enumerate() {
                @let y = 20.0 + row * i as f64;
                text x="0" y=(y + 14.0) class="build-label" { (l.build_id) " " tspan.muted { "(" (l.status) ")" } }
                @for s in &l.segments {
                    @let x0 = x(s.from);
                    @let w = (x(s.to) - x0).max(2.0);
                    rect class=(format!("bar {}", s.kind)) data-build=(l.build_id) data-state=(s.state) x=(format!("{x0:.1}")) y=(y + 3.0) width=(format!("{w:.1}")) height=(row - 6.0) {
                        title { (s.detail) }
                    }
                }
            }
            text x=(label_w) y="12" { (time::format(from)) }
            text x=(label_w + width) y="12" text-anchor="end" { (time::format(to)) }
        }
    }
}

/// Horizontal bars per state: success rate, and p50/p95 against the plan's expected.
fn charts(stats: &Stats) -> Markup {
    let row = 20.0;
    let height = row * stats.states.len() as f64 + 10.0;
    let longest = stats
        .states
        .iter()
        .flat_map(|s| [s.p95_seconds, s.expected_seconds])
        .flatten()
        .fold(1.0_f64, f64::max);
    // A state is named with its plan when two plans' states are charted.
    let plans = stats.states.iter().any(|s| s.plan != stats.states[0].plan);
    let label = |s: &crate::stats::StateStats| match plans {
        true => format!("{} {} ({})", s.state, s.name, s.plan),
        false => format!("{} {}", s.state, s.name),
    };
    html! {
        h3 { "Success rate per state" }
        svg #success-chart width="560" height=(height) role="img" aria-label="success rate per state" {
            @for (i, s) in stats.states.iter().enumerate() {
                @let y = 4.0 + row * i as f64;
                text x="0" y=(y + 13.0) { (label(s)) }
                @if let Some(r) = s.success_rate {
                    rect class="ok chart-bar" x="180" y=(y) width=(format!("{:.1}", (r * 300.0).max(1.0))) height=(row - 6.0) {
                        title { (format!("{:.0}% of {} decided attempts", r * 100.0, s.successes + s.failures)) }
                    }
                    text x=(format!("{:.1}", 186.0 + r * 300.0)) y=(y + 13.0) { (format!("{:.0}%", r * 100.0)) }
                }
            }
        }
        h3 { "Duration per state: p50 and p95 of successful attempts, expected dashed" }
        svg #duration-chart width="560" height=(height) role="img" aria-label="duration per state" {
            @for (i, s) in stats.states.iter().enumerate() {
                @let y = 4.0 + row * i as f64;
                @let scale = |v: f64| v / longest * 340.0;
                text x="0" y=(y + 13.0) { (label(s)) }
                @if let Some(p95) = s.p95_seconds {
                    rect class="interrupted chart-bar" x="180" y=(y) width=(format!("{:.1}", scale(p95).max(1.0))) height=(row - 6.0) {
                        title { "p95 " (time::format_duration(Duration::from_secs_f64(p95))) }
                    }
                }
                @if let Some(p50) = s.p50_seconds {
                    rect class="ok chart-bar" x="180" y=(y + 3.0) width=(format!("{:.1}", scale(p50).max(1.0))) height=(row - 12.0) {
                        title { "p50 " (time::format_duration(Duration::from_secs_f64(p50))) }
                    }
                }
                @if let Some(e) = s.expected_seconds {
                    rect class="expected" x="180" y=(y) width=(format!("{:.1}", scale(e).max(1.0))) height=(row - 6.0) {
                        title { "expected " (time::format_duration(Duration::from_secs_f64(e))) }
                    }
                }
            }
        }
    }
}

fn attempts_table(lines: &[BuildLine]) -> Markup {
    html! {
        table #attempts {
            tr { th { "build" } th { "state" } th { "attempt" } th { "outcome" } th { "from" } th { "took" } th { "what, who and where" } }
            @for l in lines {
                @for s in &l.segments {
                    tr class=(s.kind) {
                        td { (l.build_id) } td.num { (s.state) }
                        td.num { (s.attempt.map(|a| a.to_string()).unwrap_or_default()) }
                        td { (s.kind) } td { (time::format(s.from)) }
                        td { (time::format_duration(s.to.duration_since(s.from).unwrap_or_default())) }
                        td { (s.detail) }
                    }
                }
            }
        }
    }
}

/// A resource a build left behind: an orphan not deleted (docs/resources.md).
pub struct Leftover {
    pub build_id: String,
    pub resource: crate::resources::Resource,
}

/// The orphans still there, of one build or of every build, judged as `monitor gc`
/// judges them by default.
pub fn leftovers(
    store: &crate::store::Store,
    build_id: Option<&str>,
    now: SystemTime,
) -> Result<Vec<Leftover>> {
    let window = crate::resources::DEFAULT_WINDOW;
    let ledgers = match build_id {
        Some(id) => vec![(id.to_string(), store.resources(id, now, window)?)],
        None => store.all_resources(now, window)?,
    };
    Ok(ledgers
        .into_iter()
        .flat_map(|(id, ledger)| {
            ledger
                .into_iter()
                .filter(|r| r.exists() && r.orphaned.is_some())
                .map(move |resource| Leftover {
                    build_id: id.clone(),
                    resource,
                })
        })
        .collect())
}

fn leftovers_table(left: &[Leftover]) -> Markup {
    html! {
        @if left.is_empty() {
            p #leftovers-none { "None: every resource builds recorded is deleted or still in use." }
        } @else {
            p { (left.len()) " resource(s) nobody will use any more: " code { "monitor gc" } " runs their cleanup; " code { "monitor gc --dry-run" } " says what it would do." }
            table #leftovers {
                tr { th { "build" } th { "state" } th { "type" } th { "id" } th { "status" } th { "why" } th { "last cleanup error" } }
                @for l in left {
                    @let r = &l.resource;
                    tr class=(r.status.as_str()) {
                        td { (l.build_id) } td.num { (r.state) } td { (r.rtype) } td { (r.id) }
                        td { (if r.status == crate::resources::Health::CleanupFailed {
                            format!("cleanup failed ({}x)", r.cleanup_failures)
                        } else {
                            "orphaned".to_string()
                        }) }
                        td { (r.orphaned.as_deref().unwrap_or_default()) }
                        td { (r.last_error.as_deref().unwrap_or_default()) }
                    }
                }
            }
        }
    }
}

/// The whole page.
pub fn page(
    title: &str,
    lines: &[BuildLine],
    stats: Option<&Stats>,
    attention: &[Finding],
    left: &[Leftover],
    now: SystemTime,
) -> String {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="generator" content=(concat!("buildstate ", env!("CARGO_PKG_VERSION")));
                title { (title) }
                style { (PreEscaped(CSS)) }
            }
            body {
                h1 { (title) }
                p.muted { "Written " (time::format(now)) " by buildstate. Hover a bar for who, where and what happened." }
                h2 { "Builds that need attention" }
                @if attention.is_empty() {
                    p #attention-none { "None: no build is blocked or stuck." }
                } @else {
                    table #attention {
                        tr { th { "build" } th { "what" } th { "state" } th { "why" } }
                        @for f in attention {
                            tr { td { (f.build_id) } td { (f.what) } td.num { (f.state.map(|s| s.to_string()).unwrap_or_default()) } td { (f.reason) } }
                        }
                    }
                }
                h2 { "Resources left behind" }
                (leftovers_table(left))
                h2 { "Timeline" }
                (legend())
                @if lines.is_empty() {
                    p { "No build has events in the window." }
                } @else {
                    (timeline(lines, now))
                }
                @if let Some(stats) = stats {
                    h2 { "Statistics since " (stats.since) }
                    p { (stats.builds) " build(s), " (stats.events) " event(s)." }
                    (charts(stats))
                }
                h2 { "Attempts" }
                (attempts_table(lines))
            }
        }
    };
    // Stored text (messages, names) cannot reorder or hide what the page shows: a U+202E
    // or a control character is shown as `\uXXXX`.
    let html = markup.into_string();
    match crate::redact::printable(&html) {
        std::borrow::Cow::Borrowed(_) => html,
        std::borrow::Cow::Owned(shown) => shown,
    }
}

/// Write `html` to `path` whole (a temporary file beside it, then renamed); see
/// [`crate::monitor::write_whole`].
pub fn write(path: &std::path::Path, html: &str) -> Result<()> {
    crate::monitor::write_whole(path, html.as_bytes(), ".buildstate-report")
}
