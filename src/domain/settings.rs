//! Every environment variable buildstate reads, in one table (name, unit, default, what
//! it does). They are read at the edge, once (`environment::Settings`), and checked
//! before a front end does anything.
//!
//! README's table of variables is checked against [`VARS`] (tests/it/cli.rs), and so is
//! every `BUILDSTATE_*` name the code reads: a variable is added here or not at all.

/// What a variable holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Path,
    Url,
    /// A duration: `30s`, `5m`, `1h30m` (up to 366 days).
    Duration,
    Milliseconds,
    Text,
    /// A secret: never printed or stored; a `…_FILE` twin names a file that holds it.
    Secret,
    /// Set by buildstate for a command it runs, not read.
    Given,
}

/// One environment variable.
#[derive(Debug)]
pub struct Var {
    /// The variable's name; every one starts `BUILDSTATE_`.
    pub name: &'static str,
    /// How its value is read: the unit column of README's table.
    pub unit: Unit,
    /// What holds when it is unset (as README's table says it).
    pub default: &'static str,
    /// What it does (README's table).
    pub doc: &'static str,
}

macro_rules! vars {
    ($($name:literal, $unit:ident, $default:literal, $doc:literal;)+) => {
        /// Every variable, in README's order.
        pub const VARS: &[Var] = &[$(Var {
            name: $name,
            unit: Unit::$unit,
            default: $default,
            doc: $doc,
        }),+];
    };
}

vars! {
    "BUILDSTATE_DB", Path, "$XDG_STATE_HOME/buildstate/buildstate.db", "the database file (--db)";
    "BUILDSTATE_PLAN", Path, "the built-in plan", "the plan file for init-state and check-state";
    "BUILDSTATE_INPUTS_ROOT", Path, "the working directory", "the directory the plan's input globs are relative to";
    "BUILDSTATE_BUSY_TIMEOUT", Milliseconds, "60000", "how long to wait for another writer";
    "BUILDSTATE_LEASE_TTL", Duration, "60s", "run-state's lease, renewed every third of it";
    "BUILDSTATE_OWNER", Text, "USER@HOST", "the lease holder's name (update-state)";
    "BUILDSTATE_CLOUD", Text, "", "the Ansible callback creates a missing build for this cloud";
    "BUILDSTATE_IMAGE", Text, "", "the Ansible callback creates a missing build of this image";
    "BUILDSTATE_REMOTE", Url, "", "remote mode: every write goes through this remote (--remote)";
    "BUILDSTATE_SLACK_WEBHOOK_URL", Secret, "", "where alerts go: a Slack incoming webhook";
    "BUILDSTATE_SLACK_TOKEN", Secret, "", "where alerts go: a Slack bot token, with the channel";
    "BUILDSTATE_SLACK_CHANNEL", Text, "", "the channel for BUILDSTATE_SLACK_TOKEN";
    "BUILDSTATE_SLACK_API_URL", Url, "https://slack.com/api/chat.postMessage", "the Slack Web API endpoint (a proxy, or a test receiver)";
    "BUILDSTATE_SLACK_BUDGET", Duration, "2s", "how long a command may spend delivering alerts after its write";
    "BUILDSTATE_SLACK_RETRY_DELAY", Duration, "30s", "the first delay before an undelivered alert is tried again";
    "BUILDSTATE_REMOTE_TIMEOUT", Duration, "30s", "how long one remote operation may take, retries included";
    "BUILDSTATE_MAX_CLOCK_SKEW", Duration, "5s", "how far this clock may be from the remote's (or off)";
    "BUILDSTATE_REPORT_URL", Url, "", "where HTML reports are published: alerts link the build's timeline";
    "BUILDSTATE_SNAPSHOT_KEY", Secret, "", "sign snapshots written and refuse unsigned ones read";
    "BUILDSTATE_LOG", Text, "", "diagnostics on stderr: a level (debug: each remote request, lock waits, Slack deliveries) or filter directives";
    "BUILDSTATE_BUILD_ID", Given, "", "the build, for run-state's command, verify and requires (and the callback)";
    "BUILDSTATE_STATE", Given, "", "the state, for run-state's command, verify and requires (and the callback)";
    "BUILDSTATE_ATTEMPT", Given, "", "the attempt, for run-state's command";
    "BUILDSTATE_META_", Given, "", "BUILDSTATE_META_<KEY>: each metadata value, for run-state's command, verify and requires";
    "BUILDSTATE_OUTPUT_", Given, "", "BUILDSTATE_OUTPUT_<KEY>: each current output, for run-state's command (docs/outputs.md)";
    "BUILDSTATE_RESOURCE_TYPE", Given, "", "the resource, for its cleanup and check commands (docs/resources.md)";
    "BUILDSTATE_RESOURCE_ID", Given, "", "the resource's id, for its cleanup and check commands";
    "BUILDSTATE_RESOURCE_PROP_", Given, "", "BUILDSTATE_RESOURCE_PROP_<KEY>: each property, for its cleanup and check commands";
    "BUILDSTATE_RUN_TOKEN", Given, "", "marks every process of a command run-state runs, to end them all";
    "BUILDSTATE_STRICT", Text, "", "the Ansible callback stops the playbook on a recording error";
    "BUILDSTATE_RECORD_TASKS", Text, "", "the Ansible callback records each task's result";
    "BUILDSTATE_FORCE", Text, "", "the Ansible callback forces these states to run again";
    "BUILDSTATE_FORCE_REASON", Text, "", "why, for BUILDSTATE_FORCE";
    "BUILDSTATE_PARENT_WAIT", Text, "", "the Ansible callback's wait for other builds, in seconds";
}

/// The variable named `name`, if buildstate has one (a secret's `…_FILE` twin and each
/// `BUILDSTATE_META_<KEY>`, `BUILDSTATE_OUTPUT_<KEY>` and `BUILDSTATE_RESOURCE_PROP_<KEY>`
/// included).
pub fn var(name: &str) -> Option<&'static Var> {
    let base = name.strip_suffix("_FILE").unwrap_or(name);
    VARS.iter().find(|v| {
        v.name == name
            || (v.name == base && v.unit == Unit::Secret)
            || (matches!(
                v.name,
                "BUILDSTATE_META_" | "BUILDSTATE_OUTPUT_" | "BUILDSTATE_RESOURCE_PROP_"
            ) && name.starts_with(v.name))
    })
}
