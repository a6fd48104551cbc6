//! buildstate: a durable, resumable record of where an image build is.
//!
//! A *build* walks through the numbered *states* of a [`plan::Plan`]. Every change is an
//! [`model::Event`] appended to a log that is never rewritten, and the build's summary row
//! is derived from it inside the same SQLite transaction ([`store::Store`]). The pure
//! function [`decide::decide`] tells a pipeline what to do next.
//!
//! The binaries in `bins/` are thin: they parse arguments, call this crate, and map the
//! result to an exit code from [`exit`]. All logic lives here so that the binaries, the
//! Python module and the Ansible callback agree by construction.

/// `as_str`, `Display` and `FromStr` for a fieldless enum stored as text. An unknown
/// name read back from the database is corruption (user input is parsed elsewhere).
macro_rules! text_enum {
    ($t:ty { $($v:ident => $s:literal),+ $(,)? }) => {
        impl $t {
            pub fn as_str(self) -> &'static str {
                match self { $(<$t>::$v => $s),+ }
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl std::str::FromStr for $t {
            type Err = $crate::Error;
            fn from_str(s: &str) -> $crate::Result<Self> {
                match s {
                    $($s => Ok(<$t>::$v),)+
                    other => Err($crate::Error::Corrupt(format!(
                        "unknown {} '{other}'", stringify!($t)
                    ))),
                }
            }
        }
    };
}

pub mod alerts;
#[cfg(feature = "cli")]
pub mod cli;
pub mod concourse;
pub mod context;
pub mod decide;
pub mod error;
pub mod exit;
pub mod inputs;
pub mod manifest;
pub mod model;
pub mod monitor;
pub mod notify;
pub mod plan;
pub mod policy;
pub mod redact;
pub mod remote;
pub mod report;
pub mod runner;
pub mod snapshot;
pub mod store;
pub mod sync;
pub mod time;
pub mod verify;

pub use error::{Error, Result};
