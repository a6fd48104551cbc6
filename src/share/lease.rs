//! Keeping a lease alive. A worker that holds a build's lease renews it every third of
//! its time to live from a thread with its own connection, so the renewal goes on while
//! the worker waits for its command (run-state) or runs a play (the Ansible callback).
//! When a renewal finds the lease gone (it expired and another worker took over), the
//! keeper says so through [`LeaseKeeper::lost`] and stops.
//!
//! In remote mode the keeper renews through the remote (see
//! [`crate::sync::Writer::renew_lease`]): other machines see the lease for as long as the
//! worker lives, and a worker whose lease was taken over or cancelled there learns it at
//! the next heartbeat.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::store::Store;
use crate::{Error, Result};

/// The longest a renewal waits for another writer: short, so that one slow writer costs
/// one heartbeat, not the lease.
pub fn renewal_wait(ttl: Duration) -> Duration {
    (ttl / 6).clamp(Duration::from_millis(50), Duration::from_secs(2))
}

pub struct LeaseKeeper {
    stop: Option<Sender<()>>,
    lost: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
}

impl LeaseKeeper {
    /// Start renewing `owner`'s lease on `attempt` of `build_id` every `ttl / 3`.
    pub fn start(
        path: &Path,
        remote: Option<&crate::remote::Remote>,
        build_id: &str,
        owner: &str,
        attempt: u32,
        ttl: Duration,
    ) -> Result<LeaseKeeper> {
        let wait = renewal_wait(ttl);
        let remote = remote.cloned();
        let mut store = crate::sync::Writer::new(Store::open_existing(path, wait)?, remote);
        let (stop, stopped) = mpsc::channel::<()>();
        let lost = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&lost);
        let (build_id, owner) = (build_id.to_string(), owner.to_string());
        let worker = std::thread::Builder::new()
            .name("buildstate-lease".into())
            .spawn(move || loop {
                match stopped.recv_timeout(ttl / 3) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                match store.renew_lease(&build_id, &owner, attempt, ttl, wait) {
                    Ok(true) => {}
                    Ok(false) => {
                        flag.store(true, Ordering::SeqCst);
                        return;
                    }
                    // A busy or briefly unavailable database delays one heartbeat; the
                    // time to live leaves room for two more.
                    Err(e) => eprintln!(
                        "buildstate: warning: could not renew the lease on build '{build_id}': {e}"
                    ),
                }
            })
            .map_err(|source| Error::Io {
                path: "lease keeper thread".into(),
                source,
            })?;
        Ok(LeaseKeeper {
            stop: Some(stop),
            lost,
            worker: Some(worker),
        })
    }

    /// A renewal found the lease gone: the worker should stop and record nothing more.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }
}

impl Drop for LeaseKeeper {
    /// Stops renewing (the lease itself is released by the worker's next transition, or
    /// runs out).
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}
