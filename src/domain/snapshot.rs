//! Build snapshots: the JSON form in which a build travels between machines through
//! object storage (`sync-cloud`). The schema is `docs/snapshot.schema.json`, explained in
//! `docs/sync.md`.
//!
//! A snapshot holds a build's identity (lineage), its serial, the plan it was created
//! with (name, hash and body), its summary row, metadata and the whole event history.
//! The lease travels as the write that took it recorded it (owner and expiry), so that a
//! machine that pulls a running build does not start it again; heartbeats, which extend
//! a lease without a serial, stay out: they must not churn remote copies (in remote mode
//! a lease therefore lasts the state's timeout, see docs/sync.md).
//!
//! [`Snapshot::validate`] trusts nothing: a snapshot read from a bucket may be truncated,
//! hand-edited or hostile. It checks the format and schema version, that the plan hashes
//! to what it claims and is a valid plan, that the events are numbered 1..n with serials
//! that step by at most one from 1 to the snapshot's serial (numbers may be missing only
//! before a `pruned` event: task results removed by retention), and that the summary agrees
//! with the history. Nothing is written before all of it holds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use std::time::SystemTime;

use crate::model::{validate_build_id, validate_meta_key, Build, Event, EventKind, Facts, Implied};
use crate::plan::Plan;
use crate::{Error, Result};

/// The value of the `format` field.
pub const FORMAT: &str = "buildstate-snapshot";
/// The newest snapshot schema version this buildstate writes and reads. A snapshot is
/// written as version 1 unless it holds what version 1 readers do not know (version 2:
/// input manifests, or the events of docs/plan.md#inputs; version 3: task results
/// pruned by retention, which leave gaps in the numbering; version 4: `unverified`
/// events, a verify that could not run; version 5: a `pruned` event's typed `count`;
/// version 6: `output` events with their `outputs`; version 7: `resource` events, the
/// ledger of what a build made; version 8: a plan whose states wait for other builds
/// or consume their outputs, `after` and `inputs.builds`), so older buildstates keep reading the builds that do not use those.
/// A version 3 or 4 snapshot's `pruned` events are read with the count their message
/// gives.
pub const SCHEMA_VERSION: u32 = 8;
/// The largest snapshot accepted (a 1 MB message, many times over, fits).
pub const MAX_BYTES: usize = 256 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub format: String,
    pub schema_version: u32,
    pub build_id: String,
    pub lineage: String,
    pub serial: u64,
    pub plan: PlanEntry,
    /// The summary row as of `serial` (its lease as that write left it).
    pub build: Build,
    pub metadata: BTreeMap<String, MetaEntry>,
    pub events: Vec<Event>,
    /// Alerts raised in remote mode, with their delivery state: they travel with the
    /// build so that any machine's `monitor deliver` sends each once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<AlertEntry>,
    /// HMAC-SHA256 over the snapshot's canonical bytes (this field left out), when the
    /// writer has a snapshot key ([`Keys`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

/// One alert of the build and where its delivery stands (the `alerts` outbox row).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertEntry {
    /// Unique per cause: `BUILD:SERIAL:KIND`.
    pub dedupe_key: String,
    pub kind: String,
    /// The facts a message is made of (redacted when raised).
    pub payload: serde_json::Value,
    /// `pending`, `delivered` or `gave_up`.
    pub state: String,
    pub attempts: u32,
    #[serde(with = "crate::time::rfc3339")]
    pub next_try_at: SystemTime,
    /// The deliverer that holds it, until `claimed_until`.
    pub claimed_by: Option<String>,
    #[serde(with = "crate::time::rfc3339::option")]
    pub claimed_until: Option<SystemTime>,
    pub last_error: Option<String>,
    #[serde(with = "crate::time::rfc3339")]
    pub created_at: SystemTime,
    #[serde(with = "crate::time::rfc3339::option")]
    pub delivered_at: Option<SystemTime>,
}

/// The largest alert payload accepted from a snapshot.
const MAX_ALERT_PAYLOAD: usize = 64 * 1024;

/// A snapshot's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// Always `hmac-sha256`.
    pub alg: String,
    /// Which key signed: the first 16 hex digits of the key's SHA-256 (not secret).
    pub key_id: String,
    /// The HMAC, in hex.
    pub mac: String,
}

/// The snapshot keys of this process: `BUILDSTATE_SNAPSHOT_KEY` (or the file named by
/// `BUILDSTATE_SNAPSHOT_KEY_FILE`), one or more keys separated by white space or commas.
/// The first signs every snapshot written; any of them verifies one read, so keys can be
/// rotated (docs/sync.md). The keys themselves are never printed.
pub struct Keys {
    keys: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        write!(f, "Keys {ids:?}")
    }
}

/// The shortest key accepted: 16 bytes.
pub const MIN_KEY_BYTES: usize = 16;

const ALG: &str = "hmac-sha256";

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

impl Keys {
    /// Parse the text of the variable or file; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Keys> {
        let mut keys = Vec::new();
        for k in text
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|k| !k.is_empty())
        {
            if k.len() < MIN_KEY_BYTES {
                return Err(Error::InvalidInput(format!(
                    "{source}: a snapshot key must be at least {MIN_KEY_BYTES} characters (one of them has {}); make one with `openssl rand -hex 32`",
                    k.len()
                )));
            }
            use sha2::Digest;
            let id: String = sha2::Sha256::digest(k.as_bytes())
                .iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect();
            keys.push((id, k.as_bytes().to_vec()));
        }
        if keys.is_empty() {
            return Err(Error::InvalidInput(format!(
                "{source} is set but holds no key; unset it, or give one (`openssl rand -hex 32`)"
            )));
        }
        Ok(Keys { keys })
    }

    fn mac(key: &[u8], bytes: &[u8]) -> HmacSha256 {
        use hmac::Mac;
        let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
        m.update(bytes);
        m
    }

    fn sign(&self, bytes: &[u8]) -> Signature {
        use hmac::Mac;
        let (id, key) = &self.keys[0];
        let tag = Keys::mac(key, bytes).finalize().into_bytes();
        Signature {
            alg: ALG.into(),
            key_id: id.clone(),
            mac: tag.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    fn verify(&self, bytes: &[u8], sig: &Signature) -> bool {
        use hmac::Mac;
        let Some((_, key)) = self.keys.iter().find(|(id, _)| *id == sig.key_id) else {
            return false;
        };
        let Some(tag) = from_hex(&sig.mac) else {
            return false;
        };
        sig.alg == ALG && Keys::mac(key, bytes).verify_slice(&tag).is_ok()
    }

    fn knows(&self, key_id: &str) -> bool {
        self.keys.iter().any(|(id, _)| id == key_id)
    }
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanEntry {
    pub name: String,
    /// SHA-256 of `body`'s canonical JSON.
    pub hash: String,
    pub body: Plan,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaEntry {
    pub value: String,
    /// The build's serial after the write that set it.
    pub serial: u64,
}

/// The seq of the last `pruned` event (0 if none): numbers below it may be missing.
fn last_pruned(events: &[Event]) -> u64 {
    events
        .iter()
        .rev()
        .find(|e| e.kind == EventKind::Pruned)
        .map_or(0, |e| e.seq)
}

/// How two copies of one build's history compare, event by event by number (`seq`), up
/// to the shorter one's last event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Histories {
    /// They agree wherever both hold an event, and an event only one holds is a task
    /// result the other pruned (it holds a later `pruned` event). `pruned_there`: the
    /// numbers of the events `mine` holds that `theirs` pruned.
    Agree { pruned_there: Vec<u64> },
    /// They differ, first at event `at`.
    Differ { at: u64 },
}

impl Histories {
    /// Whether the two histories agree (see [`Histories::Agree`]).
    pub fn agree(&self) -> bool {
        matches!(self, Histories::Agree { .. })
    }
}

/// The number of a history's last event (0 for none): where task results were pruned,
/// more than the number of events it holds.
pub fn last_seq(events: &[Event]) -> u64 {
    events.last().map_or(0, |e| e.seq)
}

/// Compare `mine` with `theirs` (see [`Histories`]).
pub fn compare(mine: &[Event], theirs: &[Event]) -> Histories {
    let limit = last_seq(mine).min(last_seq(theirs));
    let (pruned_mine, pruned_theirs) = (last_pruned(mine), last_pruned(theirs));
    let mut pruned_there = Vec::new();
    let (mut a, mut b) = (mine.iter().peekable(), theirs.iter().peekable());
    loop {
        let (sa, sb) = (a.peek().map(|e| e.seq), b.peek().map(|e| e.seq));
        let at = sa.unwrap_or(u64::MAX).min(sb.unwrap_or(u64::MAX));
        if at > limit {
            return Histories::Agree { pruned_there };
        }
        match (a.next_if(|e| e.seq == at), b.next_if(|e| e.seq == at)) {
            (Some(x), Some(y)) if x == y => {}
            (Some(x), None) if x.kind == EventKind::Task && at < pruned_theirs => {
                pruned_there.push(at)
            }
            (None, Some(y)) if y.kind == EventKind::Task && at < pruned_mine => {}
            _ => return Histories::Differ { at },
        }
    }
}

fn invalid(build: &str, message: impl std::fmt::Display) -> Error {
    Error::InvalidSnapshot(format!("snapshot of build '{build}': {message}"))
}

impl Snapshot {
    /// Assemble a snapshot (the store reads the parts in one transaction).
    pub fn new(
        build: Build,
        plan: Plan,
        metadata: BTreeMap<String, MetaEntry>,
        events: Vec<Event>,
    ) -> Snapshot {
        let v2 = events.iter().any(|e| {
            e.inputs.is_some()
                || matches!(
                    e.kind,
                    EventKind::Force
                        | EventKind::Reset
                        | EventKind::Rerun
                        | EventKind::Prerequisite
                        | EventKind::Drift
                        | EventKind::Verified
                )
        });
        let v3 = events.iter().any(|e| e.kind == EventKind::Pruned);
        let v4 = events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Unverified | EventKind::Late));
        let v5 = events.iter().any(|e| e.count.is_some());
        let v6 = events.iter().any(|e| e.kind == EventKind::Output);
        let v7 = events.iter().any(|e| e.kind == EventKind::Resource);
        // A plan whose states wait for other builds: an older reader refuses the plan
        // (an unknown field) rather than run a state before its parents.
        // So does one whose inputs name other builds' outputs (`inputs.builds`).
        let v8 = plan.states.iter().any(|s| {
            !s.after.is_empty() || s.inputs.as_ref().is_some_and(|i| !i.builds.is_empty())
        }) || events
            .iter()
            .any(|e| e.after.is_some() || matches!(e.kind, EventKind::Revoke | EventKind::Reused));
        Snapshot {
            format: FORMAT.to_string(),
            schema_version: if v8 {
                8
            } else if v7 {
                7
            } else if v6 {
                6
            } else if v5 {
                5
            } else if v4 {
                4
            } else if v3 {
                3
            } else if v2 {
                2
            } else {
                1
            },
            build_id: build.build_id.clone(),
            lineage: build.lineage.clone(),
            serial: build.serial,
            plan: PlanEntry {
                name: plan.name.clone(),
                hash: plan.hash(),
                body: plan,
            },
            build,
            metadata,
            events,
            alerts: Vec::new(),
            signature: None,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a snapshot always serializes")
    }

    /// The bytes a signature covers: the snapshot without its signature.
    fn canonical(&self) -> Vec<u8> {
        if self.signature.is_none() {
            return self.to_json();
        }
        let mut bare = self.clone();
        bare.signature = None;
        bare.to_json()
    }

    /// The JSON to write to a remote: signed with the first key when there are keys.
    pub fn to_signed_json(&self, keys: Option<&Keys>) -> Vec<u8> {
        match keys {
            None => self.canonical(),
            Some(keys) => {
                let mut signed = self.clone();
                signed.signature = None;
                signed.signature = Some(keys.sign(&signed.to_json()));
                signed.to_json()
            }
        }
    }

    /// [`Snapshot::from_json`] for a snapshot read from a remote: with keys, an unsigned
    /// snapshot, one signed by an unknown key, or one whose signature does not match its
    /// content is refused. The signature is checked and dropped.
    pub fn from_signed_json(bytes: &[u8], keys: Option<&Keys>) -> Result<Snapshot> {
        let mut snap = Snapshot::from_json(bytes)?;
        if let Some(keys) = keys {
            let id = &snap.build_id;
            let refuse = |why: String| {
                Err(invalid(
                    id,
                    format!("{why}; it was not written by a holder of this process's snapshot keys (BUILDSTATE_SNAPSHOT_KEY), or was altered since. Nothing was written"),
                ))
            };
            match &snap.signature {
                None => return refuse("it is not signed".into()),
                Some(sig) if !keys.knows(&sig.key_id) => {
                    return refuse(format!(
                        "it is signed by key {}, which is not one of ours",
                        sig.key_id
                    ))
                }
                Some(sig) if !keys.verify(&snap.canonical(), sig) => {
                    return refuse("its signature does not match its content".into())
                }
                Some(_) => {}
            }
        }
        snap.signature = None;
        Ok(snap)
    }

    /// Parse and validate; see the module documentation.
    pub fn from_json(bytes: &[u8]) -> Result<Snapshot> {
        if bytes.len() > MAX_BYTES {
            return Err(Error::InvalidSnapshot(format!(
                "snapshot is {} bytes, more than the {MAX_BYTES} accepted",
                bytes.len()
            )));
        }
        // Read the version first, so that a newer snapshot is reported as such rather
        // than as an unknown field.
        #[derive(Deserialize)]
        struct Head {
            format: Option<String>,
            schema_version: Option<u32>,
        }
        let head: Head = serde_json::from_slice(bytes)
            .map_err(|e| Error::InvalidSnapshot(format!("not a snapshot (invalid JSON: {e})")))?;
        if head.format.as_deref() != Some(FORMAT) {
            return Err(Error::InvalidSnapshot(format!(
                "not a snapshot: the format field is {:?}, not \"{FORMAT}\"",
                head.format
            )));
        }
        match head.schema_version {
            Some(1..=SCHEMA_VERSION) => {}
            Some(v) if v > SCHEMA_VERSION => {
                return Err(Error::InvalidSnapshot(format!(
                    "snapshot schema version {v} is newer than this buildstate reads ({SCHEMA_VERSION}): upgrade buildstate"
                )))
            }
            other => {
                return Err(Error::InvalidSnapshot(format!(
                    "unknown snapshot schema version {other:?}"
                )))
            }
        }
        let mut snap: Snapshot = serde_json::from_slice(bytes)
            .map_err(|e| Error::InvalidSnapshot(format!("invalid snapshot: {e}")))?;
        if snap.schema_version < 5 {
            // Before version 5 a `pruned` event's count was only in its message.
            for e in snap.events.iter_mut() {
                if e.kind == EventKind::Pruned && e.count.is_none() {
                    e.count = e
                        .message
                        .as_deref()
                        .and_then(crate::model::legacy_pruned_count);
                }
            }
        }
        snap.validate()?;
        Ok(snap)
    }

    /// Check everything that does not need the local database.
    pub fn validate(&self) -> Result<()> {
        let id = &self.build_id;
        validate_build_id(id).map_err(|e| invalid(id, e))?;
        let b = &self.build;
        if b.build_id != *id || b.lineage != self.lineage || b.serial != self.serial {
            return Err(invalid(
                id,
                "the summary's build id, lineage or serial differs from the snapshot's",
            ));
        }
        if self.lineage.trim().is_empty() || self.lineage.len() > 64 {
            return Err(invalid(id, "the lineage is empty or too long"));
        }
        if b.lease_owner.is_some() != b.lease_expires_at.is_some() {
            return Err(invalid(id, "a lease needs both an owner and an expiry"));
        }
        // The plan: valid, and the hash is the body's.
        let plan = &self.plan.body;
        plan.validate()
            .map_err(|m| invalid(id, format!("plan: {m}")))?;
        let hash = plan.hash();
        if hash != self.plan.hash || hash != b.plan_hash || plan.name != self.plan.name {
            return Err(invalid(
                id,
                "the plan's hash or name does not match its body: the plan was altered",
            ));
        }
        for s in [b.current_state, b.active_state].into_iter().flatten() {
            if plan.state(s).is_none() {
                return Err(invalid(id, format!("state {s} is not in the plan")));
            }
        }
        // The history: seq 1..n, serials from 1 stepping by at most one up to `serial`;
        // numbers may be missing only before a `pruned` event (task results removed by
        // retention), and serials may jump only across such a gap.
        let Some(first) = self.events.first() else {
            return Err(invalid(id, "no events"));
        };
        if first.kind != EventKind::Init || first.serial != 1 || first.seq != 1 {
            return Err(invalid(
                id,
                "the first event is not the init at seq 1, serial 1",
            ));
        }
        let pruned_before = last_pruned(&self.events);
        let mut prev_serial = 0;
        let mut prev_seq = 0;
        // A build's time never runs backwards: every write is stamped no earlier than
        // the one before it. Task results carry the times Ansible gave them, so they
        // are not held to it; a step back of more than this is an edit, not a clock.
        let mut latest: Option<(u64, SystemTime)> = None;
        const BACKWARDS: std::time::Duration = std::time::Duration::from_secs(3600);
        for e in &self.events {
            if e.kind != EventKind::Task {
                if let Some((seq, at)) = latest {
                    if e.at + BACKWARDS < at {
                        return Err(invalid(
                            id,
                            format!(
                                "event {} is dated {}, before event {seq} ({}): a build's time never runs backwards",
                                e.seq,
                                crate::time::format(e.at),
                                crate::time::format(at)
                            ),
                        ));
                    }
                }
                if latest.is_none_or(|(_, at)| e.at > at) {
                    latest = Some((e.seq, e.at));
                }
            }
            let gap = e.seq > prev_seq + 1 && e.seq <= pruned_before;
            if e.seq != prev_seq + 1 && !gap {
                return Err(invalid(
                    id,
                    format!(
                        "event {} follows event {prev_seq}: events are numbered 1..n, with gaps only where a later `pruned` event removed task results",
                        e.seq
                    ),
                ));
            }
            prev_seq = e.seq;
            if e.serial < prev_serial || (e.serial > prev_serial + 1 && !gap) {
                return Err(invalid(
                    id,
                    format!(
                        "event {} has serial {} after {prev_serial}: serials must be contiguous",
                        e.seq, e.serial
                    ),
                ));
            }
            if e.state.is_some_and(|s| s > crate::plan::MAX_STATE) {
                return Err(invalid(id, format!("event {} names state > 100", e.seq)));
            }
            if let Some(m) = &e.inputs {
                if !matches!(e.kind, EventKind::Complete | EventKind::Reused) {
                    return Err(invalid(
                        id,
                        format!(
                            "event {} ({}) carries inputs; only a completion does",
                            e.seq, e.kind
                        ),
                    ));
                }
                m.validate()
                    .map_err(|why| invalid(id, format!("event {}: {why}", e.seq)))?;
            }
            let may_carry = matches!(e.kind, EventKind::Output | EventKind::Reused);
            if (e.kind == EventKind::Output && e.outputs.is_none())
                || (e.outputs.is_some() && !may_carry)
                || (may_carry && e.state.is_none())
            {
                return Err(invalid(
                    id,
                    format!(
                        "event {} ({}): an `output` event carries outputs (a `reused` one may), and only those, naming their state",
                        e.seq, e.kind
                    ),
                ));
            }
            if let Some(o) = &e.outputs {
                let pairs: Vec<(String, String)> =
                    o.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                crate::outputs::validate(&pairs)
                    .map_err(|why| invalid(id, format!("event {}: {why}", e.seq)))?;
            }
            if (e.kind == EventKind::Resource) != e.resource.is_some() {
                return Err(invalid(
                    id,
                    format!(
                        "event {} ({}): a `resource` event, and only one, says which resource",
                        e.seq, e.kind
                    ),
                ));
            }
            if let Some(op) = &e.resource {
                op.validate()
                    .map_err(|why| invalid(id, format!("event {}: {why}", e.seq)))?;
            }
            // Only an init event says what the build waits for, each entry BUILD:STATE
            // naming another build (a snapshot from elsewhere is checked as --after is).
            if let Some(after) = &e.after {
                if e.kind != EventKind::Init || after.len() > crate::deps::MAX_AFTER {
                    return Err(invalid(
                        id,
                        format!(
                            "event {} ({}): only an init event carries `after`, at most {} entries",
                            e.seq,
                            e.kind,
                            crate::deps::MAX_AFTER
                        ),
                    ));
                }
                for a in after {
                    let ok = crate::deps::parse_after(a).is_ok_and(|p| !p.build.contains('{'));
                    if !ok {
                        return Err(invalid(
                            id,
                            format!(
                                "event {}: after '{}' is not BUILD:STATE",
                                e.seq,
                                crate::model::echo(a)
                            ),
                        ));
                    }
                }
            }
            if (e.kind == EventKind::Pruned) != e.count.is_some() {
                return Err(invalid(
                    id,
                    format!(
                        "event {} ({}): a `pruned` event, and only one, carries a count of the task results it removed",
                        e.seq, e.kind
                    ),
                ));
            }
            prev_serial = e.serial;
        }
        if prev_serial != self.serial {
            return Err(invalid(
                id,
                format!(
                    "the last event has serial {prev_serial}, but the snapshot says {}",
                    self.serial
                ),
            ));
        }
        self.check_summary_against_events()?;
        self.check_alerts()?;
        for (k, m) in &self.metadata {
            validate_meta_key(k).map_err(|e| invalid(id, e))?;
            if m.serial == 0 || m.serial > self.serial {
                return Err(invalid(
                    id,
                    format!(
                        "metadata {k} has serial {} outside 1..={}",
                        m.serial, self.serial
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Alerts are sent to people: each must be about this build, of a known kind and
    /// state, with a payload of bounded size that names this build.
    fn check_alerts(&self) -> Result<()> {
        let id = &self.build_id;
        let mut seen = std::collections::BTreeSet::new();
        for a in &self.alerts {
            let bad = |why: &str| invalid(id, format!("alert {:?}: {why}", a.dedupe_key));
            if !a.dedupe_key.starts_with(&format!("{id}:")) || a.dedupe_key.len() > 256 {
                return Err(bad("its key is not this build's"));
            }
            if !seen.insert(&a.dedupe_key) {
                return Err(bad("listed twice"));
            }
            if a.kind.parse::<crate::policy::AlertKind>().is_err() {
                return Err(bad("unknown kind"));
            }
            if !matches!(a.state.as_str(), "pending" | "delivered" | "gave_up") {
                return Err(bad("unknown state"));
            }
            if a.payload.get("build_id").and_then(|b| b.as_str()) != Some(id.as_str())
                || a.payload.to_string().len() > MAX_ALERT_PAYLOAD
            {
                return Err(bad("its payload is not about this build, or too large"));
            }
        }
        Ok(())
    }

    /// Replay the events and refuse a summary that says something they do not: a
    /// hand-edited `status: completed` over a history that ends at `start 10` would
    /// otherwise send the next worker straight to publishing.
    ///
    /// Checked: the last completed state, the active state, the status, the attempt, and,
    /// for events written by a buildstate that records them (with a `write_id`), the next
    /// retry's time and the lease holder. The summary's lease may outlast the start that
    /// took it (heartbeats extend it), never the other way round.
    fn check_summary_against_events(&self) -> Result<()> {
        let id = &self.build_id;
        let plan = &self.plan.body;
        let b = &self.build;
        let mut want = Implied::default();
        for e in &self.events {
            want.fold(plan, &Facts::of(e))
                .map_err(|why| invalid(id, format!("event {} {why}", e.seq)))?;
        }
        let mut wrong = Vec::new();
        let opt = |s: Option<u8>| s.map_or("none".to_string(), |s| s.to_string());
        if b.current_state != want.current {
            wrong.push(format!(
                "last completed state {} (the events say {})",
                opt(b.current_state),
                opt(want.current)
            ));
        }
        if b.active_state != want.active {
            wrong.push(format!(
                "active state {} (the events say {})",
                opt(b.active_state),
                opt(want.active)
            ));
        }
        if let Some(status) = want.status.filter(|s| *s != b.status) {
            wrong.push(format!("status {} (the events say {status})", b.status));
        }
        if b.attempt != want.attempt {
            wrong.push(format!(
                "attempt {} (the events say {})",
                b.attempt, want.attempt
            ));
        }
        if let Some(next) = want.next {
            if b.next_attempt_at != next {
                let t = |t: Option<SystemTime>| t.map_or("none".into(), crate::time::format);
                wrong.push(format!(
                    "next retry {} (the events say {})",
                    t(b.next_attempt_at),
                    t(next)
                ));
            }
        }
        if let Some(lease) = &want.lease {
            let ok = match (lease, &b.lease_owner, b.lease_expires_at) {
                (None, None, None) => true,
                (Some((owner, until)), Some(o), Some(t)) => owner == o && t >= *until,
                _ => false,
            };
            if !ok {
                wrong.push(format!(
                    "lease holder {} (the events say {})",
                    b.lease_owner.as_deref().unwrap_or("none"),
                    lease.as_ref().map_or("none", |(o, _)| o.as_str())
                ));
            }
        }
        if !wrong.is_empty() {
            return Err(invalid(
                id,
                format!(
                    "the summary disagrees with the events: {}; it was altered, or written by a broken tool. Nothing was written",
                    wrong.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// The plan as stored in a database.
    pub fn plan(&self) -> &Plan {
        &self.plan.body
    }
}
