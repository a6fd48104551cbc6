//! Task results off the hot path. An Ansible run reports a result for every task on
//! every host; writing each in its own fsynced transaction would put a millisecond or two
//! on every task. A `TaskRecorder` hands them to a thread with its own connection, which
//! writes whatever has queued up in one transaction. State transitions stay synchronous:
//! callers `flush()` before one, so the history keeps its order. In remote mode each batch
//! is a remote-mode write like any other (pull, apply, compare-and-swap), so task results
//! never fork the local copy from the remote's.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use backon::{BlockingRetryable, ExponentialBuilder};

use crate::context::Actor;
use crate::model::{Ctx, TaskRecord, Transition};
use crate::store::Store;
use crate::{Error, Result};

/// At most this many results in one transaction.
const MAX_BATCH: usize = 512;
/// How long the writer gathers results before a write (unless flushed): Ansible reports a
/// result every few tens of milliseconds, and one transaction for a handful costs what one
/// costs for one.
const LINGER: Duration = Duration::from_millis(200);

/// How often a batch that met a busy database is tried again before its error is handed
/// to the caller (on top of each connection's own busy timeout).
const BUSY_RETRIES: usize = 6;

type Queued = (String, TaskRecord, Actor);

enum Msg {
    Task(Box<Queued>),
    Flush(Sender<()>),
}

pub struct TaskRecorder {
    tx: Option<Sender<Msg>>,
    worker: Option<JoinHandle<()>>,
    /// The first error the writer met, handed to the next caller.
    error: Arc<Mutex<Option<Error>>>,
}

impl TaskRecorder {
    /// Start the writer thread on its own connection to the database at `path` (and, in
    /// remote mode, its own client for `remote`).
    pub fn start(
        path: &std::path::Path,
        remote: Option<&crate::remote::Remote>,
        busy_timeout: Duration,
    ) -> Result<TaskRecorder> {
        let remote = remote.cloned();
        let store = crate::sync::Writer::new(Store::open_with(path, busy_timeout)?, remote);
        let (tx, rx) = mpsc::channel();
        let error = Arc::new(Mutex::new(None));
        let shared = Arc::clone(&error);
        let worker = std::thread::Builder::new()
            .name("buildstate-task-recorder".into())
            .spawn(move || write_loop(store, rx, shared))
            .map_err(|source| Error::Io {
                path: "task recorder thread".into(),
                source,
            })?;
        Ok(TaskRecorder {
            tx: Some(tx),
            worker: Some(worker),
            error,
        })
    }

    fn take_error(&self) -> Result<()> {
        match self.error.lock().expect("recorder error lock").take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn send(&self, msg: Msg) -> Result<()> {
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(msg).ok())
            .ok_or_else(|| Error::Corrupt("the task recorder thread has stopped".into()))
    }

    /// Queue one result. Returns at once; an earlier write's error is returned here.
    pub fn record(&self, build_id: &str, record: TaskRecord, actor: &Actor) -> Result<()> {
        self.take_error()?;
        self.send(Msg::Task(Box::new((
            build_id.to_string(),
            record,
            actor.clone(),
        ))))
    }

    /// Wait until everything queued so far is written.
    pub fn flush(&self) -> Result<()> {
        let (ack_tx, ack_rx) = mpsc::channel();
        self.send(Msg::Flush(ack_tx))?;
        let _ = ack_rx.recv();
        self.take_error()
    }
}

impl Drop for TaskRecorder {
    /// Writes what is queued, then stops the thread.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

fn write_loop(mut store: crate::sync::Writer, rx: Receiver<Msg>, error: Arc<Mutex<Option<Error>>>) {
    while let Ok(first) = rx.recv() {
        let mut batch: Vec<Queued> = Vec::new();
        let mut acks = Vec::new();
        let deadline = std::time::Instant::now() + LINGER;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Task(queued) => batch.push(*queued),
                Msg::Flush(ack) => acks.push(ack),
            }
            if batch.len() >= MAX_BATCH {
                break;
            }
            // After a flush request, take only what is already queued; otherwise linger.
            next = if acks.is_empty() {
                rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
                    .ok()
            } else {
                rx.try_recv().ok()
            };
        }
        // One transaction per run of results for the same build and actor.
        let mut rest = &batch[..];
        while let Some((build_id, _, actor)) = rest.first() {
            let n = rest
                .iter()
                .take_while(|(b, _, a)| b == build_id && a == actor)
                .count();
            let t = Transition::Tasks {
                records: rest[..n].iter().map(|(_, r, _)| r.clone()).collect(),
            };
            // A busy database is retried with backoff: a batch is not dropped because a
            // transition held the write lock for a while. Other errors (an unknown build)
            // will not go away by waiting and are handed to the caller.
            let written = (|| store.transition(build_id, &t, actor, &Ctx::live()))
                .retry(
                    ExponentialBuilder::default()
                        .with_min_delay(Duration::from_millis(50))
                        .with_max_delay(Duration::from_secs(2))
                        .with_max_times(BUSY_RETRIES),
                )
                .sleep(std::thread::sleep)
                .when(Error::is_busy)
                .call();
            if let Err(e) = written {
                error.lock().expect("recorder error lock").get_or_insert(e);
            }
            rest = &rest[n..];
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::InitRequest;
    use std::time::SystemTime;

    #[test]
    fn queued_results_are_written_in_order_with_their_own_times() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut store = Store::open(&path).unwrap();
        let actor = Actor::from_lookup("test", "test-host", 0, |_| None);
        let req = InitRequest {
            image: "x".into(),
            ..InitRequest::sample("b")
        };
        store.init(&req, &actor, SystemTime::now()).unwrap();
        let rec = TaskRecorder::start(&path, None, Duration::from_secs(5)).unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        for i in 0..1000u64 {
            let r = TaskRecord {
                state: Some(0),
                task: format!("task {i}"),
                host: "h".into(),
                status: "ok".into(),
                duration_ms: Some(i),
                message: None,
                at: t0 + Duration::from_millis(i),
            };
            rec.record("b", r, &actor).unwrap();
        }
        rec.flush().unwrap();
        let events = store.events("b").unwrap();
        assert_eq!(events.len(), 1001);
        for (i, e) in events[1..].iter().enumerate() {
            assert_eq!(
                e.message.as_deref(),
                Some(format!("ok on h: task {i}").as_str())
            );
            assert_eq!(e.at, t0 + Duration::from_millis(i as u64));
        }
        // Batched: far fewer writes than results, and the serial counts writes.
        let serial = store.build("b").unwrap().unwrap().serial;
        assert!(serial > 1 && serial <= 1001, "{serial}");
        assert_eq!(events.last().unwrap().serial, serial);

        // An error (unknown build) comes back on the next call.
        let r = TaskRecord {
            state: None,
            task: "t".into(),
            host: "h".into(),
            status: "ok".into(),
            duration_ms: None,
            message: None,
            at: t0,
        };
        rec.record("ghost", r.clone(), &actor).unwrap();
        assert!(matches!(rec.flush(), Err(Error::UnknownBuild(_))));
        // Dropping writes what is still queued.
        rec.record("b", r, &actor).unwrap();
        drop(rec);
        assert_eq!(store.events("b").unwrap().len(), 1002);
    }
}
