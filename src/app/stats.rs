//! `monitor stats`: what the history says about the fleet over a window. Per state: how
//! often it ran, how often it succeeded, attempts per success, how long successful
//! attempts took against the plan's `expected`, the time builds spent waiting for a
//! retry and for a person, the top failure categories and the most frequent error
//! lines. Per build: the total time and the time lost to retries.
//!
//! One pass over the events in key order (build, then sequence): no sort, no temporary
//! table, the message read only for failures; 1,000,000 events in well under a second
//! (docs/performance.md).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::model::EventKind;
use crate::plan::Plan;
use crate::store::Store;
use crate::{time, Result};

/// Which builds count.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub cloud: Option<String>,
    pub image: Option<String>,
    /// The plan's name.
    pub plan: Option<String>,
}

/// One state's figures over the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StateStats {
    /// The plan's name: a state is counted per plan (state 10 of one plan and state 10
    /// of another are different things).
    pub plan: String,
    pub state: u8,
    pub name: String,
    /// Attempts started.
    pub runs: u64,
    pub successes: u64,
    pub failures: u64,
    /// successes / (successes + failures); `None` when neither happened.
    pub success_rate: Option<f64>,
    /// runs / successes; `None` without a success.
    pub attempts_per_success: Option<f64>,
    /// Of the successful attempts, in seconds (nearest rank).
    pub p50_seconds: Option<f64>,
    pub p95_seconds: Option<f64>,
    /// The plan's expected duration of the state.
    pub expected_seconds: Option<f64>,
    /// From a failure to the next attempt when a retry was scheduled.
    pub retry_wait_seconds: f64,
    /// From a failure that blocked the build (or a failed prerequisite) to a person's
    /// decision (retry, skip, cancel, rollback, force, reset).
    pub person_wait_seconds: f64,
    /// The most frequent failure categories, most first: (category, count).
    pub top_categories: Vec<(String, u64)>,
    /// The most frequent error lines (first line, numbers as N), most first.
    pub top_errors: Vec<(String, u64)>,
}

/// One build's figures over the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BuildStats {
    pub build_id: String,
    /// From its first event in the window to its last (or to now when it is not
    /// finished).
    pub total_seconds: f64,
    /// Failed attempts' durations plus the waits after them (retry and person).
    pub lost_to_retries_seconds: f64,
    pub failures: u64,
}

/// The whole answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    pub since: String,
    pub builds: u64,
    pub events: u64,
    pub states: Vec<StateStats>,
    /// Builds, the most time lost first.
    pub per_build: Vec<BuildStats>,
}

/// How many categories and error lines each state lists.
const TOP: usize = 5;

#[derive(Default)]
struct Acc {
    runs: u64,
    successes: u64,
    failures: u64,
    durations_ms: Vec<u64>,
    retry_wait_ms: u64,
    person_wait_ms: u64,
    categories: HashMap<String, u64>,
    errors: HashMap<String, u64>,
}

/// A state of a plan (the plan's place in the sorted list of plan names, the state's
/// number): what the figures are kept by. A number, not the name, so that counting an
/// event allocates nothing; the order is the names' order.
type Key = (usize, u8);

/// A wait opened by a failure, closed by what ends it.
struct Wait {
    state: u8,
    since: SystemTime,
    person: bool,
}

struct BuildAcc {
    id: String,
    /// Its plan (see [`Key`]).
    plan: usize,
    first: Option<SystemTime>,
    last: Option<SystemTime>,
    finished: bool,
    lost_ms: u64,
    failures: u64,
    wait: Option<Wait>,
}

impl BuildAcc {
    /// End the open wait, if any, at `at`: its time goes to its state's retry or person
    /// wait, and to the build's time lost.
    fn close_wait(&mut self, at: SystemTime, acc: &mut BTreeMap<Key, Acc>) {
        if let Some(w) = self.wait.take() {
            let ms = ms_between(w.since, at);
            let a = acc.entry((self.plan, w.state)).or_default();
            if w.person {
                a.person_wait_ms += ms;
            } else {
                a.retry_wait_ms += ms;
            }
            self.lost_ms += ms;
        }
    }
}

/// An error line as counted: its first line, trimmed to 200 characters, with every run
/// of digits replaced by `N` (attempt counts, ports, sizes and times differ; the error
/// does not).
pub fn normalise_error(message: &str) -> String {
    let line = crate::decide::headline(message, 200);
    let mut out = String::with_capacity(line.len());
    let mut in_digits = false;
    for c in line.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('N');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

/// Column `i` of an event row as text, without a copy (`None` for NULL).
fn ms_between(from: SystemTime, to: SystemTime) -> u64 {
    to.duration_since(from)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn top(map: HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = map.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(TOP);
    v
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1] as f64 / 1000.0)
}

/// Statistics over the events at or after `since`, for the builds `filter` selects.
pub fn stats(store: &Store, since: SystemTime, filter: &Filter, now: SystemTime) -> Result<Stats> {
    // The builds that count, with their plan and whether they are finished.
    let mut builds: HashMap<String, (String, bool)> = HashMap::new();
    let mut plan_names: HashMap<String, String> = HashMap::new();
    let which = crate::store::fleet::Selection {
        cloud: filter.cloud.as_deref(),
        image: filter.image.as_deref(),
        plan: filter.plan.as_deref(),
    };
    for b in store.counted_builds(&which)? {
        plan_names.insert(b.plan_hash.clone(), b.plan_name);
        builds.insert(b.build_id, (b.plan_hash, b.finished));
    }
    // State names and expected durations: from the plan most of the counted builds use,
    // then any other plan for states it lacks.
    let mut plans_by_use: HashMap<&str, usize> = HashMap::new();
    for (hash, _) in builds.values() {
        *plans_by_use.entry(hash.as_str()).or_default() += 1;
    }
    let mut order: Vec<(&str, usize)> = plans_by_use.into_iter().collect();
    order.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let mut plan_list: Vec<String> = plan_names.values().cloned().collect();
    plan_list.sort();
    plan_list.dedup();
    let plan_id = |name: &str| {
        plan_list
            .binary_search_by(|p| p.as_str().cmp(name))
            .unwrap_or(0)
    };
    let mut names: BTreeMap<Key, (String, Duration)> = BTreeMap::new();
    for (hash, _) in &order {
        let plan: Plan = store.plan(hash)?;
        for s in &plan.states {
            names
                .entry((plan_id(&plan.name), s.id))
                .or_insert_with(|| (s.name.clone(), s.expected));
        }
    }

    let mut acc: BTreeMap<Key, Acc> = BTreeMap::new();
    let mut per_build: Vec<BuildStats> = Vec::new();
    let mut events = 0u64;
    let mut cur: Option<BuildAcc> = None;
    let finish = |b: BuildAcc, out: &mut Vec<BuildStats>, acc: &mut BTreeMap<Key, Acc>| {
        let mut b = b;
        // A wait still open at the end of the history lasts until now.
        b.close_wait(now, acc);
        let end = if b.finished { b.last } else { Some(now) };
        out.push(BuildStats {
            build_id: b.id,
            total_seconds: match (b.first, end) {
                (Some(f), Some(e)) => ms_between(f, e) as f64 / 1000.0,
                _ => 0.0,
            },
            lost_to_retries_seconds: b.lost_ms as f64 / 1000.0,
            failures: b.failures,
        });
    };
    store.counted_events(since, |e| {
        let id = e.build_id;
        let Some((hash, finished)) = builds.get(id) else {
            return Ok(());
        };
        if cur.as_ref().is_none_or(|c| c.id != id) {
            if let Some(done) = cur.take() {
                finish(done, &mut per_build, &mut acc);
            }
            cur = Some(BuildAcc {
                id: id.to_string(),
                plan: plan_names.get(hash).map_or(0, |n| plan_id(n)),
                first: None,
                last: None,
                finished: *finished,
                lost_ms: 0,
                failures: 0,
                wait: None,
            });
        }
        let Some(b) = cur.as_mut() else {
            return Ok(());
        };
        events += 1;
        let at = e.at;
        b.first.get_or_insert(at);
        b.last = Some(at);
        let kind = e.kind;
        // What closes an open wait: the next attempt closes a retry wait; a person's
        // decision closes a person wait.
        if let Some(w) = &b.wait {
            if kind.decided_by_person() || (!w.person && kind == EventKind::Start) {
                b.close_wait(at, &mut acc);
            }
        }
        let Some(state) = e.state else {
            return Ok(());
        };
        let key = (b.plan, state);
        match kind {
            EventKind::Start => acc.entry(key).or_default().runs += 1,
            EventKind::Complete => {
                let a = acc.entry(key).or_default();
                a.successes += 1;
                if let Some(d) = e.duration_ms {
                    a.durations_ms.push(d);
                }
            }
            EventKind::Fail => {
                let a = acc.entry(key).or_default();
                a.failures += 1;
                b.failures += 1;
                b.lost_ms += e.duration_ms.unwrap_or(0);
                if let Some(c) = e.category {
                    *a.categories.entry(c.to_string()).or_default() += 1;
                }
                if let Some(m) = e.fail_message {
                    *a.errors.entry(normalise_error(m)).or_default() += 1;
                }
                b.wait = Some(Wait {
                    state,
                    since: at,
                    person: !e.retry_scheduled,
                });
            }
            EventKind::Prerequisite => {
                b.wait = Some(Wait {
                    state,
                    since: at,
                    person: true,
                });
            }
            _ => {}
        }
        Ok(())
    })?;
    if let Some(done) = cur.take() {
        finish(done, &mut per_build, &mut acc);
    }
    per_build.sort_by(|a, b| {
        b.lost_to_retries_seconds
            .total_cmp(&a.lost_to_retries_seconds)
            .then_with(|| a.build_id.cmp(&b.build_id))
    });
    let states = acc
        .into_iter()
        .map(|(key, mut a)| {
            a.durations_ms.sort_unstable();
            let (name, expected) = names.get(&key).map_or((String::new(), None), |(n, e)| {
                (n.clone(), Some(e.as_secs_f64()))
            });
            let decided = a.successes + a.failures;
            let (plan, state) = key;
            StateStats {
                plan: plan_list.get(plan).cloned().unwrap_or_default(),
                state,
                name,
                runs: a.runs,
                successes: a.successes,
                failures: a.failures,
                success_rate: (decided > 0).then(|| a.successes as f64 / decided as f64),
                attempts_per_success: (a.successes > 0).then(|| a.runs as f64 / a.successes as f64),
                p50_seconds: percentile(&a.durations_ms, 50.0),
                p95_seconds: percentile(&a.durations_ms, 95.0),
                expected_seconds: expected,
                retry_wait_seconds: a.retry_wait_ms as f64 / 1000.0,
                person_wait_seconds: a.person_wait_ms as f64 / 1000.0,
                top_categories: top(a.categories),
                top_errors: top(a.errors),
            }
        })
        .collect();
    Ok(Stats {
        since: time::format(since),
        builds: per_build.len() as u64,
        events,
        states,
        per_build,
    })
}

fn secs(s: Option<f64>) -> String {
    s.map_or("-".into(), |s| {
        time::format_duration(Duration::from_millis((s * 1000.0).round() as u64))
    })
}

impl Stats {
    /// The tables for people: one row per state, then the `builds` builds that lost the
    /// most time, then each state's top failure categories and error lines.
    pub fn text(&self, builds: usize) -> String {
        let mut out = format!(
            "since {}: {} build(s), {} event(s)\n\n",
            self.since, self.builds, self.events
        );
        let mut table = comfy_table::Table::new();
        table.load_style(comfy_table::presets::NOTHING);
        // The plan column only when two plans' states are counted.
        let plans = self.states.iter().any(|s| s.plan != self.states[0].plan);
        let mut header = vec![
            "state",
            "name",
            "runs",
            "ok",
            "failed",
            "success",
            "tries/ok",
            "p50",
            "p95",
            "expected",
            "retry wait",
            "person wait",
        ];
        if plans {
            header.insert(0, "plan");
        }
        table.set_header(header);
        for s in &self.states {
            let mut row = vec![
                s.state.to_string(),
                s.name.clone(),
                s.runs.to_string(),
                s.successes.to_string(),
                s.failures.to_string(),
                s.success_rate
                    .map_or("-".into(), |r| format!("{:.0}%", r * 100.0)),
                s.attempts_per_success
                    .map_or("-".into(), |a| format!("{a:.2}")),
                secs(s.p50_seconds),
                secs(s.p95_seconds),
                secs(s.expected_seconds),
                secs(Some(s.retry_wait_seconds)),
                secs(Some(s.person_wait_seconds)),
            ];
            if plans {
                row.insert(0, s.plan.clone());
            }
            table.add_row(row);
        }
        for line in table.to_string().lines() {
            out.push_str(line.trim_end());
            out.push('\n');
        }
        if builds > 0
            && self
                .per_build
                .iter()
                .any(|b| b.lost_to_retries_seconds > 0.0)
        {
            out.push_str("\nbuilds that lost the most time to retries:\n");
            let mut table = comfy_table::Table::new();
            table.load_style(comfy_table::presets::NOTHING);
            table.set_header(vec!["build", "total", "lost to retries", "failures"]);
            for b in self
                .per_build
                .iter()
                .filter(|b| b.lost_to_retries_seconds > 0.0)
                .take(builds)
            {
                table.add_row(vec![
                    b.build_id.clone(),
                    secs(Some(b.total_seconds)),
                    secs(Some(b.lost_to_retries_seconds)),
                    b.failures.to_string(),
                ]);
            }
            for line in table.to_string().lines() {
                out.push_str(line.trim_end());
                out.push('\n');
            }
        }
        for s in self.states.iter().filter(|s| s.failures > 0) {
            let plan = if plans {
                format!("plan {} ", s.plan)
            } else {
                String::new()
            };
            out.push_str(&format!(
                "\n{plan}state {} {} failed {} time(s):\n",
                s.state, s.name, s.failures
            ));
            for (c, n) in &s.top_categories {
                out.push_str(&format!("  {n:>6}  category {c}\n"));
            }
            for (e, n) in &s.top_errors {
                // One line as it was written (stored text is redacted; what must not
                // reach a terminal is escaped on the way out): not Rust's debug escapes.
                out.push_str(&format!("  {n:>6}  {}\n", crate::decide::headline(e, 300)));
            }
        }
        out
    }
}

/// A Prometheus label value: backslash, double quote and newline escaped.
pub(crate) fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Stats {
    /// The same figures as Prometheus gauges over the window (`monitor metrics`).
    pub fn prometheus(&self, window: Duration) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP buildstate_stats_window_seconds The window the buildstate_state_* figures cover.\n# TYPE buildstate_stats_window_seconds gauge\nbuildstate_stats_window_seconds {}",
            window.as_secs()
        );
        type Figure = fn(&StateStats) -> Option<f64>;
        let figures: [(&str, &str, Figure); 9] = [
            ("runs", "Attempts started in the window.", |s| {
                Some(s.runs as f64)
            }),
            ("failures", "Failed attempts in the window.", |s| {
                Some(s.failures as f64)
            }),
            (
                "success_ratio",
                "Successes over successes and failures.",
                |s| s.success_rate,
            ),
            (
                "attempts_per_success",
                "Attempts started per success.",
                |s| s.attempts_per_success,
            ),
            (
                "duration_p50_seconds",
                "Median duration of successful attempts.",
                |s| s.p50_seconds,
            ),
            (
                "duration_p95_seconds",
                "95th percentile duration of successful attempts.",
                |s| s.p95_seconds,
            ),
            ("expected_seconds", "The plan's expected duration.", |s| {
                s.expected_seconds
            }),
            (
                "retry_wait_seconds",
                "Time from failures to their scheduled retries.",
                |s| Some(s.retry_wait_seconds),
            ),
            (
                "person_wait_seconds",
                "Time from blocking failures to a person's decision.",
                |s| Some(s.person_wait_seconds),
            ),
        ];
        for (name, help, get) in figures {
            let _ = writeln!(
                out,
                "# HELP buildstate_state_{name} {help}\n# TYPE buildstate_state_{name} gauge"
            );
            for s in &self.states {
                if let Some(v) = get(s) {
                    let _ = writeln!(
                        out,
                        "buildstate_state_{name}{{plan=\"{}\",state=\"{}\",name=\"{}\"}} {v}",
                        label(&s.plan),
                        s.state,
                        label(&s.name)
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP buildstate_state_failures_by_category Failed attempts in the window by category (top {TOP}).\n# TYPE buildstate_state_failures_by_category gauge"
        );
        for s in &self.states {
            for (c, n) in &s.top_categories {
                let _ = writeln!(
                    out,
                    "buildstate_state_failures_by_category{{plan=\"{}\",state=\"{}\",name=\"{}\",category=\"{}\"}} {n}",
                    label(&s.plan),
                    s.state,
                    label(&s.name),
                    label(c)
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_are_normalised_and_percentiles_are_nearest_rank() {
        assert_eq!(
            normalise_error("\ncurl: (28) timed out after 30001 ms\nmore"),
            "curl: (N) timed out after N ms"
        );
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[1000], 95.0), Some(1.0));
        let v: Vec<u64> = (1..=20).map(|i| i * 1000).collect();
        assert_eq!(percentile(&v, 50.0), Some(10.0));
        assert_eq!(percentile(&v, 95.0), Some(19.0));
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
