//! Sharing a build between machines: the remote (S3, Azure Blob, GCS, a folder) with
//! compare-and-swap writes, the [`sync::Writer`] that writes through it, and the
//! background workers that keep writing through it while a state runs (lease
//! renewal, task results).

mod journal;
mod lease;
pub mod objects;
mod recorder;
pub mod remote;
pub mod sync;

pub use journal::{Landing, Waiting};
pub use lease::LeaseKeeper;
pub use recorder::TaskRecorder;
