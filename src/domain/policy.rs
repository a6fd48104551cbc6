//! Retry policy math and failure classification. Pure: the time, the attempt count and
//! the jitter draw come in as parameters, so every rule is table-tested without sleeping.

use std::time::{Duration, SystemTime};

use regex::RegexSet;
use serde::{Deserialize, Serialize};

/// What kind of failure a state had; it decides whether a retry can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Transient,
    Persistent,
    Unknown,
    /// A state's `requires` command failed: it did not start, no attempt was used.
    Prerequisite,
}
text_enum!(Category { Transient => "transient", Persistent => "persistent", Unknown => "unknown", Prerequisite => "prerequisite" });

impl Category {
    /// Parse a category a person or a caller typed (update-state --category, the Python
    /// API): the error says which names are valid.
    pub fn parse_input(text: &str) -> Result<Category, crate::Error> {
        text.parse()
            .ok()
            .filter(|c| *c != Category::Prerequisite)
            .ok_or_else(|| {
                crate::Error::InvalidInput(format!(
                    "invalid category '{}': use transient, persistent or unknown",
                    crate::model::echo(text)
                ))
            })
    }
}

/// What to do when a state fails. `max_attempts` counts every attempt, the first included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "lowercase", deny_unknown_fields)]
pub enum RetryPolicy {
    /// Retry after a fixed delay (zero by default), up to `max_attempts` in all.
    Immediate {
        max_attempts: u32,
        #[serde(default, with = "humantime_serde")]
        delay: Duration,
    },
    /// Retry after a delay that grows by `factor` each time, capped at `max_delay`.
    Backoff {
        max_attempts: u32,
        #[serde(with = "humantime_serde")]
        initial_delay: Duration,
        #[serde(default = "default_factor")]
        factor: f64,
        #[serde(with = "humantime_serde")]
        max_delay: Duration,
        /// Spread each delay randomly over [delay/2, delay] so that workers do not retry
        /// in lock-step.
        #[serde(default)]
        jitter: bool,
        /// Stop retrying once this long has passed since the state's first attempt.
        #[serde(
            default,
            with = "humantime_serde",
            skip_serializing_if = "Option::is_none"
        )]
        window: Option<Duration>,
    },
    /// Alert and wait for a person, after `automatic_attempts` retries `delay` apart.
    Notify {
        #[serde(default)]
        automatic_attempts: u32,
        #[serde(default, with = "humantime_serde")]
        delay: Duration,
    },
    /// Never retry automatically: a failure needs a person.
    Never,
}

fn default_factor() -> f64 {
    2.0
}

impl RetryPolicy {
    /// Three attempts with a backoff from one minute to ten: the default when a plan
    /// gives none.
    pub fn default_policy() -> Self {
        RetryPolicy::Backoff {
            max_attempts: 3,
            initial_delay: Duration::from_secs(60),
            factor: 2.0,
            max_delay: Duration::from_secs(600),
            jitter: false,
            window: None,
        }
    }

    /// Check the numbers; the message names the bad field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let long = |what: &str, d: &Duration| {
            (*d > crate::time::MAX_DURATION).then(|| format!("{what}: longer than 366 days"))
        };
        let too_long = match self {
            RetryPolicy::Immediate { delay, .. } | RetryPolicy::Notify { delay, .. } => {
                long("delay", delay)
            }
            RetryPolicy::Backoff {
                initial_delay,
                max_delay,
                window,
                ..
            } => long("initial_delay", initial_delay)
                .or_else(|| long("max_delay", max_delay))
                .or_else(|| window.as_ref().and_then(|w| long("window", w))),
            RetryPolicy::Never => None,
        };
        if let Some(m) = too_long {
            return Err(m);
        }
        match self {
            RetryPolicy::Immediate { max_attempts, .. } if *max_attempts == 0 => {
                Err("max_attempts: must be at least 1 (it counts the first attempt)".into())
            }
            RetryPolicy::Backoff {
                max_attempts,
                initial_delay,
                factor,
                max_delay,
                ..
            } => {
                if *max_attempts == 0 {
                    Err("max_attempts: must be at least 1 (it counts the first attempt)".into())
                } else if !factor.is_finite() || *factor < 1.0 {
                    Err(format!("factor: {factor} must be a number of at least 1.0"))
                } else if initial_delay > max_delay {
                    Err(format!(
                        "initial_delay: {} is longer than max_delay {}",
                        crate::time::format_duration(*initial_delay),
                        crate::time::format_duration(*max_delay)
                    ))
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }
}

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertKind {
    /// A state failed and needs a person (persistent, or its retries are used up).
    Blocked,
    /// The build completed its plan.
    Completed,
    /// A person cancelled the build.
    Cancelled,
    /// A person rolled the build back.
    Rollback,
    /// A worker took over the lease of one presumed dead.
    Takeover,
    /// `monitor check` found the build stuck (running far past its expected duration,
    /// or its lease expired with nobody taking over).
    Stuck,
    /// `check-state --verify` (or `monitor verify`) found that a completed state's result
    /// no longer holds: its verify command failed.
    Drift,
    /// A resource's cleanup failed every try of a collection (`monitor gc`,
    /// `cancel --cleanup`, `reset --cleanup`): it is probably still there, costing money.
    Cleanup,
    /// A build this one consumed outputs of revoked them (`update-state revoke`): the
    /// state built on them is stale.
    Revoked,
}

text_enum!(AlertKind {
    Blocked => "blocked", Completed => "completed", Cancelled => "cancelled",
    Rollback => "rollback", Takeover => "takeover", Stuck => "stuck", Drift => "drift",
    Cleanup => "cleanup", Revoked => "revoked",
});

/// Rules that put a failure into a [`Category`]. A plan has a global set (`[classify]`) and
/// each state may add its own (`classify = {...}`); the state's rules are consulted first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyRules {
    /// Exit codes that mean "try again later" (e.g. 75 EX_TEMPFAIL).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transient_exit_codes: Vec<i32>,
    /// Exit codes that mean "retrying will not help".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub persistent_exit_codes: Vec<i32>,
    /// Regular expressions over the error message and the tail of stderr.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transient_patterns: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub persistent_patterns: Vec<String>,
    /// The category of a command killed by its state's timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Category>,
    /// The category of a command killed by a signal (other than our own timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<Category>,
    /// The category when no rule matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Category>,
}

impl ClassifyRules {
    /// The rules a plan gets when it gives none: common network and capacity trouble is
    /// transient; usage, permission and syntax errors are persistent.
    pub fn builtin() -> ClassifyRules {
        ClassifyRules {
            transient_exit_codes: vec![75],
            persistent_exit_codes: vec![],
            transient_patterns: [
                r"(?i)timed? ?out",
                r"(?i)connection (refused|reset|closed)",
                r"(?i)temporar(y|ily) (failure|unavailable)",
                r"(?i)could not resolve host|name or service not known",
                r"(?i)\b(429|502|503|504)\b|too many requests|rate.?limit|throttl",
                r"(?i)unreachable",
            ]
            .map(String::from)
            .to_vec(),
            persistent_patterns: [
                r"(?i)permission denied|access denied|unauthori[sz]ed|forbidden",
                r"(?i)syntax error|parse error|invalid (argument|option|configuration)",
                r"(?i)no such file or directory|not found",
            ]
            .map(String::from)
            .to_vec(),
            timeout: Some(Category::Transient),
            signal: Some(Category::Transient),
            default: Some(Category::Unknown),
        }
    }

    /// Check that every pattern compiles; the message names the bad one.
    pub fn validate(&self) -> Result<(), String> {
        for (field, pats) in [
            ("transient_patterns", &self.transient_patterns),
            ("persistent_patterns", &self.persistent_patterns),
        ] {
            for (i, p) in pats.iter().enumerate() {
                if let Err(e) = regex::Regex::new(p) {
                    return Err(format!("{field}[{i}]: invalid regular expression: {e}"));
                }
            }
        }
        Ok(())
    }
}

/// What is known about one failed attempt.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Failure<'a> {
    pub exit_code: Option<i32>,
    /// The signal that killed the command, if one did.
    pub signal: Option<i32>,
    /// The command ran past its state's timeout.
    pub timed_out: bool,
    /// The error message and/or the tail of stderr.
    pub text: &'a str,
}

/// Classify a failure: the state's rules first, then the plan's, then the built-in ones.
/// Within one rule set: timeout, signal, exit codes, then persistent patterns before
/// transient ones (a message that says both is not worth retrying).
pub fn classify(rule_sets: &[&ClassifyRules], f: &Failure<'_>) -> Category {
    let builtin = ClassifyRules::builtin();
    let sets = rule_sets.iter().copied().chain(std::iter::once(&builtin));
    let mut default = None;
    for r in sets {
        if f.timed_out {
            if let Some(c) = r.timeout {
                return c;
            }
        }
        if f.signal.is_some() && !f.timed_out {
            if let Some(c) = r.signal {
                return c;
            }
        }
        if let Some(code) = f.exit_code {
            if r.persistent_exit_codes.contains(&code) {
                return Category::Persistent;
            }
            if r.transient_exit_codes.contains(&code) {
                return Category::Transient;
            }
        }
        if matches_any(&r.persistent_patterns, f.text) {
            return Category::Persistent;
        }
        if matches_any(&r.transient_patterns, f.text) {
            return Category::Transient;
        }
        default = default.or(r.default);
    }
    default.unwrap_or(Category::Unknown)
}

fn matches_any(patterns: &[String], text: &str) -> bool {
    // Patterns were validated when the plan was read; an invalid one here matches nothing.
    !patterns.is_empty() && RegexSet::new(patterns).is_ok_and(|set| set.is_match(text))
}

/// What the policy says after a failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Try again at `at`; `max_attempts` is the number allowed in all.
    RetryAt { at: SystemTime, max_attempts: u32 },
    /// No automatic retry: a person is needed. `reason` says why.
    Blocked { reason: String },
}

/// The most attempts a policy allows (before extra ones granted by a person).
pub fn max_attempts(policy: &RetryPolicy) -> u32 {
    match policy {
        RetryPolicy::Immediate { max_attempts, .. } | RetryPolicy::Backoff { max_attempts, .. } => {
            *max_attempts
        }
        RetryPolicy::Notify {
            automatic_attempts, ..
        } => (*automatic_attempts).max(1),
        RetryPolicy::Never => 1,
    }
}

/// The delay before attempt `failed_attempt + 1` under a backoff policy, before jitter:
/// `initial * factor^(failed_attempt - 1)`, capped at `max_delay`.
pub fn backoff_delay(
    initial: Duration,
    factor: f64,
    max_delay: Duration,
    failed_attempt: u32,
) -> Duration {
    let exp = failed_attempt.saturating_sub(1).min(64) as i32;
    let secs = initial.as_secs_f64() * factor.powi(exp);
    if !secs.is_finite() || secs >= max_delay.as_secs_f64() {
        max_delay
    } else {
        Duration::from_secs_f64(secs)
    }
}

/// Decide what follows a failed attempt.
///
/// `failed_attempt` is the attempt that just failed (1 for the first); `extra` counts the
/// attempts a person granted with `update-state retry`; `first_attempt_at` is when the
/// state's first attempt started (for a backoff `window`); `jitter` is a draw in [0, 1).
pub fn after_failure(
    policy: &RetryPolicy,
    category: Category,
    failed_attempt: u32,
    extra: u32,
    first_attempt_at: Option<SystemTime>,
    now: SystemTime,
    jitter: f64,
) -> Verdict {
    let max = max_attempts(policy).saturating_add(extra);
    if category == Category::Persistent {
        return Verdict::Blocked {
            reason: "the failure is persistent: retrying will not help".into(),
        };
    }
    if failed_attempt >= max {
        let reason = match policy {
            RetryPolicy::Never => "the state's retry policy is 'never'".to_string(),
            RetryPolicy::Notify { .. } => {
                format!("{failed_attempt} automatic attempt(s) failed; the policy calls a person")
            }
            _ => format!("all {max} attempts failed"),
        };
        return Verdict::Blocked { reason };
    }
    let delay = match policy {
        RetryPolicy::Immediate { delay, .. } | RetryPolicy::Notify { delay, .. } => *delay,
        RetryPolicy::Backoff {
            initial_delay,
            factor,
            max_delay,
            jitter: use_jitter,
            window,
            ..
        } => {
            let mut d = backoff_delay(*initial_delay, *factor, *max_delay, failed_attempt);
            if *use_jitter {
                // Spread over [d/2, d]: never longer than the policy says.
                d = d / 2 + d.mul_f64(jitter.clamp(0.0, 1.0) / 2.0);
            }
            if let (Some(w), Some(first)) = (window, first_attempt_at) {
                if now + d > first + *w {
                    return Verdict::Blocked {
                        reason: format!(
                            "the retry window of {} since the first attempt is used up",
                            crate::time::format_duration(*w)
                        ),
                    };
                }
            }
            d
        }
        RetryPolicy::Never => unreachable!("max_attempts is 1 for 'never'"),
    };
    Verdict::RetryAt {
        at: now + delay,
        max_attempts: max,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }
    const MIN: Duration = Duration::from_secs(60);

    fn backoff(max: u32, jitter: bool, window: Option<Duration>) -> RetryPolicy {
        RetryPolicy::Backoff {
            max_attempts: max,
            initial_delay: 5 * MIN,
            factor: 2.0,
            max_delay: 30 * MIN,
            jitter,
            window,
        }
    }

    fn retry_in(v: Verdict) -> Duration {
        match v {
            Verdict::RetryAt { at, .. } => at.duration_since(t0()).unwrap(),
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    #[test]
    fn backoff_grows_and_caps() {
        let p = backoff(10, false, None);
        let delays: Vec<u64> = (1..=6)
            .map(|a| {
                retry_in(after_failure(
                    &p,
                    Category::Transient,
                    a,
                    0,
                    None,
                    t0(),
                    0.0,
                ))
                .as_secs()
                    / 60
            })
            .collect();
        assert_eq!(delays, vec![5, 10, 20, 30, 30, 30]);
        assert_eq!(backoff_delay(MIN, 3.0, 100 * MIN, 3), 9 * MIN);
        assert_eq!(backoff_delay(MIN, 1e300, 100 * MIN, 60), 100 * MIN);
    }

    #[test]
    fn jitter_spreads_within_half_to_full() {
        let p = backoff(10, true, None);
        let lo = retry_in(after_failure(&p, Category::Unknown, 2, 0, None, t0(), 0.0));
        let hi = retry_in(after_failure(
            &p,
            Category::Unknown,
            2,
            0,
            None,
            t0(),
            0.999_999,
        ));
        let mid = retry_in(after_failure(&p, Category::Unknown, 2, 0, None, t0(), 0.5));
        assert_eq!(lo, 5 * MIN);
        assert!(hi <= 10 * MIN && hi > 9 * MIN, "{hi:?}");
        assert_eq!(mid, Duration::from_secs(450));
    }

    #[test]
    fn attempts_run_out_and_extra_attempts_extend() {
        let p = RetryPolicy::Immediate {
            max_attempts: 5,
            delay: MIN,
        };
        for a in 1..5 {
            let v = after_failure(&p, Category::Transient, a, 0, None, t0(), 0.0);
            assert_eq!(
                v,
                Verdict::RetryAt {
                    at: t0() + MIN,
                    max_attempts: 5
                }
            );
        }
        let v = after_failure(&p, Category::Transient, 5, 0, None, t0(), 0.0);
        assert!(
            matches!(&v, Verdict::Blocked { reason, .. } if reason == "all 5 attempts failed"),
            "{v:?}"
        );
        let v = after_failure(&p, Category::Transient, 5, 1, None, t0(), 0.0);
        assert_eq!(
            v,
            Verdict::RetryAt {
                at: t0() + MIN,
                max_attempts: 6
            }
        );
    }

    #[test]
    fn persistent_never_and_notify_block() {
        let p = backoff(10, false, None);
        assert!(
            matches!(after_failure(&p, Category::Persistent, 1, 0, None, t0(), 0.0), Verdict::Blocked { reason, .. } if reason.contains("persistent"))
        );
        assert!(
            matches!(after_failure(&RetryPolicy::Never, Category::Transient, 1, 0, None, t0(), 0.0), Verdict::Blocked { reason, .. } if reason.contains("'never'"))
        );
        let notify = RetryPolicy::Notify {
            automatic_attempts: 2,
            delay: 60 * MIN,
        };
        assert_eq!(
            retry_in(after_failure(
                &notify,
                Category::Transient,
                1,
                0,
                None,
                t0(),
                0.0
            )),
            60 * MIN
        );
        assert!(
            matches!(after_failure(&notify, Category::Transient, 2, 0, None, t0(), 0.0), Verdict::Blocked { reason } if reason.contains("calls a person"))
        );
        let notify0 = RetryPolicy::Notify {
            automatic_attempts: 0,
            delay: MIN,
        };
        assert!(matches!(
            after_failure(&notify0, Category::Transient, 1, 0, None, t0(), 0.0),
            Verdict::Blocked { .. }
        ));
    }

    #[test]
    fn window_limits_backoff() {
        let p = backoff(10, false, Some(60 * MIN));
        let first = t0() - 40 * MIN;
        // 3rd failure: next delay 20 min would end exactly at the window's edge: allowed.
        assert_eq!(
            retry_in(after_failure(
                &p,
                Category::Transient,
                3,
                0,
                Some(first),
                t0(),
                0.0
            )),
            20 * MIN
        );
        // 4th failure: 30 min would pass it.
        assert!(
            matches!(after_failure(&p, Category::Transient, 4, 0, Some(first), t0(), 0.0), Verdict::Blocked { reason, .. } if reason.contains("window of 1h"))
        );
    }

    #[test]
    fn classification_table() {
        let plan_rules = ClassifyRules {
            persistent_exit_codes: vec![2],
            transient_exit_codes: vec![3],
            transient_patterns: vec!["mirror .* busy".into()],
            ..Default::default()
        };
        let state_rules = ClassifyRules {
            persistent_patterns: vec!["(?i)checksum mismatch".into()],
            timeout: Some(Category::Persistent),
            ..Default::default()
        };
        let sets = [&state_rules, &plan_rules];
        let f = |exit_code, signal, timed_out, text| Failure {
            exit_code,
            signal,
            timed_out,
            text,
        };
        let cases = [
            (
                f(Some(1), None, false, "mirror eu-1 busy, try later"),
                Category::Transient,
            ),
            (
                f(Some(1), None, false, "Checksum mismatch on image"),
                Category::Persistent,
            ),
            (
                f(Some(2), None, false, "connection timed out"),
                Category::Persistent,
            ),
            (f(Some(3), None, false, "anything"), Category::Transient),
            (f(None, Some(9), true, ""), Category::Persistent),
            (f(None, Some(9), false, ""), Category::Transient),
            (
                f(Some(1), None, false, "curl: (28) Operation timed out"),
                Category::Transient,
            ),
            (
                f(
                    Some(1),
                    None,
                    false,
                    "ssh: connect to host x: Connection refused",
                ),
                Category::Transient,
            ),
            (
                f(Some(1), None, false, "HTTP 503 from registry"),
                Category::Transient,
            ),
            (
                f(Some(1), None, false, "Permission denied (publickey)"),
                Category::Persistent,
            ),
            (
                f(
                    Some(1),
                    None,
                    false,
                    "ERROR! Syntax Error while loading YAML",
                ),
                Category::Persistent,
            ),
            (f(Some(75), None, false, ""), Category::Transient),
            (f(Some(1), None, false, "it's broken"), Category::Unknown),
            // Both persistent and transient words: persistent wins.
            (
                f(Some(1), None, false, "timed out, then permission denied"),
                Category::Persistent,
            ),
        ];
        for (failure, want) in cases {
            assert_eq!(classify(&sets, &failure), want, "{failure:?}");
        }
        // With no plan rules at all, the built-in ones still apply.
        assert_eq!(
            classify(&[], &f(Some(1), None, false, "Connection reset by peer")),
            Category::Transient
        );
        let custom_default = ClassifyRules {
            default: Some(Category::Transient),
            ..Default::default()
        };
        assert_eq!(
            classify(&[&custom_default], &f(Some(1), None, false, "odd")),
            Category::Transient
        );
    }

    #[test]
    fn invalid_patterns_are_named() {
        let r = ClassifyRules {
            transient_patterns: vec!["ok".into(), "(unclosed".into()],
            ..Default::default()
        };
        assert!(r
            .validate()
            .unwrap_err()
            .starts_with("transient_patterns[1]: invalid regular expression"));
    }
}
