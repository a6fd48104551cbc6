//! The snapshot format (`crate::snapshot`) against histories the store really writes:
//! round trips, signatures, hostile edits, pruned copies, and a proptest of honest
//! histories. Here, in the store layer, because they need a store to write them.

use std::time::SystemTime;

use crate::context::Actor;
use crate::model::{Ctx, InitRequest, Reopen, Status, Transition};
use crate::plan::Plan;
use crate::policy::Category;
use crate::snapshot::*;
use crate::store::Store;
use crate::Error;

/// A store in a temporary directory holding build `b` (default plan), just created.
fn fresh(meta: Vec<(String, String)>, at: SystemTime) -> (tempfile::TempDir, Store, Actor) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("s.db")).unwrap();
    let actor = Actor::from_lookup("test", "test-host", 0, |_| None);
    let req = InitRequest {
        meta,
        ..InitRequest::sample("b")
    };
    store.init(&req, &actor, at).unwrap();
    (dir, store, actor)
}

fn sample() -> Snapshot {
    let (_dir, mut store, actor) = fresh(vec![("git".into(), "abc".into())], SystemTime::now());
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

#[test]
fn signed_snapshots_verify_only_with_a_known_key_and_unaltered_content() {
    let snap = sample();
    let old = Keys::parse("old-key-0123456789abcdef", "test").unwrap();
    let rotated =
        Keys::parse("new-key-0123456789abcdef, old-key-0123456789abcdef", "test").unwrap();
    let new_only = Keys::parse("new-key-0123456789abcdef", "test").unwrap();
    let signed = snap.to_signed_json(Some(&old));
    assert!(
        !String::from_utf8_lossy(&signed).contains("old-key"),
        "the key leaked"
    );
    // The signature is checked and dropped: what comes back is the snapshot itself.
    assert_eq!(
        Snapshot::from_signed_json(&signed, Some(&old)).unwrap(),
        snap
    );
    // Rotation: the new list still reads copies signed with the old key...
    assert_eq!(
        Snapshot::from_signed_json(&signed, Some(&rotated)).unwrap(),
        snap
    );
    // ...and signs with the new one, which the old key alone does not accept.
    let resigned = snap.to_signed_json(Some(&rotated));
    Snapshot::from_signed_json(&resigned, Some(&new_only)).unwrap();
    let refused = |bytes: &[u8], keys: &Keys, want: &str| {
        let e = Snapshot::from_signed_json(bytes, Some(keys)).unwrap_err();
        assert!(matches!(e, Error::InvalidSnapshot(_)), "{e:?}");
        assert!(e.to_string().contains(want), "{e} (wanted {want})");
    };
    refused(&resigned, &old, "not one of ours");
    refused(&snap.to_json(), &old, "not signed");
    // Content altered consistently (events and summary), signature kept: refused.
    let mut v: serde_json::Value = serde_json::from_slice(&signed).unwrap();
    let n = v["events"].as_array().unwrap().len();
    v["events"][n - 1]["message"] = "forged".into();
    refused(
        &serde_json::to_vec(&v).unwrap(),
        &old,
        "does not match its content",
    );
    let mut v: serde_json::Value = serde_json::from_slice(&signed).unwrap();
    v["signature"]["mac"] = "00".repeat(32).into();
    refused(
        &serde_json::to_vec(&v).unwrap(),
        &old,
        "does not match its content",
    );
    // Without keys, a signed snapshot reads as any other.
    assert_eq!(Snapshot::from_signed_json(&signed, None).unwrap(), snap);
    // Short or empty keys are refused.
    assert!(Keys::parse("short", "K")
        .unwrap_err()
        .to_string()
        .contains("at least 16"));
    assert!(Keys::parse(" , ", "K")
        .unwrap_err()
        .to_string()
        .contains("holds no key"));
}

/// Every summary field the events determine, edited alone in a real snapshot (with a
/// running state under a lease, one waiting for a retry and one blocked): each edit
/// is refused, and says which field disagrees.
#[test]
fn a_summary_edited_against_its_events_is_refused() {
    let (_dir, mut store, actor) = fresh(vec![], SystemTime::now());
    let leased = Ctx {
        owner: Some("w1"),
        lease_ttl: Some(std::time::Duration::from_secs(3600)),
        ..Ctx::live()
    };
    let mut snaps = Vec::new();
    let mut step = |t: Transition, ctx: &Ctx<'_>| {
        store.transition("b", &t, &actor, ctx).unwrap();
        snaps.push(store.snapshot("b").unwrap());
    };
    step(Transition::Start { state: 5 }, &leased); // running under w1's lease
    step(Transition::fail(5, "connection timed out"), &leased); // waiting
    step(
        persistent(5, "no such image"),
        &Ctx::at(SystemTime::now() + std::time::Duration::from_secs(86_400)),
    ); // blocked, once the retry is due
    let later = crate::time::format(SystemTime::now() + std::time::Duration::from_secs(7200));
    type Edit = (&'static str, Box<dyn Fn(&mut serde_json::Value)>);
    for snap in &snaps {
        let bytes = snap.to_json();
        Snapshot::from_json(&bytes).expect("the real snapshot is valid");
        let status = snap.build.status;
        let mut edits: Vec<Edit> = vec![
            (
                "last completed state",
                Box::new(|v| v["build"]["current_state"] = 95.into()),
            ),
            (
                "active state",
                Box::new(|v| v["build"]["active_state"] = 10.into()),
            ),
            ("attempt", Box::new(|v| v["build"]["attempt"] = 7.into())),
            (
                "next retry",
                Box::new({
                    let later = later.clone();
                    move |v| v["build"]["next_attempt_at"] = later.clone().into()
                }),
            ),
            (
                "lease holder",
                Box::new({
                    let later = later.clone();
                    move |v| {
                        v["build"]["lease_owner"] = "forger".into();
                        v["build"]["lease_expires_at"] = later.clone().into();
                    }
                }),
            ),
        ];
        for other in Status::ALL.iter().map(|s| s.as_str()) {
            if other != status.as_str() {
                edits.push((
                    "status",
                    Box::new(move |v| v["build"]["status"] = other.into()),
                ));
            }
        }
        if snap.build.lease_owner.is_some() {
            edits.push((
                "lease holder",
                Box::new(|v| {
                    v["build"]["lease_owner"] = serde_json::Value::Null;
                    v["build"]["lease_expires_at"] = serde_json::Value::Null;
                }),
            ));
        }
        if snap.build.next_attempt_at.is_some() {
            edits.push((
                "next retry",
                Box::new(|v| {
                    v["build"]["next_attempt_at"] = serde_json::Value::Null;
                }),
            ));
        }
        for (field, edit) in edits {
            let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            edit(&mut v);
            let err = Snapshot::from_json(&serde_json::to_vec(&v).unwrap())
                .expect_err(&format!("{field} edited on a {status} build was accepted"));
            let msg = err.to_string();
            assert!(
                msg.contains("disagrees with the events") && msg.contains(field),
                "{status}, {field}: {msg}"
            );
        }
    }
}

#[test]
fn a_build_without_new_events_is_still_written_as_version_1() {
    let t0 = SystemTime::now();
    let (_dir, mut store, actor) = fresh(vec![], t0);
    let ctx = Ctx::at(t0);
    store
        .transition("b", &Transition::complete(5), &actor, &ctx)
        .unwrap();
    assert_eq!(store.snapshot("b").unwrap().schema_version, 1);
    let force = Transition::Reopen {
        from: Some(5),
        reason: "again".into(),
        why: Reopen::Force,
    };
    store.transition("b", &force, &actor, &ctx).unwrap();
    let snap = store.snapshot("b").unwrap();
    assert_eq!(snap.schema_version, 2);
    let back = Snapshot::from_json(&snap.to_json()).unwrap();
    assert_eq!(back.build.current_state, Some(0));
    // A manifest on an event other than a completion is refused.
    let mut v: serde_json::Value = serde_json::from_slice(&snap.to_json()).unwrap();
    let last = v["events"].as_array().unwrap().len() - 1;
    v["events"][last]["inputs"] = serde_json::json!({"v": 1, "digest": "ab".repeat(32)});
    let err = Snapshot::from_json(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(err.to_string().contains("only a completion does"), "{err}");
    // So is a malformed one on a completion.
    v["events"][last]["inputs"] = serde_json::Value::Null;
    v["events"][last - 1]["inputs"] = serde_json::json!({"v": 1, "digest": "nothex"});
    let err = Snapshot::from_json(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(err.to_string().contains("inputs digest"), "{err}");
}

/// Build `b` with task results two days and one hour old (seq 3 and 4) and a meta
/// write (seq 5), then the old result pruned (seq 6); the snapshot before the prune.
fn pruned(store: &mut Store, actor: &Actor) -> Snapshot {
    let now = SystemTime::now();
    let task = |name: &str, age: u64| crate::model::TaskRecord {
        state: Some(5),
        task: name.into(),
        host: "h".into(),
        status: "ok".into(),
        duration_ms: None,
        message: None,
        at: now - std::time::Duration::from_secs(age),
    };
    for t in [
        Transition::Start { state: 5 },
        Transition::Tasks {
            records: vec![task("old", 2 * 86_400), task("new", 3600)],
        },
        Transition::Meta {
            pairs: vec![("k".into(), "v".into())],
        },
    ] {
        store.transition("b", &t, actor, &Ctx::live()).unwrap();
    }
    let before = store.snapshot("b").unwrap();
    let prune = Transition::PruneTasks {
        before: now - std::time::Duration::from_secs(86_400),
        count: 0,
    };
    store.transition("b", &prune, actor, &Ctx::live()).unwrap();
    before
}

#[test]
fn numbers_may_be_missing_only_where_task_results_were_pruned() {
    let (_dir, mut store, actor) = fresh(vec![], SystemTime::now());
    let full = pruned(&mut store, &actor).events;
    let snap = store.snapshot("b").unwrap();
    let seqs: Vec<u64> = snap.events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 4, 5, 6]);
    assert_eq!(snap.schema_version, 5);
    assert_eq!(snap.events[4].count, Some(1));
    assert_eq!(Snapshot::from_json(&snap.to_json()).unwrap(), snap);

    // Without the `pruned` event the same gap is refused, and so is a serial that
    // jumps where no number is missing.
    let mut v: serde_json::Value = serde_json::from_slice(&snap.to_json()).unwrap();
    v["events"][4]["kind"] = "meta".into();
    let err = Snapshot::from_json(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(err.to_string().contains("gaps only where"), "{err}");
    let mut v: serde_json::Value = serde_json::from_slice(&snap.to_json()).unwrap();
    v["events"][1]["serial"] = 3.into();
    let err = Snapshot::from_json(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(err.to_string().contains("contiguous"), "{err}");

    // Against the history before the prune: the missing task result is one the
    // pruned side removed, whichever side compares; a missing meta write (any kind
    // but a task result) is a different history.
    let agree = |pruned_there: Vec<u64>| Histories::Agree { pruned_there };
    assert_eq!(compare(&full, &snap.events), agree(vec![3]));
    assert_eq!(compare(&snap.events, &full), agree(vec![]));
    let mut hostile = snap.events.clone();
    hostile.remove(3); // the meta write, seq 5
    assert_eq!(compare(&full, &hostile), Histories::Differ { at: 5 });
}

/// Before version 5 a `pruned` event said how many task results it removed only in its
/// message: such a snapshot is read with that count. From version 5 the count is a
/// field that a `pruned` event, and only one, carries.
#[test]
fn a_pruned_count_is_typed_and_read_from_the_message_of_older_snapshots() {
    let (_dir, mut store, actor) = fresh(vec![], SystemTime::now());
    pruned(&mut store, &actor);
    let snap = store.snapshot("b").unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&snap.to_json()).unwrap();
    v["events"][4].as_object_mut().unwrap().remove("count");
    let err = Snapshot::from_json(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(err.to_string().contains("carries a count"), "{err}");
    v["schema_version"] = 3.into();
    let old = Snapshot::from_json(&serde_json::to_vec(&v).unwrap()).unwrap();
    assert_eq!(old.events[4].count, Some(1));
    let mut v: serde_json::Value = serde_json::from_slice(&snap.to_json()).unwrap();
    v["events"][3]["count"] = 7.into();
    let err = Snapshot::from_json(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(err.to_string().contains("carries a count"), "{err}");
}

/// Version 6: an `output` event, and only one, carries outputs, which are valid ones
/// (a snapshot read from a bucket is not trusted to have been checked when written).
#[test]
fn an_output_event_carries_valid_outputs() {
    let (_dir, mut store, actor) = fresh(vec![], SystemTime::now());
    for t in [
        Transition::Start { state: 5 },
        Transition::Output {
            state: None,
            pairs: vec![("ami_id".into(), "ami-0abc".into())],
            resources: vec![],
        },
    ] {
        store.transition("b", &t, &actor, &Ctx::live()).unwrap();
    }
    let snap = store.snapshot("b").unwrap();
    assert_eq!(snap.schema_version, 6);
    let good: serde_json::Value = serde_json::from_slice(&snap.to_json()).unwrap();
    let refused = |edit: &dyn Fn(&mut serde_json::Value), says: &str| {
        let mut v = good.clone();
        edit(&mut v);
        let err = Snapshot::from_json(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(err.to_string().contains(says), "{err}");
    };
    refused(
        &|v| {
            v["events"][2].as_object_mut().unwrap().remove("outputs");
        },
        "carries outputs",
    );
    refused(
        &|v| v["events"][1]["outputs"] = serde_json::json!({"a": "b"}),
        "carries outputs",
    );
    refused(
        &|v| v["events"][2]["outputs"] = serde_json::json!({"1x": "b"}),
        "invalid output key",
    );
    refused(
        &|v| v["events"][2]["outputs"] = serde_json::json!({"k": "AKIAIOSFODNN7EXAMPLE"}),
        "looks like a secret",
    );
}

#[test]
fn a_remote_copy_that_pruned_more_than_task_results_is_a_divergence() {
    let (_dir, mut store, actor) = fresh(vec![], SystemTime::now());
    let before = pruned(&mut store, &actor);
    let dir = tempfile::tempdir().unwrap();
    let mut other = Store::open(&dir.path().join("other.db")).unwrap();
    other.import(&before, false).unwrap();
    // A copy that also dropped the meta write (which leaves the summary as it was):
    // valid on its own, but not this build's history. Refused, nothing written.
    let mut hostile = store.snapshot("b").unwrap();
    hostile.events.remove(3);
    hostile.validate().unwrap();
    let err = other.import(&hostile, false).unwrap_err();
    assert!(
        matches!(&err, Error::Diverged(m) if m.contains("first different event: seq 5")),
        "{err:?}"
    );
    assert_eq!(other.events("b").unwrap(), before.events);
    // The honest copy fast-forwards: the old result leaves, the prune arrives.
    let honest = store.snapshot("b").unwrap();
    other.import(&honest, false).unwrap();
    assert_eq!(other.snapshot("b").unwrap(), honest);
}

fn persistent(state: u8, message: &str) -> Transition {
    Transition::Fail {
        state,
        message: message.into(),
        category: Some(Category::Persistent),
        exit_code: Some(1),
        signal: None,
        timed_out: false,
    }
}

/// Random sequences of transitions, through a real store: after every accepted one,
/// the build's snapshot validates (the replay never refuses an honest history).
fn honest_history(ops: &[(u8, u8)]) {
    let t0 = SystemTime::now();
    let (_dir, mut store, actor) = fresh(vec![], t0);
    let plan = Plan::default_plan();
    let ids: Vec<u8> = plan.states.iter().map(|s| s.id).collect();
    for (i, (op, pick)) in ops.iter().enumerate() {
        let state = ids[*pick as usize % ids.len()];
        let owner = if pick % 2 == 0 { "w1" } else { "w2" };
        let ctx = Ctx {
            owner: Some(owner),
            lease_ttl: (op % 3 != 0).then_some(std::time::Duration::from_secs(600)),
            // Hours apart, so leases expire and retries come due.
            ..Ctx::at(t0 + std::time::Duration::from_secs(3600 * (i as u64 + 1)))
        };
        let t = match op % 19 {
            0 | 1 => Transition::Start { state },
            2 if pick % 2 == 1 => Transition::Complete {
                state,
                inputs: Some(Box::new(crate::manifest::Manifest {
                    v: crate::manifest::MANIFEST_VERSION,
                    digest: "ab".repeat(32),
                    globs: vec!["roles/**".into()],
                    files: [("roles/a.yml".to_string(), "0123456789abcdef".to_string())].into(),
                    env: [("V".to_string(), "unset".to_string())].into(),
                    meta: Default::default(),
                    values: None,
                    builds: Default::default(),
                })),
            },
            2 => Transition::complete(state),
            3 => Transition::fail(state, "connection refused"),
            4 => persistent(state, "no such file"),
            5 => Transition::Interrupt {
                state,
                signal: "SIGTERM".into(),
            },
            6 => Transition::Retry {
                state,
                reason: "r".into(),
            },
            7 => Transition::Skip {
                state,
                reason: "s".into(),
            },
            8 => Transition::Rollback {
                to: None,
                reason: "back".into(),
            },
            9 => Transition::Meta {
                pairs: vec![("k".into(), format!("{i}"))],
            },
            10 => Transition::Cancel {
                reason: "stop".into(),
            },
            11 => Transition::Reopen {
                from: (pick % 3 != 0).then_some(state),
                reason: "again".into(),
                why: [Reopen::Force, Reopen::Stale][*pick as usize % 2],
            },
            12 => Transition::Reopen {
                from: None,
                reason: "over".into(),
                why: Reopen::Reset,
            },
            13 => Transition::Unmet {
                state,
                message: "no token".into(),
            },
            14 => Transition::Tasks {
                records: vec![crate::model::TaskRecord {
                    state: Some(state),
                    task: "t".into(),
                    host: "h".into(),
                    status: "ok".into(),
                    duration_ms: None,
                    message: None,
                    at: ctx.now - std::time::Duration::from_secs(3600 * *pick as u64),
                }],
            },
            15 => Transition::PruneTasks {
                before: ctx.now - std::time::Duration::from_secs(3600 * *pick as u64),
                count: 0,
            },
            17 => Transition::Resource {
                state: (pick % 2 == 0).then_some(state),
                op: crate::resources::Op::Add {
                    rtype: "key-pair".into(),
                    id: format!("kp-{pick}"),
                    props: Default::default(),
                    cleanup: Some("true".into()),
                    check: None,
                },
            },
            16 => Transition::Output {
                state: (pick % 2 == 0).then_some(state),
                pairs: vec![("k".into(), format!("v{pick}"))],
                resources: vec![],
            },
            _ => Transition::Verified {
                results: vec![crate::model::VerifyResult {
                    state,
                    ok: pick % 3 == 0,
                    ran: pick % 3 != 2,
                    since: 1,
                    message: "v".into(),
                    duration_ms: 1,
                }],
            },
        };
        if store.transition("b", &t, &actor, &ctx).is_ok() {
            let snap = store.snapshot("b").unwrap();
            if let Err(e) = Snapshot::from_json(&snap.to_json()) {
                panic!("after {t:?}: {e}");
            }
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    #[test]
    fn every_honest_history_replays(ops in proptest::collection::vec((0u8..=255, 0u8..=255), 1..40)) {
        honest_history(&ops);
    }

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
