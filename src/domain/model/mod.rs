//! The build model and its transitions.
//!
//! [`apply`] is pure: given a build, its plan, a requested [`Transition`] and the time,
//! it returns the new summary row and the events to append, or refuses with a message
//! that says why and what to do. The store runs it inside one transaction, so a refused
//! transition writes nothing and an accepted one writes row and events together.

mod attempts;
mod implied;
mod record;
mod transition;

pub use attempts::attempts_allowed;
pub use implied::{Facts, Implied};
pub use record::*;
pub use transition::*;

#[cfg(test)]
mod tests;
