//! Files a command is given to read: plans, and messages (`update-state fail
//! --error-file`, the Concourse resource's `error_file`), read within a bound. Not behind the `cli` feature: the
//! Concourse resource's logic is in the crate the Python extension builds too.

use crate::plan::Plan;
use crate::{Error, Result};

/// The plan in `path`, or the built-in plan: what init-state, check-state and the
/// Python API use (the binaries take `--plan` or `BUILDSTATE_PLAN`).
pub fn plan(path: Option<&std::path::Path>) -> Result<Plan> {
    match path {
        Some(p) => plan_file(p),
        None => Ok(Plan::default_plan()),
    }
}

/// The plan named by `BUILDSTATE_PLAN`, or the built-in plan (the Python API, which
/// has no command line to take `--plan` from).
pub fn plan_from_env() -> Result<Plan> {
    let path = std::env::var_os("BUILDSTATE_PLAN").filter(|v| !v.is_empty());
    plan(path.as_deref().map(std::path::Path::new))
}

/// Read a plan file.
pub fn plan_file(path: &std::path::Path) -> Result<Plan> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::InvalidPlan {
        origin: path.display().to_string(),
        message: format!("cannot read it: {e}"),
    })?;
    Plan::from_toml(&text, &path.display().to_string())
}

/// The most of `update-state fail --error-file` kept: its last 4 MiB (a 1 MB message is
/// stored verbatim; a whole build log is not what a failure record is for).
pub const MAX_MESSAGE_FILE: u64 = 4 * 1024 * 1024;

/// Read at most `max` bytes of `path` (`-`: standard input) for `what` (the flag or
/// param that named it). A longer regular file gives its last `max` bytes when `tail`
/// (from a character boundary), after a note saying how many were left out; anything
/// else longer (a stream, or `tail` off) is refused. Errors are [`Error::InvalidInput`]
/// naming `what` and never repeat the content.
pub fn read_limited(
    path: &std::path::Path,
    what: &str,
    max: u64,
    tail: bool,
) -> Result<(String, Vec<u8>)> {
    use std::io::{Read, Seek};
    let bad = |why: String| Error::InvalidInput(format!("{what}: {why}"));
    let unreadable = |e: std::io::Error| bad(format!("cannot read {}: {e}", path.display()));
    let mut bytes = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(unreadable)?;
        if bytes.len() as u64 > max {
            return Err(bad(format!(
                "more than {max} bytes on standard input: pass the end of it (`tail -c {max}`)"
            )));
        }
        return Ok((String::new(), bytes));
    }
    let mut f = std::fs::File::open(path).map_err(unreadable)?;
    let meta = f.metadata().map_err(unreadable)?;
    // (bytes left out, of how many)
    let mut cut = None;
    if meta.is_file() && meta.len() > max {
        let len = meta.len();
        if !tail {
            return Err(bad(format!(
                "the file is {len} bytes, more than the {max} accepted"
            )));
        }
        f.seek(std::io::SeekFrom::Start(len - max))
            .map_err(unreadable)?;
        cut = Some((len - max, len));
    }
    // Cut: exactly the last `max` bytes as of the length read above (a log still being
    // written to may have grown since). Otherwise one byte more tells a longer one.
    f.take(if cut.is_some() { max } else { max + 1 })
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > max {
        // Not a regular file (a device, a pipe), or one that grew past `max` while read.
        return Err(bad(format!(
            "more than {max} bytes from {}: pass the end of it (`tail -c {max}`)",
            path.display()
        )));
    }
    let note = cut.map_or_else(String::new, |(left_out, len)| {
        // The cut may fall inside a character: start at the next one.
        let skip = bytes
            .iter()
            .take(3)
            .take_while(|b| (**b & 0xC0) == 0x80)
            .count();
        bytes.drain(..skip);
        format!(
            "[... the first {} bytes of {len} were left out]\n",
            left_out + skip as u64
        )
    });
    Ok((note, bytes))
}
