//! buildstate-core: the pure layer of buildstate (src/domain/), with the error type
//! and the exit codes every layer shares (src/error.rs, src/exit.rs).
//!
//! Its own crate so that the compiler holds what tests/it/layers.rs only scans: it
//! depends on no SQLite, object store, HTTP client, async runtime, libc or temporary
//! files (`cargo tree -p buildstate-core` in scripts/test). The one exception is opt-in:
//! the `sqlite` feature, which the state crate turns on, converts rusqlite's error into
//! [`Error`]. The files stay where they were; the `buildstate` crate re-exports them
//! under the same paths (`buildstate::plan`, `buildstate::Error`, ...).

/// `as_str`, `Display` and `FromStr` for a fieldless enum stored as text. An unknown
/// name read back from the database is corruption (user input is parsed elsewhere).
macro_rules! text_enum {
    ($t:ty { $($v:ident => $s:literal),+ $(,)? }) => {
        impl $t {
            /// Every value, in the order declared.
            pub const ALL: &'static [$t] = &[$(<$t>::$v),+];

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

// The test hooks are for tests: a release build (scripts/install, the wheel) never has them.
#[path = "../src/domain/mod.rs"]
pub mod domain;
#[path = "../src/error.rs"]
pub mod error;
#[path = "../src/exit.rs"]
pub mod exit;

pub use domain::{
    alerts, context, decide, deps, manifest, model, outputs, plan, policy, redact, resources,
    settings, snapshot, time,
};
pub use error::{Error, Result};
