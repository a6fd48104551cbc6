//! Builds that depend on builds (issue 29): a plan's state may wait until another build
//! has completed one of its states, `after = ["base-rhel9:100"]`. The parent's id may be
//! a template over the child (`base-{image}`: its cloud, image or a metadata key), so
//! one plan serves many builds. What a parent lacks is judged from what is known of it
//! (the store, or the remote in remote mode) at decision time: pure, here.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::{echo, validate_build_id, Build, Status};
use crate::{Error, Result};

/// One `after` entry: BUILD:STATE, BUILD perhaps a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct After {
    pub build: String,
    pub state: u8,
}

/// The most `after` entries one state may have.
pub const MAX_AFTER: usize = 32;

/// Read `BUILD:STATE` (a state number 0 to 100; BUILD a build id, or a template whose
/// `{...}` name the child's `cloud`, `image` or a metadata key).
pub fn parse_after(text: &str) -> std::result::Result<After, String> {
    let Some((build, state)) = text.rsplit_once(':') else {
        return Err(format!(
            "'{}' is not BUILD:STATE (a build id and the state of it to wait for, e.g. base-rhel9:100)",
            echo(text)
        ));
    };
    let state: u8 = state
        .parse()
        .ok()
        .filter(|s| *s <= 100)
        .ok_or_else(|| format!("'{}': the state is a number from 0 to 100", echo(text)))?;
    check_template(build).map_err(|m| format!("'{}': {m}", echo(text)))?;
    Ok(After {
        build: build.to_string(),
        state,
    })
}

/// One `inputs.builds` entry: BUILD:KEY, another build's current output `KEY` (BUILD
/// perhaps a template), hashed as an input of the state that consumes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    pub build: String,
    pub key: String,
}

/// Read `BUILD:KEY` (an output key; BUILD as for [`parse_after`]).
pub fn parse_consumed(text: &str) -> std::result::Result<Consumed, String> {
    let Some((build, key)) = text.rsplit_once(':') else {
        return Err(format!(
            "'{}' is not BUILD:KEY (a build id and the output of it to consume, e.g. base-rhel9:ami_id)",
            echo(text)
        ));
    };
    crate::model::validate_meta_key(key).map_err(|_| {
        format!(
            "'{}': the output key is 1 to 64 letters, digits or '_', not starting with a digit",
            echo(text)
        )
    })?;
    check_template(build).map_err(|m| format!("'{}': {m}", echo(text)))?;
    Ok(Consumed {
        build: build.to_string(),
        key: key.to_string(),
    })
}

/// A build id with `{name}` placeholders: what is outside them a build id's characters,
/// each name `cloud`, `image` or a metadata key.
fn check_template(t: &str) -> std::result::Result<(), String> {
    let mut rest = t;
    let mut literal = String::new();
    while let Some(open) = rest.find('{') {
        literal.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            return Err("a '{' without its '}'".into());
        };
        let name = &rest[open + 1..open + close];
        if crate::model::validate_meta_key(name).is_err() {
            return Err(format!(
                "'{{{}}}' does not name the build's cloud, image or a metadata key",
                echo(name)
            ));
        }
        literal.push('x');
        rest = &rest[open + close + 1..];
    }
    literal.push_str(rest);
    if literal.contains('}') {
        return Err("a '}' without its '{'".into());
    }
    validate_build_id(&literal).map_err(|_| {
        "the build id is 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit".to_string()
    })
}

/// The build whose parents are resolved: its id, cloud, image and metadata.
#[derive(Debug, Clone, Copy)]
pub struct Child<'a> {
    pub build_id: &'a str,
    pub cloud: &'a str,
    pub image: &'a str,
    pub meta: &'a BTreeMap<String, String>,
}

impl<'a> Child<'a> {
    pub fn of(b: &'a Build, meta: &'a BTreeMap<String, String>) -> Child<'a> {
        Child {
            build_id: &b.build_id,
            cloud: &b.cloud,
            image: &b.image,
            meta,
        }
    }
}

/// The parent's id for `child`: each `{name}` replaced by the child's cloud, image or
/// metadata value. A name the child does not have is an error that names it.
pub fn resolve(template: &str, child: &Child<'_>) -> Result<String> {
    let id = child.build_id;
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').map_or(rest.len(), |c| open + c);
        let name = &rest[open + 1..close];
        let value = match name {
            "cloud" => Some(child.cloud),
            "image" => Some(child.image),
            key => child.meta.get(key).map(String::as_str),
        };
        let Some(value) = value else {
            return Err(Error::InvalidInput(format!(
                "build '{id}': its plan's after '{}' names {{{name}}}, which the build has no metadata key for: set it (update-state {id} meta {name}=..., or init-state --meta)",
                echo(template)
            )));
        };
        out.push_str(value);
        rest = rest.get(close + 1..).unwrap_or("");
    }
    out.push_str(rest);
    validate_build_id(&out).map_err(|_| {
        Error::InvalidInput(format!(
            "build '{id}': its plan's after '{}' makes '{}', which is not a build id",
            echo(template),
            echo(&out)
        ))
    })?;
    Ok(out)
}

/// What is known of a parent when a child decides.
#[derive(Debug, Clone, PartialEq)]
pub struct Known {
    pub status: Status,
    pub current_state: Option<u8>,
    /// The names of the parent's plan's states, to say what it lacks.
    pub state_name: Option<String>,
    /// The reason of a revocation of its outputs that stands (`update-state revoke`):
    /// until it makes new ones, it is not done.
    pub revoked: Option<String>,
    /// Known by its archive record (it left this database: `monitor archive`).
    pub archived: bool,
}

impl Known {
    /// A parent archived from this database, by its archive record's status: one that
    /// completed its plan has done every state of it, a cancelled one never will.
    pub fn archived(status: &str, state: u8) -> Known {
        let completed = status == Status::Completed.as_str();
        Known {
            status: if completed {
                Status::Completed
            } else {
                Status::Cancelled
            },
            current_state: completed.then_some(state),
            state_name: Some(format!("archived {status}")),
            revoked: None,
            archived: true,
        }
    }

    /// How the parent stands, in one word or two (`revoked`, `archived completed`, or
    /// its status), for the graph.
    pub fn label(&self) -> String {
        match (&self.revoked, self.archived) {
            (Some(_), _) => "revoked".into(),
            (None, true) => format!("archived {}", self.status),
            (None, false) => self.status.to_string(),
        }
    }
}

/// A dependency that does not hold: which parent, which state of it, and how it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unmet {
    pub build_id: String,
    pub state: u8,
    /// `missing` (no such build yet), or the parent's status.
    pub status: String,
    /// The parent's last completed state.
    pub current_state: Option<u8>,
    /// What it lacks, in words.
    pub reason: String,
}

/// Whether a parent whose last completed state is `current_state` has completed `state`
/// (states complete in order, so a later one counts too).
pub fn holds(current_state: Option<u8>, state: u8) -> bool {
    current_state.is_some_and(|c| c >= state)
}

/// Whether the parent `id` (as `known`, `None`: no such build) has completed `state`:
/// `None` when it has, else what it lacks.
pub fn judge(id: &str, state: u8, known: Option<&Known>) -> Option<Unmet> {
    let label = |k: &Known| match &k.state_name {
        Some(n) => format!("state {state} ({n})"),
        None => format!("state {state}"),
    };
    match known {
        None => Some(Unmet {
            build_id: id.to_string(),
            state,
            status: "missing".into(),
            current_state: None,
            reason: format!("build {id} does not exist yet: it must complete state {state} first"),
        }),
        Some(Known {
            revoked: Some(why),
            status,
            current_state,
            ..
        }) => Some(Unmet {
            build_id: id.to_string(),
            state,
            status: "revoked".into(),
            current_state: *current_state,
            reason: format!(
                "build {id} revoked its outputs ({why}): it must make new ones (force or rerun the state that makes them) before this state runs; it is {status}"
            ),
        }),
        Some(k) if holds(k.current_state, state) => None,
        // A state its plan does not have: it never completes it, whatever it does.
        Some(k) if k.state_name.is_none() => Some(Unmet {
            build_id: id.to_string(),
            state,
            status: k.status.to_string(),
            current_state: k.current_state,
            reason: format!(
                "build {id}'s plan has no state {state}, so it never completes it: name one of its states in the after"
            ),
        }),
        Some(k) => Some(Unmet {
            build_id: id.to_string(),
            state,
            status: k.status.to_string(),
            current_state: k.current_state,
            reason: format!(
                "build {id} has not completed {} yet: it is {}{}",
                label(k),
                k.status,
                k.current_state
                    .map_or(String::new(), |c| format!(", its last completed state {c}"))
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_entries_and_templates() {
        assert_eq!(
            parse_after("base-rhel9:100").unwrap(),
            After {
                build: "base-rhel9".into(),
                state: 100
            }
        );
        assert!(parse_after("base-{image}:5").is_ok());
        assert_eq!(
            parse_consumed("base-{image}:ami_id").unwrap(),
            Consumed {
                build: "base-{image}".into(),
                key: "ami_id".into()
            }
        );
        for bad in [
            "base",
            "base:1x",
            "base:",
            ":ami_id",
            "b c:ami_id",
            "base:a-b",
        ] {
            assert!(parse_consumed(bad).is_err(), "{bad}");
        }
        for bad in [
            "base",
            "base:101",
            "base:x",
            ":5",
            "base-{image:5",
            "base-{a-b}:5",
            "b/../c:5",
        ] {
            assert!(parse_after(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_parent_holds_once_it_has_completed_the_state() {
        let k = |s: Status, c: Option<u8>| Known {
            status: s,
            current_state: c,
            state_name: Some("publish".into()),
            revoked: None,
            archived: false,
        };
        assert!(judge("base", 100, Some(&k(Status::Completed, Some(100)))).is_none());
        let u = judge("base", 100, Some(&k(Status::Running, Some(40)))).unwrap();
        assert!(
            u.reason.contains("state 100 (publish)") && u.reason.contains("40"),
            "{}",
            u.reason
        );
        assert_eq!(judge("base", 5, None).unwrap().status, "missing");
        let gone = Known {
            revoked: Some("bad kernel".into()),
            ..k(Status::Completed, Some(100))
        };
        let u = judge("base", 100, Some(&gone)).unwrap();
        assert_eq!(u.status, "revoked");
        assert!(u.reason.contains("bad kernel"), "{}", u.reason);
        let none = Known {
            state_name: None,
            ..k(Status::Pending, Some(0))
        };
        assert!(judge("base", 100, Some(&Known::archived("completed", 100))).is_none());
        let gone = Known::archived("cancelled", 100);
        assert_eq!(gone.label(), "archived cancelled");
        assert!(judge("base", 100, Some(&gone)).is_some());
        assert!(judge("base", 7, Some(&none))
            .unwrap()
            .reason
            .contains("has no state 7"));
    }
}
