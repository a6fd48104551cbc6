//! What a completed state depended on, as recorded (a [`Manifest`]), and why a
//! completed state is stale: the pure side of inputs. Finding and hashing the files, and
//! the cache that spares it, live in `app::inputs` (in the state crate).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{Event, EventKind};

/// The manifest format written by this buildstate.
pub const MANIFEST_VERSION: u32 = 1;
/// Hex digits of the per-entry digests kept to name a change (64 bits).
pub const SHORT: usize = 16;
/// The most reasons listed for one stale state.
const MAX_REASONS: usize = 5;

/// What a state's inputs were when it completed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub v: u32,
    /// SHA-256 over every input (full per-file digests included): equal digests mean
    /// unchanged inputs.
    pub digest: String,
    /// The file globs hashed: the plan's, then those a caller discovered (the Ansible
    /// callback's roles), relative to the inputs root.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub globs: Vec<String>,
    /// Path (relative to the root, '/'-separated) to the first 16 hex digits of its SHA-256.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
    /// Variable name to a short salted digest of its value, or `unset`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Metadata key to a short salted digest of its value, or `unset`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    /// A short digest of the literal values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<String>,
    /// Another build's output consumed, `BUILD:KEY` (resolved), to its value then
    /// (`None`: it had no current output of that key), shortened past [`SHOWN`] bytes:
    /// outputs are not secrets (they are refused when they look like one), and naming
    /// both values is what tells a person which base image a child was built on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub builds: BTreeMap<String, Option<String>>,
}

/// The most bytes of a consumed output a manifest keeps as it is; a longer value is kept
/// as its start and a digest of the whole (the overall digest covers all of it).
pub const SHOWN: usize = 200;

/// How a consumed output's `value` is kept in a manifest: as it is, or, past [`SHOWN`]
/// bytes, its start, its length and a short digest.
pub fn shown(value: &str, digest: &[u8]) -> String {
    if value.len() <= SHOWN {
        return value.to_string();
    }
    let mut cut = 64;
    while !value.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}... ({} bytes, sha256 {})",
        &value[..cut],
        value.len(),
        hex(&digest[..SHORT / 2])
    )
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Refuse a glob that is not relative to the root, or climbs out of it.
pub fn check_glob(glob: &str) -> std::result::Result<(), String> {
    let echo = crate::redact::echo(glob);
    if glob.trim().is_empty() || glob.len() > 4096 {
        return Err("give a glob of 1 to 4096 characters".into());
    }
    if glob.starts_with('/') || glob.split('/').any(|c| c == "..") || glob.contains('\0') {
        return Err(format!(
            "'{echo}' must be relative to the inputs root and stay inside it (no leading '/', no '..')"
        ));
    }
    globset::GlobBuilder::new(glob)
        .literal_separator(true)
        .build()
        .map_err(|e| format!("'{echo}' is not a valid glob: {}", e.kind()))?;
    Ok(())
}

impl Manifest {
    /// Check a manifest read from outside (a snapshot).
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.v != MANIFEST_VERSION {
            return Err(format!(
                "inputs manifest version {} (this buildstate reads {MANIFEST_VERSION})",
                self.v
            ));
        }
        if !is_hex(&self.digest, 64) {
            return Err("inputs digest is not a SHA-256 in lower-case hex".into());
        }
        for g in &self.globs {
            check_glob(g).map_err(|m| format!("inputs glob: {m}"))?;
        }
        for (path, d) in &self.files {
            check_glob(path).map_err(|m| format!("inputs file: {m}"))?;
            if !is_hex(d, SHORT) {
                return Err(format!(
                    "inputs file {path}: digest is not {SHORT} hex digits"
                ));
            }
        }
        for (k, d) in self.env.iter().chain(&self.meta) {
            if k.is_empty() || k.len() > 128 || !(d == "unset" || is_hex(d, SHORT)) {
                return Err(format!(
                    "inputs entry '{}' is malformed",
                    crate::redact::echo(k)
                ));
            }
        }
        if self.values.as_deref().is_some_and(|d| !is_hex(d, SHORT)) {
            return Err("inputs values digest is malformed".into());
        }
        for (k, v) in &self.builds {
            let ok = crate::deps::parse_consumed(k).is_ok_and(|c| !c.build.contains('{'));
            if !ok || v.as_ref().is_some_and(|v| v.len() > SHOWN + 64) {
                return Err(format!(
                    "inputs build output '{}' is malformed",
                    crate::redact::echo(k)
                ));
            }
        }
        Ok(())
    }
}

/// What changed between two manifests, for people: "ansible/roles/users/tasks/main.yml
/// changed", "environment IMAGE_VERSION changed".
pub fn changes(old: &Manifest, new: &Manifest) -> Vec<String> {
    let mut out = Vec::new();
    for (path, d) in &new.files {
        match old.files.get(path) {
            None => out.push(format!("{path} added")),
            Some(o) if o != d => out.push(format!("{path} changed")),
            _ => {}
        }
    }
    for path in old.files.keys() {
        if !new.files.contains_key(path) {
            out.push(format!("{path} removed"));
        }
    }
    for (what, o, n) in [
        ("environment variable", &old.env, &new.env),
        ("metadata", &old.meta, &new.meta),
    ] {
        for (k, d) in n {
            if o.get(k) != Some(d) {
                out.push(format!("{what} {k} changed"));
            }
        }
    }
    if old.values != new.values {
        out.push("the plan's values changed".into());
    }
    let said = |v: &Option<String>| match v {
        Some(v) => format!("'{v}'"),
        None => "none".to_string(),
    };
    for (k, n) in &new.builds {
        let (build, key) = k.rsplit_once(':').unwrap_or((k, ""));
        match old.builds.get(k) {
            Some(o) if o == n => {}
            Some(o) => out.push(format!(
                "build {build}'s output {key} changed: it was {} when this state completed, it is {} now",
                said(o),
                said(n)
            )),
            None => out.push(format!("build {build}'s output {key} is a new input")),
        }
    }
    for k in old.builds.keys().filter(|k| !new.builds.contains_key(*k)) {
        out.push(format!("build output {k} is no longer an input"));
    }
    if out.is_empty() && old.digest != new.digest {
        out.push("an input changed".into());
    }
    if out.len() > MAX_REASONS {
        let more = out.len() - MAX_REASONS;
        out.truncate(MAX_REASONS);
        out.push(format!("and {more} more"));
    }
    out
}

/// Why a completed state no longer counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StaleKind {
    /// Its inputs changed since it completed.
    Changed,
    /// Its verify command failed since it completed.
    Drifted,
    /// An earlier state is stale.
    After,
}

/// A completed state that must run again.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stale {
    pub state: u8,
    pub name: String,
    pub kind: StaleKind,
    /// What changed, one entry each ("ansible/roles/users/tasks/main.yml changed").
    pub reasons: Vec<String>,
}

impl Stale {
    /// "state 20 ansible-users: ansible/roles/users/tasks/main.yml changed"
    pub fn sentence(&self) -> String {
        format!(
            "state {} {}: {}",
            self.state,
            self.name,
            self.reasons.join(", ")
        )
    }
}

/// The event that made `state` done last (complete, skip, reused, or init), if any.
pub fn last_done(events: &[Event], state: u8) -> Option<&Event> {
    events.iter().rev().find(|e| {
        e.state == Some(state)
            && matches!(
                e.kind,
                EventKind::Complete | EventKind::Skip | EventKind::Init | EventKind::Reused
            )
    })
}

impl Mark {
    /// The mark that made `state` done last (complete, skip, reused, or init), if any.
    pub fn last_done(marks: &[Mark], state: u8) -> Option<&Mark> {
        marks.iter().rev().find(|m| {
            m.state == Some(state)
                && matches!(
                    m.kind,
                    EventKind::Complete | EventKind::Skip | EventKind::Init | EventKind::Reused
                )
        })
    }

    /// The drift of `state` that stands since it was done (`done`): its latest verdict
    /// after `done` is a drift (a later verify that passes clears it).
    pub fn drift_since<'a>(marks: &'a [Mark], done: &Mark, state: u8) -> Option<&'a Mark> {
        marks
            .iter()
            .rev()
            .take_while(|m| m.seq > done.seq)
            .find(|m| {
                matches!(m.kind, EventKind::Drift | EventKind::Verified) && m.state == Some(state)
            })
            .filter(|m| m.kind == EventKind::Drift)
    }
}

/// An event as the staleness check reads it (`store::Store::marks`): inits,
/// completions, skips and drifts, the inputs left as stored text and parsed only as far
/// as needed.
#[derive(Debug, Clone)]
pub struct Mark {
    pub seq: u64,
    pub kind: EventKind,
    pub state: Option<u8>,
    pub message: Option<String>,
    pub inputs: Option<String>,
}
