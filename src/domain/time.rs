//! Timestamps are stored as RFC 3339 UTC text with millisecond precision: sortable, and
//! readable in `sqlite3` without conversion. The clock is always passed in as a
//! parameter so that decisions and retry math are tested without sleeping.

use std::time::{Duration, SystemTime};

use crate::{Error, Result};

pub fn format(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Parse RFC 3339 text, normalised to the millisecond precision every time is stored
/// with: a snapshot written elsewhere with finer times reads back as the same events.
pub fn parse(s: &str) -> Result<SystemTime> {
    let t = humantime::parse_rfc3339(s)
        .map_err(|e| Error::Corrupt(format!("bad timestamp '{s}': {e}")))?;
    Ok(truncate_millis(t))
}

/// `t` without its sub-millisecond part.
pub fn truncate_millis(t: SystemTime) -> SystemTime {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => SystemTime::UNIX_EPOCH + Duration::from_millis(d.as_millis() as u64),
        Err(_) => t,
    }
}

/// `d` before `now`, or the epoch when that is earlier (a window's or an age's start).
pub fn ago(now: SystemTime, d: Duration) -> SystemTime {
    now.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The longest duration anything accepts (flags, plan fields, environment): 366 days.
/// Longer would overflow time arithmetic, and no build state waits that long.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// Parse a duration as a person writes it (`90s`, `5m`, `1h 30m`), within
/// `min..=MAX_DURATION`; the error says what is accepted.
pub fn parse_bounded_duration(text: &str, min: Duration) -> std::result::Result<Duration, String> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        format!(
            "'{}' is not a duration ({e}); write it like 90s, 5m or 1h 30m",
            crate::redact::echo(text)
        )
    })?;
    if d > MAX_DURATION {
        return Err(format!(
            "'{}' is longer than the 366 days accepted",
            crate::redact::echo(text.trim())
        ));
    }
    if d < min {
        return Err(format!(
            "'{}' is shorter than the {} accepted",
            crate::redact::echo(text.trim()),
            format_duration(min)
        ));
    }
    Ok(d)
}

/// A duration as a person writes it: `90s`, `5m`, `1h 30m`.
/// Below a second the milliseconds are kept; above, whole seconds.
pub fn format_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    }
}

/// serde helpers: a `SystemTime` as RFC 3339 text.
pub mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        super::parse(&text).map_err(serde::de::Error::custom)
    }

    /// The same for `Option<SystemTime>`.
    pub mod option {
        use std::time::SystemTime;

        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_str(&super::super::format(*t)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<SystemTime>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|text| super::super::parse(&text).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}
