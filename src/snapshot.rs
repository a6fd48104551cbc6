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
//! that step by at most one from 1 to the snapshot's serial, and that the summary agrees
//! with the history. Nothing is written before all of it holds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{validate_build_id, validate_meta_key, Build, Event, EventKind};
use crate::plan::Plan;
use crate::{Error, Result};

/// The value of the `format` field.
pub const FORMAT: &str = "buildstate-snapshot";
/// The snapshot schema version this buildstate writes and reads.
pub const SCHEMA_VERSION: u32 = 1;
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
        Snapshot {
            format: FORMAT.to_string(),
            schema_version: SCHEMA_VERSION,
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
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a snapshot always serializes")
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
            Some(SCHEMA_VERSION) => {}
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
        let snap: Snapshot = serde_json::from_slice(bytes)
            .map_err(|e| Error::InvalidSnapshot(format!("invalid snapshot: {e}")))?;
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
        // The history: seq 1..n, serials from 1 stepping by at most one up to `serial`.
        let Some(first) = self.events.first() else {
            return Err(invalid(id, "no events"));
        };
        if first.kind != EventKind::Init || first.serial != 1 {
            return Err(invalid(id, "the first event is not the init at serial 1"));
        }
        let mut prev_serial = 0;
        for (i, e) in self.events.iter().enumerate() {
            if e.seq != i as u64 + 1 {
                return Err(invalid(
                    id,
                    format!(
                        "event {} has seq {}: events must be numbered 1..n",
                        i + 1,
                        e.seq
                    ),
                ));
            }
            if e.serial < prev_serial || e.serial > prev_serial + 1 {
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

    /// The plan as stored in a database.
    pub fn plan(&self) -> &Plan {
        &self.plan.body
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Actor;
    use crate::model::{Ctx, InitRequest, Transition};
    use crate::store::Store;
    use std::time::SystemTime;

    fn sample() -> Snapshot {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s.db")).unwrap();
        let actor = Actor::from_env("test");
        let req = InitRequest {
            build_id: "b".into(),
            cloud: "aws".into(),
            image: "rhel9".into(),
            plan: Plan::default_plan(),
            meta: vec![("git".into(), "abc".into())],
        };
        store.init(&req, &actor, SystemTime::now()).unwrap();
        for t in [
            Transition::Start { state: 5 },
            Transition::fail(5, "it's broken: 'quotes'"),
        ] {
            store.transition("b", &t, &actor, &Ctx::live()).unwrap();
        }
        store.snapshot("b").unwrap()
    }

    #[test]
    fn a_snapshot_round_trips_and_hostile_edits_are_refused() {
        let snap = sample();
        let bytes = snap.to_json();
        assert_eq!(Snapshot::from_json(&bytes).unwrap(), snap);

        let edit = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            f(&mut v);
            let err = Snapshot::from_json(&serde_json::to_vec(&v).unwrap()).unwrap_err();
            assert!(matches!(err, Error::InvalidSnapshot(_)), "{err:?}");
            err.to_string()
        };
        type Edit<'a> = (&'a dyn Fn(&mut serde_json::Value), &'a str);
        let cases: Vec<Edit> = vec![
            (&|v| v["format"] = "zip".into(), "not a snapshot"),
            (
                &|v| v["schema_version"] = 9.into(),
                "newer than this buildstate",
            ),
            (&|v| v["serial"] = 7.into(), "differs from the snapshot's"),
            (
                &|v| v["plan"]["body"]["state"][1]["name"] = "evil".into(),
                "plan was altered",
            ),
            (&|v| v["events"][1]["seq"] = 5.into(), "numbered 1..n"),
            (&|v| v["events"][2]["serial"] = 9.into(), "contiguous"),
            (
                &|v| {
                    v["events"].as_array_mut().unwrap().pop();
                },
                "the last event has serial",
            ),
            (
                &|v| v["build"]["lease_owner"] = "x".into(),
                "both an owner and an expiry",
            ),
            (&|v| v["build_id"] = "../etc".into(), "invalid build id"),
            (&|v| v["metadata"]["git"]["serial"] = 99.into(), "outside"),
            (&|v| v["extra"] = 1.into(), "unknown field"),
        ];
        for (f, want) in cases {
            let msg = edit(f);
            assert!(msg.contains(want), "{msg} (wanted {want})");
        }
        assert!(Snapshot::from_json(b"{not json").is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// No input makes the importer panic: arbitrary bytes...
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let _ = Snapshot::from_json(&bytes);
        }

        /// ...and a valid snapshot with bytes flipped or cut anywhere.
        #[test]
        fn mutated_snapshots_never_panic(cut in 0usize..4096, pos in 0usize..4096, byte in proptest::prelude::any::<u8>()) {
            let mut bytes = SAMPLE.with(|s| s.clone());
            if !bytes.is_empty() {
                let p = pos % bytes.len();
                bytes[p] = byte;
                bytes.truncate(bytes.len() - cut % bytes.len());
            }
            let _ = Snapshot::from_json(&bytes);
        }
    }

    thread_local! {
        static SAMPLE: Vec<u8> = sample().to_json();
    }
}
