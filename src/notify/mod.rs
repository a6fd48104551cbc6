//! Alerts: what people must hear about, queued in an outbox (the `alerts` table) inside
//! the same transaction as the transition that causes them, and delivered from there
//! ([`slack`]), so that a Slack outage neither blocks a pipeline nor loses an alert.
//!
//! Which kinds alert is configured in the plan (`alerts = [...]` for the whole plan, or
//! on a state); by default all of them do.

pub mod slack;

use std::time::SystemTime;

pub use crate::alerts::{concourse_url, for_change, payload, tail, NewAlert};
pub use crate::policy::AlertKind;
use crate::store::outbox;
pub use crate::store::outbox::{any_due, claim, depth, enqueue, prune, settle, Claimed, Settle};
use crate::Result;

/// Remote mode: claim the oldest due alert that travels with its build (see
/// [`crate::store::Store`]'s `alerts.shared`), through the remote: the claim is written
/// into the build's shared record with compare-and-swap, so two machines delivering at
/// once never both hold it. Candidates come from the local copy, each refreshed first.
pub fn claim_shared(
    w: &mut crate::sync::Writer,
    worker: &str,
    now: SystemTime,
    until: SystemTime,
) -> Result<Option<Claimed>> {
    for (build, key) in outbox::shared_candidates(w.store(), now)? {
        let got = w.update_shared(&build, |conn| {
            let row = outbox::claim_by_key(conn, worker, &key, now, until)?;
            let changed = row.is_some();
            Ok((row, changed))
        });
        match got {
            Ok(Some(c)) => return Ok(Some(c)),
            Ok(None) => {}
            // One build that cannot be read (deleted, forged) must not hold up the others.
            Err(e) => eprintln!("buildstate: warning: alert {key} is not delivered now: {e}"),
        }
    }
    Ok(None)
}

/// [`settle`] for an alert claimed with [`claim_shared`]: written through the remote.
pub fn settle_shared(
    w: &mut crate::sync::Writer,
    alert: &Claimed,
    worker: &str,
    outcome: Settle<'_>,
    now: SystemTime,
) -> Result<()> {
    let Some(build) = alert.build_id.clone() else {
        return Ok(());
    };
    w.update_shared(&build, |conn| {
        let n = settle(conn, alert.id, worker, outcome, now)?;
        Ok(((), n == 1))
    })
}
