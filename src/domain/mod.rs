//! The pure layer: what a plan says, what a transition does to a build, what a pipeline
//! should do next, which alerts a change raises, what a snapshot and an inputs manifest
//! look like. Nothing here opens the database, the network or a state's files; the
//! clock, randomness and identity come in as arguments ([`model::Ctx`],
//! [`context::Actor`]).

pub mod alerts;
pub mod context;
pub mod decide;
pub mod deps;
pub mod manifest;
pub mod model;
pub mod outputs;
pub mod plan;
pub mod policy;
pub mod redact;
pub mod resources;
pub mod settings;
pub mod snapshot;
pub mod time;
