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
    /// The names of its plan's states, by id (the table shows them: a bar's tooltip is
    /// for a mouse only).
    pub names: std::collections::BTreeMap<u8, String>,
}

/// How each kind of bar is drawn: its class, its legend, its colour (at least 3:1
/// against the white page: WCAG's contrast for graphics) and its pattern, so that no
/// two kinds differ by colour alone (succeeded solid; failed striped; ...). The
/// patterns are `<pattern id="p-CLASS">` in the page's `<defs>`.
const KINDS: &[(&str, &str, &str, Pattern)] = &[
    ("ok", "succeeded", "#1a7f37", Pattern::Solid),
    ("failed", "failed", "#cf222e", Pattern::Stripes),
    ("interrupted", "interrupted", "#6e7781", Pattern::Dots),
    ("running", "running", "#9a6700", Pattern::Bars),
    (
        "retry-wait",
        "waiting for a retry",
        "#bc4c00",
        Pattern::Outline,
    ),
    (
        "person-wait",
        "waiting for a person",
        "#8250df",
        Pattern::CrossOutline,
    ),
];

#[derive(Clone, Copy)]
enum Pattern {
    Solid,
    /// White diagonal stripes over the colour.
    Stripes,
    /// White dots over the colour.
    Dots,
    /// White vertical bars over the colour.
    Bars,
    /// The colour's diagonal stripes on white, outlined (a wait, not an attempt).
    Outline,
    /// The colour's cross-hatching on white, outlined.
    CrossOutline,
}

/// The patterns the bars and the legend fill with, in an SVG of no size.
fn patterns() -> Markup {
    html! {
        svg width="0" height="0" aria-hidden="true" focusable="false" style="position:absolute" {
            defs {
                @for (class, _, colour, pattern) in KINDS {
                    pattern id=(format!("p-{class}")) width="6" height="6" patternUnits="userSpaceOnUse" {
                        @match pattern {
                            Pattern::Solid => { rect width="6" height="6" fill=(colour) {} }
                            Pattern::Stripes => {
                                rect width="6" height="6" fill=(colour) {}
                                path d="M-1,1 l2,-2 M0,6 l6,-6 M5,7 l2,-2" stroke="#fff" stroke-width="1.5" {}
                            }
                            Pattern::Dots => {
                                rect width="6" height="6" fill=(colour) {}
                                circle cx="3" cy="3" r="1.3" fill="#fff" {}
                            }
                            Pattern::Bars => {
                                rect width="6" height="6" fill=(colour) {}
                                rect x="4" width="1.5" height="6" fill="#fff" {}
                            }
                            Pattern::Outline => {
                                rect width="6" height="6" fill="#fff" {}
                                path d="M-1,1 l2,-2 M0,6 l6,-6 M5,7 l2,-2" stroke=(colour) stroke-width="1.5" {}
                            }
                            Pattern::CrossOutline => {
                                rect width="6" height="6" fill="#fff" {}
                                path d="M0,0 l6,6 M6,0 l-6,6" stroke=(colour) stroke-width="1.2" {}
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The CSS of the bars: each kind filled with its pattern; waits outlined in their colour.
fn bar_css() -> String {
    let mut css = String::new();
    for (class, _, colour, pattern) in KINDS {
        css.push_str(&format!(".{class}{{fill:url(#p-{class})"));
        if matches!(pattern, Pattern::Outline | Pattern::CrossOutline) {
            css.push_str(&format!(";stroke:{colour};stroke-width:1"));
        }
        css.push('}');
    }
    css
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
        names: plan.states.iter().map(|d| (d.id, d.name.clone())).collect(),
    })
}

const CSS: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d232a}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 10px;border-bottom:1px solid #dde;text-align:left;vertical-align:top}
th{background:#f3f5f8}.num{text-align:right}
svg text{font:11px system-ui,sans-serif;fill:#333}
.expected{fill:none;stroke:#333;stroke-dasharray:3 2}
.node rect{fill:#fff;stroke:#57606a}.edge{stroke:#57606a;stroke-width:1.5}.edge.not-yet{stroke-dasharray:5 4}.tick line{stroke:#8c959f;stroke-width:1}
.chart-ok{fill:#1a7f37}.chart-p95{fill:#6e7781}
dl#facts{display:grid;grid-template-columns:max-content auto;gap:2px 14px}dl#facts dt{font-weight:600}dl#facts dd{margin:0}
.legend span{display:inline-block;margin-right:14px}.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-2px}
.muted{color:#667}
";

fn legend() -> Markup {
    html! {
        p.legend {
            @for (class, label, _, _) in KINDS {
                span { svg width="14" height="14" aria-hidden="true" focusable="false" { rect class=(class) x="0.5" y="0.5" width="13" height="13" {} } " " (label) }
            }
        }
    }
}

/// Ticks for a time axis from `from` to `to`: a round step giving at most 8, each at a
/// multiple of it (UTC), labelled with what the step needs (milliseconds, seconds,
/// minutes, days).
pub fn ticks(from: SystemTime, to: SystemTime) -> Vec<(SystemTime, String)> {
    const STEPS: &[f64] = &[
        0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0,
        600.0, 900.0, 1800.0, 3600.0, 7200.0, 10800.0, 21600.0, 43200.0, 86400.0, 172800.0,
        345600.0, 604800.0, 1209600.0, 2592000.0,
    ];
    let secs = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64()
    };
    let (a, b) = (secs(from), secs(to).max(secs(from) + 0.01));
    let step = STEPS
        .iter()
        .copied()
        .find(|s| (b - a) / s <= 8.0)
        .unwrap_or(2592000.0);
    let mut out = Vec::new();
    let mut n = (a / step).ceil();
    while n * step <= b && out.len() < 10 {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs_f64(n * step);
        let iso = time::format(at);
        let label = match step {
            s if s < 1.0 => iso[11..23].to_string(),
            s if s < 60.0 => iso[11..19].to_string(),
            s if s < 86400.0 && b - a < 86400.0 => iso[11..16].to_string(),
            s if s < 86400.0 => format!("{} {}", &iso[5..10], &iso[11..16]),
            _ => iso[..10].to_string(),
        };
        out.push((at, label));
        n += 1.0;
    }
    out
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
        p.muted { "From " (time::format(from)) " to " (time::format(to)) " (UTC); the attempts table below says the same in words." }
        svg #timeline width=(label_w + width + 10.0) height=(height) role="img" aria-label=(format!("timeline of each build's states, from {} to {}", time::format(from), time::format(to))) {
            @for (t, label) in ticks(from, to) {
                g.tick {
                    line x1=(format!("{:.1}", x(t))) x2=(format!("{:.1}", x(t))) y1="16" y2=(format!("{:.1}", height - 6.0)) {}
                    text x=(format!("{:.1}", x(t))) y="12" text-anchor="middle" { (label) }
                }
            }
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
                    rect class="chart-ok chart-bar" x="180" y=(y) width=(format!("{:.1}", (r * 300.0).max(1.0))) height=(row - 6.0) {
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
                    rect class="chart-p95 chart-bar" x="180" y=(y) width=(format!("{:.1}", scale(p95).max(1.0))) height=(row - 6.0) {
                        title { "p95 " (time::format_duration(Duration::from_secs_f64(p95))) }
                    }
                }
                @if let Some(p50) = s.p50_seconds {
                    rect class="chart-ok chart-bar" x="180" y=(y + 3.0) width=(format!("{:.1}", scale(p50).max(1.0))) height=(row - 12.0) {
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
            tr { th { "build" } th { "state" } th { "name" } th { "attempt" } th { "outcome" } th { "from" } th { "took" } th { "what, who and where" } }
            @for l in lines {
                @for s in &l.segments {
                    tr class=(format!("row-{}", s.kind)) {
                        td { (l.build_id) } td.num { (s.state) }
                        td { (l.names.get(&s.state).map(String::as_str).unwrap_or_default()) }
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

/// What a page shows besides the timeline and the statistics.
pub struct Extra<'a> {
    pub attention: &'a [Finding],
    pub left: &'a [Leftover],
    /// The build's facts (the single-build page).
    pub facts: &'a [(String, String)],
    /// The builds that wait for builds (`crate::parents::graph`, or the part of it about
    /// one build).
    pub graph: &'a [crate::parents::Node],
}

/// The graph of dependencies: a column per depth (builds that wait for nobody first),
/// an arrow from each parent to each build that waits for it, solid where the
/// dependency holds and dashed where it does not; the table after it says the same in
/// words.
fn graph_section(graph: &[crate::parents::Node]) -> Markup {
    use std::collections::HashMap;
    let by_id: HashMap<&str, &crate::parents::Node> =
        graph.iter().map(|n| (n.build_id.as_str(), n)).collect();
    let mut depth: HashMap<&str, usize> = HashMap::new();
    fn depth_of<'a>(
        id: &'a str,
        by_id: &HashMap<&'a str, &'a crate::parents::Node>,
        memo: &mut HashMap<&'a str, usize>,
        guard: usize,
    ) -> usize {
        if let Some(d) = memo.get(id) {
            return *d;
        }
        let d = match by_id.get(id) {
            Some(n) if guard < 64 => n
                .parents
                .iter()
                .map(|p| 1 + depth_of(p.build_id.as_str(), by_id, memo, guard + 1))
                .max()
                .unwrap_or(0),
            _ => 0,
        };
        memo.insert(id, d);
        d
    }
    for n in graph {
        depth_of(&n.build_id, &by_id, &mut depth, 0);
    }
    let columns = depth.values().copied().max().map_or(0, |d| d + 1);
    let mut rows: Vec<usize> = vec![0; columns];
    let mut at: HashMap<&str, (f64, f64)> = HashMap::new();
    let (col_w, row_h, box_w, box_h) = (260.0, 40.0, 210.0, 26.0);
    for n in graph {
        let d = depth[n.build_id.as_str()];
        at.insert(
            &n.build_id,
            (10.0 + d as f64 * col_w, 10.0 + rows[d] as f64 * row_h),
        );
        rows[d] += 1;
    }
    let height = rows.iter().copied().max().unwrap_or(0) as f64 * row_h + 20.0;
    let width = columns as f64 * col_w + 20.0;
    html! {
        @if graph.is_empty() {
            p #graph-none { "None: no build waits for another (docs/plan.md#dependencies)." }
        } @else {
            svg #graph width=(width) height=(height) role="img" aria-label="builds and the builds that wait for them; the table below says the same in words" {
                @for n in graph {
                    @for p in &n.parents {
                        @if let (Some((px, py)), Some((cx, cy))) = (at.get(p.build_id.as_str()), at.get(n.build_id.as_str())) {
                            line class=(if p.holds { "edge holds" } else { "edge not-yet" }) x1=(format!("{:.1}", px + box_w)) y1=(format!("{:.1}", py + box_h / 2.0)) x2=(format!("{:.1}", cx)) y2=(format!("{:.1}", cy + box_h / 2.0)) {}
                        }
                    }
                }
                @for n in graph {
                    @let (x, y) = at[n.build_id.as_str()];
                    g.node data-build=(n.build_id) {
                        rect x=(format!("{x:.1}")) y=(format!("{y:.1}")) width=(box_w) height=(box_h) rx="4" {}
                        text x=(format!("{:.1}", x + 6.0)) y=(format!("{:.1}", y + 17.0)) { (n.build_id) " (" (n.status) ")" }
                    }
                }
            }
            table #dependencies {
                tr { th { "build" } th { "waits for" } th { "its state" } th { "holds" } th { "that build is" } }
                @for n in graph {
                    @for p in &n.parents {
                        tr { td { (n.build_id) } td { (p.build_id) } td.num { (p.state) } td { (if p.holds { "yes" } else { "not yet" }) } td { (p.status) } }
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
    extra: &Extra<'_>,
    now: SystemTime,
) -> String {
    let (attention, left, facts) = (extra.attention, extra.left, extra.facts);
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="generator" content=(concat!("buildstate ", env!("CARGO_PKG_VERSION")));
                title { (title) }
                style { (PreEscaped(CSS)) (PreEscaped(bar_css())) }
            }
            body {
                header {
                    h1 { (title) }
                    p.muted { "Written " (time::format(now)) " by buildstate. Hover a bar for who, where and what happened; the attempts table says it all in words." }
                }
                main {
                (patterns())
                @if !facts.is_empty() {
                    h2 { "The build" }
                    dl #facts {
                        @for (k, v) in facts {
                            dt { (k) } dd { (v) }
                        }
                    }
                }
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
                h2 { "Builds that wait for builds" }
                (graph_section(extra.graph))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// WCAG's relative luminance of `#rrggbb`.
    fn luminance(hex: &str) -> f64 {
        let c = |i: usize| {
            let v = f64::from(u8::from_str_radix(&hex[i..i + 2], 16).unwrap()) / 255.0;
            if v <= 0.04045 {
                v / 12.92
            } else {
                ((v + 0.055) / 1.055).powf(2.4)
            }
        };
        0.2126 * c(1) + 0.7152 * c(3) + 0.0722 * c(5)
    }

    #[test]
    fn every_bar_has_3_to_1_against_white_and_its_own_pattern() {
        for (class, _, colour, _) in KINDS {
            let ratio = 1.05 / (luminance(colour) + 0.05);
            assert!(ratio >= 3.0, "{class} {colour}: {ratio:.2}:1");
        }
        // Two kinds never differ by colour alone: each has its own pattern.
        let mut seen = std::collections::HashSet::new();
        for (class, _, _, p) in KINDS {
            assert!(
                seen.insert(std::mem::discriminant(p)),
                "{class} shares a pattern"
            );
        }
    }

    #[test]
    fn the_time_axis_has_round_ticks() {
        let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000 + s);
        let t = ticks(at(7), at(3 * 3600 + 7));
        assert!((3..=8).contains(&t.len()), "{t:?}");
        let labels: Vec<&str> = t.iter().map(|(_, l)| l.as_str()).collect();
        assert!(
            labels.iter().all(|l| l.len() == 5 && l.ends_with('0')),
            "{labels:?}"
        );
        let t = ticks(at(0), at(40));
        assert!(t.len() >= 3 && t[0].1.len() == 8, "{t:?}");
        let t = ticks(at(0), at(0) + Duration::from_millis(900));
        assert!(t.len() >= 3 && t[1].1.len() == 12, "{t:?}");
        let t = ticks(at(0), at(20 * 86400));
        assert!(t.len() >= 3 && t[0].1.len() == 10, "{t:?}");
    }
}
