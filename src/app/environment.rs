//! The edge: where buildstate's environment variables (the table in domain/settings.rs)
//! are read. A front end resolves them once, when it starts ([`Settings::from_env`]: a
//! bad value is refused then, with exit 8 and the variable's name, before anything is
//! written), and hands the values down; the layers below never read the environment.
//!
//! What is read here and not in [`Settings`]: the database path (`--db` is clap's, the
//! Python `Store` asks [`db_path`]), who this process is ([`actor`]) and the Slack
//! destination ([`slack_target`], read where alerts are sent: a bad one is a warning
//! after a write, never a refused command).

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::context::Actor;
use crate::notify::slack::{self, Target};
use crate::remote::RemoteOptions;
use crate::snapshot::Keys;
use crate::store::{DEFAULT_BUSY_TIMEOUT, MAX_BUSY_TIMEOUT_MS};
use crate::{Error, Result};

/// Every setting a write needs, resolved from the environment once.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long to wait for another writer's lock (`BUILDSTATE_BUSY_TIMEOUT`).
    pub busy_timeout: Duration,
    /// How a remote is reached (`BUILDSTATE_REMOTE_TIMEOUT`, `BUILDSTATE_MAX_CLOCK_SKEW`,
    /// `BUILDSTATE_SNAPSHOT_KEY`).
    pub remote: RemoteOptions,
    /// How alerts are delivered after a write (`BUILDSTATE_SLACK_BUDGET`,
    /// `BUILDSTATE_SLACK_RETRY_DELAY`, `BUILDSTATE_REPORT_URL`).
    pub slack: slack::Options,
}

impl Settings {
    /// The settings this process's environment gives, each checked.
    pub fn from_env() -> Result<Settings> {
        Ok(Settings {
            busy_timeout: busy_timeout()?,
            remote: remote_options()?,
            slack: slack::Options {
                budget: duration("BUILDSTATE_SLACK_BUDGET")?.unwrap_or(Duration::from_secs(2)),
                retry_delay: duration("BUILDSTATE_SLACK_RETRY_DELAY")?
                    .unwrap_or(Duration::from_secs(30)),
                report_url: text("BUILDSTATE_REPORT_URL"),
            },
        })
    }
}

/// A variable's value, `None` when unset or not UTF-8.
fn text(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// `BUILDSTATE_DB` unless a path is given, else `$XDG_STATE_HOME/buildstate/buildstate.db`,
/// else `~/.local/state/buildstate/buildstate.db`, else `./buildstate.db`.
pub fn db_path(given: Option<PathBuf>) -> PathBuf {
    given
        .or_else(|| os("BUILDSTATE_DB").map(PathBuf::from))
        .unwrap_or_else(default_db_path)
}

/// A variable's value, `None` when unset or empty.
fn os(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

/// `$XDG_STATE_HOME/buildstate/buildstate.db`, else `~/.local/state/buildstate/buildstate.db`,
/// else `./buildstate.db`.
pub fn default_db_path() -> PathBuf {
    let base = os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| os("HOME").map(|h| PathBuf::from(h).join(".local/state")));
    match base {
        Some(b) => b.join("buildstate").join("buildstate.db"),
        None => PathBuf::from("buildstate.db"),
    }
}

/// `BUILDSTATE_BUSY_TIMEOUT` in milliseconds, or the default.
fn busy_timeout() -> Result<Duration> {
    match std::env::var("BUILDSTATE_BUSY_TIMEOUT") {
        Err(_) => Ok(DEFAULT_BUSY_TIMEOUT),
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|ms| *ms <= MAX_BUSY_TIMEOUT_MS)
            .map(Duration::from_millis)
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "invalid BUILDSTATE_BUSY_TIMEOUT '{}': give a whole number of milliseconds from 0 to {MAX_BUSY_TIMEOUT_MS} (an hour)",
                    crate::redact::echo(&v)
                ))
            }),
    }
}

/// A duration variable: `None` when unset or empty, else its value (up to 366 days), or
/// [`Error::InvalidInput`] naming it.
pub fn duration(name: &str) -> Result<Option<Duration>> {
    match std::env::var(name) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => crate::time::parse_bounded_duration(&v, Duration::ZERO)
            .map(Some)
            .map_err(|e| Error::InvalidInput(format!("invalid {name}: {e}"))),
        Err(std::env::VarError::NotUnicode(_)) => Err(Error::InvalidInput(format!(
            "invalid {name}: not UTF-8; give a duration such as 30s"
        ))),
    }
}

/// The defaults, with `BUILDSTATE_REMOTE_TIMEOUT` (a duration: the whole budget for one
/// operation, retries included), `BUILDSTATE_MAX_CLOCK_SKEW` (a duration up to 1h, or
/// `off`) and the snapshot signing keys when set.
fn remote_options() -> Result<RemoteOptions> {
    let mut o = RemoteOptions::default();
    if let Ok(v) = std::env::var("BUILDSTATE_MAX_CLOCK_SKEW") {
        o.max_clock_skew = if v.trim().eq_ignore_ascii_case("off") {
            None
        } else {
            let d = humantime::parse_duration(v.trim())
                .ok()
                .filter(|d| *d <= Duration::from_secs(3600))
                .ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "invalid BUILDSTATE_MAX_CLOCK_SKEW '{}': give a duration up to 1h (e.g. 5s), or off",
                        crate::redact::echo(&v)
                    ))
                })?;
            Some(d)
        };
    }
    if let Ok(v) = std::env::var("BUILDSTATE_REMOTE_TIMEOUT") {
        let d = crate::time::parse_bounded_duration(&v, Duration::from_millis(1))
            .map_err(|e| Error::InvalidInput(format!("invalid BUILDSTATE_REMOTE_TIMEOUT: {e}")))?;
        o.retry_timeout = d;
        o.request_timeout = o.request_timeout.min(d);
        o.connect_timeout = o.connect_timeout.min(d);
    }
    o.keys = snapshot_keys()?.map(Arc::new);
    Ok(o)
}

/// The snapshot signing keys (`BUILDSTATE_SNAPSHOT_KEY_FILE`, else
/// `BUILDSTATE_SNAPSHOT_KEY`), if any are configured.
fn snapshot_keys() -> Result<Option<Keys>> {
    if let Some(path) = os("BUILDSTATE_SNAPSHOT_KEY_FILE") {
        let path = PathBuf::from(path);
        // A setting that names no readable file is bad input, like a malformed key:
        // say which variable, and never read on without the keys.
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::InvalidInput(format!(
                "BUILDSTATE_SNAPSHOT_KEY_FILE names '{}', which cannot be read ({e}): point it at the key file, or unset it",
                crate::redact::echo(&path.display().to_string())
            ))
        })?;
        return Keys::parse(&text, "BUILDSTATE_SNAPSHOT_KEY_FILE").map(Some);
    }
    match std::env::var("BUILDSTATE_SNAPSHOT_KEY") {
        Ok(v) => Keys::parse(&v, "BUILDSTATE_SNAPSHOT_KEY").map(Some),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(Error::InvalidInput(
            "BUILDSTATE_SNAPSHOT_KEY is not valid UTF-8".into(),
        )),
    }
}

/// This process as the actor of its writes: this host, this user (`USER`, `LOGNAME`,
/// else the numeric uid: containers often run without either), with the Concourse
/// variables it runs under.
pub fn actor(tool: &str) -> Actor {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    // SAFETY: getuid(2) takes nothing, cannot fail and touches no memory of ours.
    let uid = unsafe { libc::getuid() };
    Actor::from_lookup(tool, &host, uid, text)
}

/// Where alerts go (`BUILDSTATE_SLACK_WEBHOOK_URL`, else `BUILDSTATE_SLACK_TOKEN` with
/// `BUILDSTATE_SLACK_CHANNEL`, each secret also from its `…_FILE`); `None` when Slack is
/// not configured.
pub fn slack_target() -> Result<Option<Target>> {
    Target::from_vars(|name| std::env::var_os(name))
}
