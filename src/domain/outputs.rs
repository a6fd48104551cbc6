//! What a state produced: outputs (`update-state BUILD output KEY=VALUE`), as `output`
//! events, and which of them are current.
//!
//! An output belongs to the state that recorded it. A new attempt of that state (a
//! retry, a takeover, a rerun), a force, reset or rerun from it or from an earlier
//! state, and a rollback to an earlier state supersede it; the events stay in the
//! history. Later states see the current ones: a key recorded by two states has the
//! later state's value.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;

use crate::model::{validate_meta_key, Event, EventKind};
use crate::{Error, Result};

/// The largest value an output may hold. Every later state's command gets it in its
/// environment, where Linux allows 128 KiB per variable; a bigger result belongs in a
/// file or an object store, recorded by its path or URL.
pub const MAX_VALUE: usize = 64 * 1024;

/// The most outputs one write records (a Packer manifest with many builds fits).
pub const MAX_PER_WRITE: usize = 256;

/// The most bytes a build's current outputs take in a command's environment
/// (`BUILDSTATE_OUTPUT_<KEY>=VALUE` each): Linux fits the environment and the arguments
/// of a command in its `ARG_MAX` (2 MiB with the default 8 MiB stack), so the outputs
/// leave the other half to the rest.
pub const MAX_TOTAL: usize = 1024 * 1024;

/// One current output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Output {
    pub value: String,
    /// The state that recorded it.
    pub state: u8,
    /// That state's attempt when it was recorded (`None`: recorded while no attempt of
    /// it ran, e.g. for a completed or skipped state).
    pub attempt: Option<u32>,
    /// The `seq` of its event.
    pub seq: u64,
    #[serde(with = "crate::time::rfc3339")]
    pub at: SystemTime,
}

/// One `KEY=VALUE` argument as a pair; the key is checked with the rest by [`validate`].
pub fn parse_pair(text: &str) -> Result<(String, String)> {
    let Some((k, v)) = text.split_once('=') else {
        return Err(Error::InvalidInput(format!(
            "invalid output '{}': write it as KEY=VALUE",
            crate::model::echo(text)
        )));
    };
    Ok((k.to_string(), v.to_string()))
}

/// Check the pairs one write records: keys as metadata keys are (they become
/// `BUILDSTATE_OUTPUT_<KEY>`), values UTF-8 text of at most [`MAX_VALUE`] bytes that
/// holds no secret. A secret is refused rather than redacted: a later state would get
/// the redaction marker instead of the value it asked for.
pub fn validate(pairs: &[(String, String)]) -> Result<()> {
    if pairs.is_empty() {
        return Err(Error::InvalidInput(
            "no outputs given: pass one or more KEY=VALUE, or --packer-manifest FILE".into(),
        ));
    }
    if pairs.len() > MAX_PER_WRITE {
        return Err(Error::InvalidInput(format!(
            "{} outputs in one write, more than the {MAX_PER_WRITE} accepted: record them in several",
            pairs.len()
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (k, v) in pairs {
        validate_meta_key(k).map_err(|_| {
            Error::InvalidInput(format!(
                "invalid output key '{}': use 1 to 64 letters, digits or '_', not starting with a digit (it becomes BUILDSTATE_OUTPUT_<KEY>)",
                crate::model::echo(k)
            ))
        })?;
        if !seen.insert(k.as_str()) {
            return Err(Error::InvalidInput(format!(
                "output '{k}' is given twice: give each key once"
            )));
        }
        if v.len() > MAX_VALUE {
            return Err(Error::InvalidInput(format!(
                "output '{k}' is {} bytes, more than the {MAX_VALUE} an output may hold (every later state gets it in its environment): store the value in a file or an object store and record its path or URL",
                v.len()
            )));
        }
        if v.contains('\0') {
            return Err(Error::InvalidInput(format!(
                "output '{k}' holds a NUL byte, which no environment variable can: record text"
            )));
        }
        if crate::redact::redact(v) != *v {
            return Err(Error::InvalidInput(format!(
                "output '{k}' looks like a secret (a redaction rule matches it): outputs reach every later state's environment, snapshots and logs; record where the secret is kept (a secret manager's path), not the secret"
            )));
        }
    }
    Ok(())
}

/// Refuse a write of `new` outputs that would bring the build's current ones (`current`,
/// by key, before it) over [`MAX_TOTAL`] bytes of environment.
pub fn check_total(current: &BTreeMap<String, String>, new: &[(String, String)]) -> Result<()> {
    let size = |k: &str, v: &str| "BUILDSTATE_OUTPUT_".len() + k.len() + 1 + v.len() + 1;
    let mut total: usize = current
        .iter()
        .filter(|(k, _)| !new.iter().any(|(n, _)| n == *k))
        .map(|(k, v)| size(k, v))
        .sum();
    total += new.iter().map(|(k, v)| size(k, v)).sum::<usize>();
    if total > MAX_TOTAL {
        return Err(Error::InvalidInput(format!(
            "with these, the build's current outputs would take {total} bytes of every later state's environment, more than the {MAX_TOTAL} allowed (a command's environment and arguments share about 2 MiB on Linux): store big values in a file or an object store and record their path or URL; nothing was written"
        )));
    }
    Ok(())
}

/// The current outputs of a build, by key, from its history (oldest first). Only
/// `output`, `reused`, `start`, `force`, `reset`, `rerun`, `rollback` and `revoke` events matter
/// ([`RELEVANT`]); others are passed over.
pub fn current(events: &[Event]) -> BTreeMap<String, Output> {
    let mut by_state: BTreeMap<u8, BTreeMap<String, Output>> = BTreeMap::new();
    for e in events {
        match (e.kind, e.state) {
            (EventKind::Output | EventKind::Reused, Some(s)) => {
                let mine = by_state.entry(s).or_default();
                for (k, v) in e.outputs.iter().flatten() {
                    mine.insert(
                        k.clone(),
                        Output {
                            value: v.clone(),
                            state: s,
                            attempt: e.attempt,
                            seq: e.seq,
                            at: e.at,
                        },
                    );
                }
            }
            (EventKind::Start, Some(s)) => {
                by_state.remove(&s);
            }
            (EventKind::Force | EventKind::Rerun, Some(from)) => {
                by_state.retain(|s, _| *s < from);
            }
            (EventKind::Force | EventKind::Rerun | EventKind::Reset, _) => by_state.clear(),
            (EventKind::Rollback, Some(to)) => by_state.retain(|s, _| *s <= to),
            (EventKind::Revoke, _) => by_state.clear(),
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    for (_, outputs) in by_state {
        out.extend(outputs);
    }
    out
}

/// The event kinds [`current`] reads.
pub const RELEVANT: &[EventKind] = &[
    EventKind::Output,
    EventKind::Start,
    EventKind::Force,
    EventKind::Reset,
    EventKind::Rerun,
    EventKind::Rollback,
    EventKind::Revoke,
    EventKind::Reused,
];

/// The revocation that stands (its reason), if any: the last `revoke` with no `start`,
/// `output` or `reused` after it, i.e. before the build made anything new. `events` as
/// for [`current`].
pub fn revoked(events: &[Event]) -> Option<&Event> {
    let last = events.iter().rev().find(|e| {
        matches!(
            e.kind,
            EventKind::Revoke | EventKind::Start | EventKind::Output | EventKind::Reused
        )
    })?;
    (last.kind == EventKind::Revoke).then_some(last)
}

/// The values alone, by key.
pub fn values(outputs: &BTreeMap<String, Output>) -> BTreeMap<String, String> {
    outputs
        .iter()
        .map(|(k, o)| (k.clone(), o.value.clone()))
        .collect()
}

/// The variables a state's command gets: `BUILDSTATE_OUTPUT_<KEY>` for each current one.
pub fn env(outputs: &BTreeMap<String, String>) -> Vec<(String, String)> {
    outputs
        .iter()
        .map(|(k, v)| (format!("BUILDSTATE_OUTPUT_{k}"), v.clone()))
        .collect()
}

/// What a Packer `manifest.json` gives: outputs, and each artifact as a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackerRun {
    pub outputs: Vec<(String, String)>,
    /// One `add` per build of the run that made something (all but the `null`
    /// builder's): type the builder type, id the artifact id, properties its `name`,
    /// `packer_run_uuid` and `files` (the names of its files, joined by `,`, when it
    /// lists some); no cleanup or check (the caller may give them).
    pub artifacts: Vec<crate::resources::Op>,
}

/// The outputs a Packer `manifest.json` (its `manifest` post-processor) gives, for the
/// builds of its last run (`last_run_uuid`; earlier runs in the same file are history):
/// for each, `<name>_artifact_id`, `<name>_builder_type` and `<name>_<key>` of its
/// `custom_data`, the name made a key (characters other than letters, digits and `_`
/// become `_`). A run of one build also gives them without the prefix (`artifact_id`).
/// And its artifacts, as resources ([`PackerRun::artifacts`]).
pub fn from_packer_manifest(bytes: &[u8], origin: &str) -> Result<PackerRun> {
    #[derive(serde::Deserialize)]
    struct Manifest {
        builds: Vec<PackerBuild>,
        last_run_uuid: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct PackerBuild {
        name: String,
        builder_type: String,
        artifact_id: String,
        packer_run_uuid: Option<String>,
        #[serde(default)]
        custom_data: Option<BTreeMap<String, String>>,
        #[serde(default)]
        files: Option<Vec<PackerFile>>,
    }
    #[derive(serde::Deserialize)]
    struct PackerFile {
        name: String,
    }
    let bad = |why: String| {
        Error::InvalidInput(format!(
            "{origin} is not a Packer manifest ({why}): pass the file the `manifest` post-processor writes"
        ))
    };
    let m: Manifest = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    let run: Vec<&PackerBuild> = m
        .builds
        .iter()
        .filter(|b| m.last_run_uuid.is_none() || b.packer_run_uuid == m.last_run_uuid)
        .collect();
    if run.is_empty() {
        return Err(bad("no build of its last run".into()));
    }
    let key = |text: &str| {
        let mut k: String = text
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        if k.starts_with(|c: char| c.is_ascii_digit()) {
            k.insert(0, '_');
        }
        k
    };
    let mut pairs = Vec::new();
    let mut artifacts = Vec::new();
    for b in &run {
        if b.builder_type != "null" && !b.artifact_id.is_empty() {
            let mut props = BTreeMap::from([("name".to_string(), b.name.clone())]);
            if let Some(u) = &b.packer_run_uuid {
                props.insert("packer_run_uuid".to_string(), u.clone());
            }
            let files: Vec<&str> = b.files.iter().flatten().map(|f| f.name.as_str()).collect();
            if !files.is_empty() {
                props.insert("files".to_string(), files.join(","));
            }
            artifacts.push(crate::resources::Op::Add {
                rtype: b.builder_type.clone(),
                id: b.artifact_id.clone(),
                props,
                cleanup: None,
                check: None,
            });
        }
        let mut fields = vec![
            ("artifact_id".to_string(), b.artifact_id.clone()),
            ("builder_type".to_string(), b.builder_type.clone()),
        ];
        for (k, v) in b.custom_data.iter().flatten() {
            fields.push((key(k), v.clone()));
        }
        let name = key(&b.name);
        for (k, v) in &fields {
            pairs.push((format!("{name}_{k}"), v.clone()));
        }
        if run.len() == 1 {
            pairs.extend(fields);
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some((k, _)) = pairs.iter().find(|(k, _)| !seen.insert(k.clone())) {
        return Err(bad(format!(
            "two of its builds give output '{k}': name the builds apart"
        )));
    }
    Ok(PackerRun {
        outputs: pairs,
        artifacts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Actor;

    fn ev(seq: u64, kind: EventKind, state: Option<u8>, outputs: &[(&str, &str)]) -> Event {
        Event {
            seq,
            serial: seq,
            at: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(seq),
            kind,
            state,
            attempt: None,
            message: None,
            category: None,
            exit_code: None,
            duration_ms: None,
            actor: Actor {
                host: "h".into(),
                user: "u".into(),
                pid: 1,
                tool: "t".into(),
                context: BTreeMap::new(),
            },
            owner: None,
            write_id: None,
            until: None,
            inputs: None,
            count: None,
            outputs: (kind == EventKind::Output).then(|| {
                outputs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            }),
            resource: None,
            after: None,
        }
    }

    fn now(events: &[Event]) -> Vec<(String, String, u8)> {
        current(events)
            .into_iter()
            .map(|(k, o)| (k, o.value, o.state))
            .collect()
    }

    fn kv(k: &str, v: &str, s: u8) -> (String, String, u8) {
        (k.into(), v.into(), s)
    }

    #[test]
    fn a_new_attempt_of_a_state_supersedes_its_outputs_and_later_states_win_a_key() {
        use EventKind::*;
        let mut h = vec![
            ev(1, Init, None, &[]),
            ev(2, Start, Some(5), &[]),
            ev(
                3,
                Output,
                Some(5),
                &[("ami_id", "ami-1"), ("region", "us-east-1")],
            ),
            ev(4, Start, Some(5), &[]), // attempt 2: attempt 1's are gone
            ev(5, Output, Some(5), &[("ami_id", "ami-2")]),
            ev(6, Start, Some(10), &[]),
            ev(7, Output, Some(10), &[("ami_id", "ami-3"), ("vm", "vm-1")]),
        ];
        assert_eq!(now(&h), [kv("ami_id", "ami-3", 10), kv("vm", "vm-1", 10)]);
        // A rollback to 5 supersedes 10's; 5's ami-2 is current again.
        h.push(ev(8, Rollback, Some(5), &[]));
        assert_eq!(now(&h), [kv("ami_id", "ami-2", 5)]);
        // A force from 5 supersedes 5's and every later state's.
        h.push(ev(9, Output, Some(0), &[("ks", "a")]));
        h.push(ev(10, Force, Some(5), &[]));
        assert_eq!(now(&h), [kv("ks", "a", 0)]);
        // A rerun of everything (no state), and a reset, supersede all.
        h.push(ev(11, Rerun, None, &[]));
        assert_eq!(now(&h), []);
        h.push(ev(12, Output, Some(0), &[("ks", "b")]));
        h.push(ev(13, Reset, None, &[]));
        assert_eq!(now(&h), []);
    }

    #[test]
    fn outputs_are_refused_before_anything_is_written_when_they_cannot_be_used() {
        let p = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        assert!(validate(&p("ami_id", "it's ami-0abc\n")).is_ok());
        for (pairs, says) in [
            (vec![], "no outputs given"),
            (p("9lives", "x"), "invalid output key"),
            (p("a-b", "x"), "invalid output key"),
            (p("k", &"x".repeat(MAX_VALUE + 1)), "more than the 65536"),
            (p("k", "a\0b"), "NUL"),
            (p("k", "AKIAIOSFODNN7EXAMPLE"), "looks like a secret"),
            ([p("k", "1"), p("k", "2")].concat(), "given twice"),
        ] {
            let err = validate(&pairs).unwrap_err();
            assert!(err.to_string().contains(says), "{err}");
            assert_eq!(err.exit_code(), crate::exit::INVALID_INPUT);
        }
    }

    #[test]
    fn the_current_outputs_fit_in_an_environment() {
        let big = "x".repeat(MAX_VALUE);
        let current: BTreeMap<String, String> =
            (0..14).map(|i| (format!("k{i}"), big.clone())).collect();
        check_total(&current, &[("k14".into(), big.clone())]).unwrap();
        // Replacing a value counts it once.
        check_total(&current, &[("k0".into(), big.clone())]).unwrap();
        let err = check_total(
            &current,
            &[("k14".into(), big.clone()), ("k15".into(), big)],
        )
        .unwrap_err();
        assert!(err.to_string().contains("more than the 1048576"), "{err}");
        assert_eq!(err.exit_code(), crate::exit::INVALID_INPUT);
    }

    #[test]
    fn a_packer_manifest_gives_its_last_runs_artifacts() {
        let m = br#"{"builds": [
            {"name": "old", "builder_type": "null", "build_time": 1, "files": null,
             "artifact_id": "Null", "packer_run_uuid": "r1", "custom_data": null},
            {"name": "rhel-9.aws", "builder_type": "amazon-ebs", "build_time": 2, "files": null,
             "artifact_id": "us-east-1:ami-0abc", "packer_run_uuid": "r2",
             "custom_data": {"git-sha": "1a2b"}}
        ], "last_run_uuid": "r2"}"#;
        let run = from_packer_manifest(m, "manifest.json").unwrap();
        let pairs = run.outputs;
        let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "rhel_9_aws_artifact_id",
                "rhel_9_aws_builder_type",
                "rhel_9_aws_git_sha",
                "artifact_id",
                "builder_type",
                "git_sha"
            ]
        );
        assert_eq!(pairs[3].1, "us-east-1:ami-0abc");
        validate(&pairs).unwrap();
        // The artifact is a resource; the old run's null build made nothing.
        assert_eq!(run.artifacts.len(), 1);
        let crate::resources::Op::Add {
            rtype, id, props, ..
        } = &run.artifacts[0]
        else {
            panic!("{:?}", run.artifacts)
        };
        assert_eq!(
            (rtype.as_str(), id.as_str(), props["name"].as_str()),
            ("amazon-ebs", "us-east-1:ami-0abc", "rhel-9.aws")
        );
        run.artifacts[0].validate().unwrap();
        let err = from_packer_manifest(b"{\"builds\": 3}", "m.json").unwrap_err();
        assert!(
            err.to_string().contains("m.json is not a Packer manifest"),
            "{err}"
        );
    }
}
