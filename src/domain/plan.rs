//! Plans: the ordered states a build walks through, each with a name, an expected
//! duration, an optional timeout and a retry policy. A plan is written in TOML
//! (`docs/plan.md`); the built-in default is `src/default-plan.toml`.
//!
//! A plan is validated once when it is read; a stored plan (kept in the database by
//! content hash, so that a build keeps the plan it was created with) is trusted.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::policy::{AlertKind, ClassifyRules, RetryPolicy};
use crate::{Error, Result};

/// The highest state number a plan may use.
pub const MAX_STATE: u8 = 100;

const DEFAULT_PLAN_TOML: &str = include_str!("default-plan.toml");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub defaults: Defaults,
    /// Failure classification for every state (the built-in rules apply after these).
    #[serde(default, skip_serializing_if = "is_default")]
    pub classify: ClassifyRules,
    /// The alerts this plan raises (default: all); a state may set its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<Vec<AlertKind>>,
    #[serde(rename = "state")]
    pub states: Vec<StateDef>,
}

fn is_default(r: &ClassifyRules) -> bool {
    *r == ClassifyRules::default()
}

/// Values used by every state that does not set its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    #[serde(default = "RetryPolicy::default_policy")]
    pub retry: RetryPolicy,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            timeout: None,
            retry: RetryPolicy::default_policy(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateDef {
    pub id: u8,
    pub name: String,
    #[serde(with = "humantime_serde")]
    pub expected: Duration,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Failure classification for this state, consulted before the plan's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classify: Option<ClassifyRules>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// State 0 only: it has work of its own, which a worker runs like any other state.
    /// Without it, init-state records state 0 as done when it creates the build.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub work: bool,
    /// The alerts this state raises, instead of the plan's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<Vec<AlertKind>>,
    /// What the state's result depends on: when one of these changes after the state
    /// completed, the state is stale and runs again (docs/plan.md#inputs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<InputsDef>,
    /// A shell command that checks the state's result still holds (`check-state --verify`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<String>,
    /// A shell command that must succeed before the state starts under run-state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires: Option<String>,
    /// Other builds' states this one waits for, `BUILD:STATE` each (the build id perhaps
    /// a template: `base-{image}:100`): until each parent has completed its state, the
    /// decision is `wait` (`crate::deps`, docs/plan.md#dependencies).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
}

/// A state's declared inputs. Every field is optional; an empty declaration never goes
/// stale.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputsDef {
    /// Globs of files, relative to the inputs root (`--inputs-root`, default the working
    /// directory): `ansible/roles/users/**`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    /// Names of environment variables whose values count (hashed; never stored).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Metadata keys of the build whose values count.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub meta: Vec<String>,
    /// Literal values (a version, a flavour): changing them in a new plan is a change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Other builds' current outputs, `BUILD:KEY` (BUILD perhaps a template over the
    /// build, as in `after`): a new value (a rebuilt base image) makes the state stale.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub builds: Vec<String>,
}

impl InputsDef {
    /// Check the declaration; the message names the bad entry.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (i, g) in self.files.iter().enumerate() {
            crate::manifest::check_glob(g).map_err(|m| format!("files[{i}]: {m}"))?;
        }
        for (i, name) in self.env.iter().enumerate() {
            let ok = !name.is_empty()
                && name.len() <= 128
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(format!(
                    "env[{i}]: '{}' is not an environment variable name (letters, digits, '_')",
                    crate::redact::echo(name)
                ));
            }
        }
        for (i, key) in self.meta.iter().enumerate() {
            crate::model::validate_meta_key(key).map_err(|e| format!("meta[{i}]: {e}"))?;
        }
        for (i, b) in self.builds.iter().enumerate() {
            crate::deps::parse_consumed(b).map_err(|m| format!("builds[{i}]: {m}"))?;
        }
        let total = self.files.len()
            + self.env.len()
            + self.meta.len()
            + self.values.len()
            + self.builds.len();
        if total > 1000 {
            return Err("more than 1000 entries: group files with globs".into());
        }
        Ok(())
    }
}

impl Plan {
    /// The built-in classic image-build plan.
    pub fn default_plan() -> Plan {
        Plan::from_toml(DEFAULT_PLAN_TOML, "(built-in)").expect("the built-in plan is valid")
    }

    /// The built-in plan with state 0 given work of its own, so that unit tests of
    /// transitions can walk every state from the first.
    #[cfg(test)]
    pub(crate) fn default_plan_with_work_at_0() -> Plan {
        let mut plan = Plan::default_plan();
        plan.states[0].work = true;
        plan
    }

    /// Parse and validate a plan. `origin` names the file in error messages.
    pub fn from_toml(text: &str, origin: &str) -> Result<Plan> {
        let invalid = |message: String| Error::InvalidPlan {
            origin: origin.to_string(),
            message,
        };
        let plan: Plan = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        plan.validate().map_err(invalid)?;
        Ok(plan)
    }

    /// Check the plan; the message names the bad field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("name: must not be empty".into());
        }
        if self.states.is_empty() {
            return Err("state: the plan needs at least one [[state]]".into());
        }
        self.defaults
            .retry
            .validate()
            .map_err(|m| format!("defaults.retry.{m}"))?;
        if self
            .defaults
            .timeout
            .is_some_and(|d| d > crate::time::MAX_DURATION || d.is_zero())
        {
            return Err("defaults.timeout: must be longer than zero and at most 366 days".into());
        }
        self.classify
            .validate()
            .map_err(|m| format!("classify.{m}"))?;
        let mut previous: Option<u8> = None;
        for (i, s) in self.states.iter().enumerate() {
            let at = format!("state[{i}] (id {})", s.id);
            if s.id > MAX_STATE {
                return Err(format!("{at}.id: {} is outside 0..={MAX_STATE}", s.id));
            }
            if let Some(p) = previous {
                if s.id <= p {
                    return Err(format!(
                        "{at}.id: states must be listed in increasing order without repeats, but {} follows {p}",
                        s.id
                    ));
                }
            }
            if s.name.trim().is_empty() {
                return Err(format!("{at}.name: must not be empty"));
            }
            if let Some(dup) = self.states[..i].iter().find(|o| o.name == s.name) {
                return Err(format!(
                    "{at}.name: '{}' is already the name of state {}",
                    s.name, dup.id
                ));
            }
            if s.work && s.id != 0 {
                return Err(format!(
                    "{at}.work: only state 0 can say it has work of its own; every other state has"
                ));
            }
            if s.timeout == Some(Duration::ZERO) {
                return Err(format!("{at}.timeout: must be longer than zero"));
            }
            for (field, d) in [("expected", Some(s.expected)), ("timeout", s.timeout)] {
                if d.is_some_and(|d| d > crate::time::MAX_DURATION) {
                    return Err(format!("{at}.{field}: longer than 366 days"));
                }
            }
            if let Some(r) = &s.retry {
                r.validate().map_err(|m| format!("{at}.retry.{m}"))?;
            }
            if let Some(c) = &s.classify {
                c.validate().map_err(|m| format!("{at}.classify.{m}"))?;
            }
            if let Some(i) = &s.inputs {
                i.validate().map_err(|m| format!("{at}.inputs.{m}"))?;
            }
            if s.after.len() > crate::deps::MAX_AFTER {
                return Err(format!(
                    "{at}.after: {} entries, more than the {} a state may wait for",
                    s.after.len(),
                    crate::deps::MAX_AFTER
                ));
            }
            for (j, a) in s.after.iter().enumerate() {
                crate::deps::parse_after(a).map_err(|m| format!("{at}.after[{j}]: {m}"))?;
            }
            for (field, cmd) in [("verify", &s.verify), ("requires", &s.requires)] {
                if cmd
                    .as_ref()
                    .is_some_and(|c| c.trim().is_empty() || c.len() > 64 * 1024)
                {
                    return Err(format!(
                        "{at}.{field}: give a shell command of 1 to 65536 characters"
                    ));
                }
            }
            previous = Some(s.id);
        }
        Ok(())
    }

    /// Canonical JSON form, as stored in the database.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a plan always serializes")
    }

    pub fn from_json(text: &str) -> Result<Plan> {
        serde_json::from_str(text).map_err(|e| Error::Corrupt(format!("stored plan: {e}")))
    }

    /// SHA-256 of the canonical JSON form: the plan's identity in the database.
    pub fn hash(&self) -> String {
        let digest = Sha256::digest(self.to_json().as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn state(&self, id: u8) -> Option<&StateDef> {
        self.states.iter().find(|s| s.id == id)
    }

    pub fn first(&self) -> &StateDef {
        &self.states[0]
    }

    pub fn last(&self) -> &StateDef {
        self.states.last().expect("a valid plan has states")
    }

    /// The state after `completed`, or the first state when nothing is completed yet.
    /// `None` when `completed` is the last state.
    pub fn next_after(&self, completed: Option<u8>) -> Option<&StateDef> {
        match completed {
            None => Some(self.first()),
            Some(c) => self.states.iter().find(|s| s.id > c),
        }
    }

    /// The retry policy in force for a state.
    pub fn retry_for(&self, id: u8) -> &RetryPolicy {
        self.state(id)
            .and_then(|s| s.retry.as_ref())
            .unwrap_or(&self.defaults.retry)
    }

    /// The classification rule sets for a state, most specific first.
    pub fn classify_rules(&self, id: u8) -> Vec<&ClassifyRules> {
        let mut sets = Vec::with_capacity(2);
        if let Some(c) = self.state(id).and_then(|s| s.classify.as_ref()) {
            sets.push(c);
        }
        sets.push(&self.classify);
        sets
    }

    /// The timeout in force for a state.
    pub fn timeout_for(&self, id: u8) -> Option<Duration> {
        self.state(id)
            .and_then(|s| s.timeout)
            .or(self.defaults.timeout)
    }

    /// The lease a state started by hand (`update-state start`) gets when no heartbeat
    /// renews it: the state's timeout, else twice its expected duration. Past it the
    /// state counts as abandoned and another worker may take it over.
    pub fn unrenewed_lease_ttl(&self, id: u8) -> Duration {
        self.timeout_for(id).unwrap_or_else(|| {
            self.state(id)
                .map_or(Duration::from_secs(3600), |s| s.expected * 2)
        })
    }

    /// The state init-state records as done when it creates a build: state 0, unless
    /// the plan gives it work of its own (`work = true`).
    pub fn done_at_init(&self) -> Option<&StateDef> {
        self.states.first().filter(|s| s.id == 0 && !s.work)
    }

    /// The alerts raised about a state: its own list, else the plan's, else all kinds.
    pub fn alerts_for(&self, id: u8) -> &[AlertKind] {
        self.state(id)
            .and_then(|s| s.alerts.as_deref())
            .or(self.alerts.as_deref())
            .unwrap_or(AlertKind::ALL)
    }

    /// The last completed state once states are reopened from `from` (`None`: every
    /// state): the state before it stays completed, and so does the one init-state
    /// records as done (state 0 without work of its own: nothing to run again). One rule
    /// for the transition (`model`) and the snapshot replay that checks it.
    pub fn kept_when_reopened(&self, from: Option<u8>) -> Option<u8> {
        from.and_then(|s| self.previous(s))
            .map(|p| p.id)
            .or(self.done_at_init().map(|s| s.id))
    }

    /// The state before `id` in plan order.
    pub fn previous(&self, id: u8) -> Option<&StateDef> {
        self.states.iter().rev().find(|s| s.id < id)
    }

    /// "state 15 (ansible-base)", or just "state 15" when it is not in the plan.
    pub fn label(&self, id: u8) -> String {
        match self.state(id) {
            Some(s) => format!("state {} ({})", s.id, s.name),
            None => format!("state {id}"),
        }
    }

    /// The state ids as a short list for error messages.
    pub fn ids(&self) -> String {
        self.states
            .iter()
            .map(|s| s.id.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Plan::from_toml(text, "t.toml").unwrap_err().to_string()
    }

    const ONE: &str = "name = \"p\"\n[[state]]\nid = 0\nname = \"a\"\nexpected = \"1m\"\n";

    #[test]
    fn default_plan_follows_the_classic_flow() {
        let p = Plan::default_plan();
        let ids: Vec<u8> = p.states.iter().map(|s| s.id).collect();
        assert_eq!(ids, (0..=100).step_by(5).collect::<Vec<u8>>());
        assert_eq!(p.state(5).unwrap().name, "kickstart");
        assert_eq!(p.state(10).unwrap().name, "green-image-validation");
        assert_eq!(p.state(70).unwrap().name, "integration-tests");
        assert_eq!(p.state(95).unwrap().name, "publish");
        assert!(matches!(
            p.retry_for(10),
            RetryPolicy::Immediate {
                max_attempts: 5,
                ..
            }
        ));
        assert!(matches!(p.retry_for(70), RetryPolicy::Notify { .. }));
        assert_eq!(p.retry_for(15), &p.defaults.retry);
    }

    #[test]
    fn json_round_trip_keeps_plan_and_hash() {
        let p = Plan::default_plan();
        let back = Plan::from_json(&p.to_json()).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.hash(), p.hash());
        assert_eq!(p.hash().len(), 64);
    }

    #[test]
    fn next_after_walks_the_plan() {
        let p = Plan::default_plan();
        assert_eq!(p.next_after(None).unwrap().id, 0);
        assert_eq!(p.next_after(Some(0)).unwrap().id, 5);
        assert_eq!(p.next_after(Some(65)).unwrap().id, 70);
        assert!(p.next_after(Some(100)).is_none());
    }

    #[test]
    fn invalid_plans_name_the_field() {
        let cases: &[(&str, &str)] = &[
            ("name = \"\"\n[[state]]\nid = 0\nname = \"a\"\nexpected = \"1m\"\n", "name: must not be empty"),
            ("name = \"p\"\nstate = []\n", "at least one [[state]]"),
            ("name = \"p\"\n[[state]]\nid = 101\nname = \"a\"\nexpected = \"1m\"\n", "state[0] (id 101).id: 101 is outside 0..=100"),
            ("name = \"p\"\n[[state]]\nid = 300\nname = \"a\"\nexpected = \"1m\"\n", "id"),
            ("name = \"p\"\n[[state]]\nid = 5\nname = \"a\"\nexpected = \"1m\"\n[[state]]\nid = 5\nname = \"b\"\nexpected = \"1m\"\n", "state[1] (id 5).id: states must be listed in increasing order"),
            ("name = \"p\"\n[[state]]\nid = 5\nname = \"a\"\nexpected = \"1m\"\n[[state]]\nid = 10\nname = \"a\"\nexpected = \"1m\"\n", "state[1] (id 10).name: 'a' is already the name of state 5"),
            ("name = \"p\"\n[[state]]\nid = 0\nname = \" \"\nexpected = \"1m\"\n", "state[0] (id 0).name: must not be empty"),
            ("name = \"p\"\n[[state]]\nid = 0\nname = \"a\"\nexpected = \"soon\"\n", "expected"),
            ("name = \"p\"\n[[state]]\nid = 0\nname = \"a\"\n", "missing field `expected`"),
            ("name = \"p\"\n[[state]]\nid = 0\nnam = \"a\"\nexpected = \"1m\"\n", "unknown field `nam`"),
            ("name = \"p\"\n[[state]]\nid = 0\nname = \"a\"\nexpected = \"1m\"\ntimeout = \"0s\"\n", "state[0] (id 0).timeout: must be longer than zero"),
            ("name = \"p\"\n[[state]]\nid = 0\nname = \"a\"\nexpected = \"1m\"\nretry = { policy = \"immediate\", max_attempts = 0 }\n", "state[0] (id 0).retry.max_attempts: must be at least 1"),
            ("name = \"p\"\n[[state]]\nid = 0\nname = \"a\"\nexpected = \"1m\"\nretry = { policy = \"backoff\", max_attempts = 3, initial_delay = \"1h\", max_delay = \"1m\" }\n", "retry.initial_delay: 1h is longer than max_delay 1m"),
            ("name = \"p\"\n[[state]]\nid = 0\nname = \"a\"\nexpected = \"1m\"\nretry = { policy = \"backoff\", max_attempts = 3, initial_delay = \"1m\", max_delay = \"1h\", factor = 0.5 }\n", "retry.factor: 0.5 must be a number of at least 1.0"),
            ("name = \"p\"\n[[state]]\nid = 0\nname = \"a\"\nexpected = \"1m\"\nretry = { policy = \"sometimes\" }\n", "unknown variant `sometimes`"),
            ("name = \"p\"\n[[state]]\nid = 0\nname = \"a\"\nexpected = \"1m\"\nretry = { policy = \"immediate\", max_attempts = 2, dealy = \"1m\" }\n", "unknown field `dealy`"),
            ("name = \"p\"\n[classify]\ntransient_patterns = [\"(x\"]\n[[state]]\nid = 0\nname = \"a\"\nexpected = \"1m\"\n", "classify.transient_patterns[0]: invalid regular expression"),
            ("name = \"p\"\n[[state]]\nid = 0\nname = \"a\"\nexpected = \"1m\"\nclassify = { persistent_patterns = [\"[\"] }\n", "state[0] (id 0).classify.persistent_patterns[0]"),
            ("name = \"p\"\n[[state]]\nid = 0\nname = \"a\"\nexpected = \"1m\"\nclassify = { timeout = \"sometimes\" }\n", "unknown variant `sometimes`"),
            ("name = \"p\"\n[defaults]\nretry = { policy = \"immediate\", max_attempts = 0 }\n[[state]]\nid = 0\nname = \"a\"\nexpected = \"1m\"\n", "defaults.retry.max_attempts"),
        ];
        for (text, want) in cases {
            let got = err(text);
            assert!(got.starts_with("invalid plan t.toml: "), "{got}");
            assert!(
                got.contains(want),
                "plan:\n{text}\nwanted '{want}' in: {got}"
            );
        }
    }

    #[test]
    fn demo_plan_matches_the_built_in_one() {
        let demo = Plan::from_toml(include_str!("../../scripts/demo-plan.toml"), "demo").unwrap();
        let ids = |p: &Plan| {
            p.states
                .iter()
                .map(|s| (s.id, s.name.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&demo), ids(&Plan::default_plan()));
        for s in &demo.states {
            assert_eq!(
                std::mem::discriminant(demo.retry_for(s.id)),
                std::mem::discriminant(Plan::default_plan().retry_for(s.id)),
                "state {} has another kind of policy in the demo plan",
                s.id
            );
        }
    }

    #[test]
    fn minimal_plan_gets_default_retry() {
        let p = Plan::from_toml(ONE, "t").unwrap();
        assert_eq!(p.retry_for(0), &RetryPolicy::default_policy());
        assert_eq!(p.first().id, 0);
        assert_eq!(p.last().id, 0);
    }
}
