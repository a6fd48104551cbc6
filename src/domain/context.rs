//! Who made a change: every event records the actor (host, user, pid, the tool) and the
//! Concourse or Ansible context when the process runs inside one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The Concourse build metadata variables recorded when present
/// (<https://concourse-ci.org/implementing-resource-types.html#resource-metadata>).
pub const CONCOURSE_VARS: &[&str] = &[
    "BUILD_ID",
    "BUILD_NAME",
    "BUILD_JOB_NAME",
    "BUILD_PIPELINE_NAME",
    "BUILD_TEAM_NAME",
    "ATC_EXTERNAL_URL",
    "BUILD_URL",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Actor {
    pub host: String,
    pub user: String,
    pub pid: u32,
    /// The program that made the change: `update-state`, `ansible`, ...
    pub tool: String,
    /// Pipeline context (Concourse variables, Ansible playbook/play/task) when present.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub context: BTreeMap<String, String>,
}

impl Actor {
    /// The actor for this process on `host`, run by the user `env` names (`USER`, else
    /// `LOGNAME`, else `uid UID`), with the Concourse variables as `env` gives them (the
    /// edge gives this process's: `environment::actor`).
    pub fn from_lookup(
        tool: &str,
        host: &str,
        uid: u32,
        env: impl Fn(&str) -> Option<String>,
    ) -> Actor {
        let user = env("USER")
            .or_else(|| env("LOGNAME"))
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| format!("uid {uid}"));
        let context = CONCOURSE_VARS
            .iter()
            .filter_map(|k| {
                env(k)
                    .filter(|v| !v.is_empty())
                    .map(|v| (k.to_string(), crate::redact::redact(&v).into_owned()))
            })
            .collect();
        Actor {
            host: host.to_string(),
            user,
            pid: std::process::id(),
            tool: tool.to_string(),
            context,
        }
    }

    pub fn with_context(mut self, key: &str, value: &str) -> Actor {
        self.context
            .insert(key.to_string(), crate::redact::redact(value).into_owned());
        self
    }

    /// A name for this process as a lease holder: `tool:host:pid:random`, unique even for
    /// two holders in one process (run-state's attempts, two Python Stores).
    pub fn lease_owner(&self) -> String {
        let random = uuid::Uuid::new_v4().simple().to_string();
        format!("{}:{}:{}:{}", self.tool, self.host, self.pid, &random[..8])
    }

    /// "user@host (update-state, pid 42)".
    pub fn summary(&self) -> String {
        format!(
            "{}@{} ({}, pid {})",
            self.user, self.host, self.tool, self.pid
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concourse_context_is_recorded_when_present() {
        let env = |k: &str| match k {
            "USER" => Some("ci".to_string()),
            "BUILD_ID" => Some("1234".to_string()),
            "BUILD_PIPELINE_NAME" => Some("images".to_string()),
            "ATC_EXTERNAL_URL" => Some("https://admin:pw@ci.example.com".to_string()),
            _ => None,
        };
        let a = Actor::from_lookup("update-state", "ci-host", 7, env);
        assert_eq!(a.user, "ci");
        assert_eq!(a.tool, "update-state");
        assert_eq!(a.pid, std::process::id());
        assert_eq!(a.context.get("BUILD_ID").unwrap(), "1234");
        assert_eq!(a.context.get("BUILD_PIPELINE_NAME").unwrap(), "images");
        assert_eq!(
            a.context.get("ATC_EXTERNAL_URL").unwrap(),
            "https://admin:[REDACTED]@ci.example.com"
        );
        assert!(!a.context.contains_key("BUILD_JOB_NAME"));
    }

    #[test]
    fn missing_user_falls_back_to_uid() {
        let a = Actor::from_lookup("t", "h", 1234, |_| None);
        assert_eq!((a.user.as_str(), a.host.as_str()), ("uid 1234", "h"));
        assert!(a.context.is_empty());
    }
}
