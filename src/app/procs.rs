//! The processes a command leaves behind, wherever they went.
//!
//! Every command buildstate runs leads its own process group, and signals go to the
//! group. A child that calls `setsid` (a daemon, `ssh -f`, `setsid sleep 30 &`) leaves
//! the group, so a group kill misses it, and it keeps the command's output pipe open:
//! whoever reads that pipe to its end (our own check runner, or the pipeline reading
//! run-state's stdout) waits for it. So each command is given a token in its
//! environment, which every descendant inherits unless it clears its environment on
//! purpose, and what must go is found by that token in `/proc/PID/environ`.

use std::time::{Duration, Instant};

/// The variable that carries the token.
pub const TOKEN_VAR: &str = "BUILDSTATE_RUN_TOKEN";

/// One command's token.
pub struct Tracked {
    /// `TOKEN_VAR=token` followed by the NUL that ends an environment entry.
    needle: Vec<u8>,
    token: String,
}

impl Tracked {
    pub fn new() -> Tracked {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let draw = (crate::model::random_unit() * 1e12) as u64;
        let token = format!("{}-{nanos:x}-{draw:x}", std::process::id());
        let needle = format!("{TOKEN_VAR}={token}\0").into_bytes();
        Tracked { needle, token }
    }

    /// The environment entry to give the command.
    pub fn env(&self) -> (&'static str, &str) {
        (TOKEN_VAR, &self.token)
    }

    /// The live processes that carry this token (never this process; a zombie, dead and
    /// waiting for its parent to collect it, is not live).
    pub fn pids(&self) -> Vec<libc::pid_t> {
        let me = std::process::id() as libc::pid_t;
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<libc::pid_t>().ok())
            .filter(|&pid| pid != me)
            .filter(|pid| {
                // "pid (comm) S ...": the state follows the last ')'.
                std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                    s.rsplit(')').next().is_some_and(|rest| {
                        !matches!(rest.trim_start().chars().next(), Some('Z' | 'X') | None)
                    })
                })
            })
            .filter(|pid| {
                // A process that ended meanwhile, or one we may not read, is not ours.
                std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                    env.starts_with(&self.needle[..])
                        || env
                            .windows(self.needle.len() + 1)
                            .any(|w| w[0] == 0 && w[1..] == self.needle[..])
                })
            })
            .collect()
    }

    /// Send `sig` to every process that carries the token; how many there were.
    pub fn signal(&self, sig: i32) -> usize {
        let pids = self.pids();
        for &pid in &pids {
            // SAFETY: kill has no memory-safety preconditions; a pid gone since is ESRCH.
            unsafe {
                libc::kill(pid, sig);
            }
        }
        pids.len()
    }

    /// End every process that carries the token: SIGTERM, then SIGKILL to what is still
    /// there after `grace`. Returns within `grace` and a few tens of milliseconds.
    pub fn end_all(&self, grace: Duration) {
        let until = Instant::now() + grace;
        // A process in the middle of an exec can be missing from one listing (its
        // environment unreadable for that instant): they are gone only when two
        // listings 20 ms apart find none, and each one found is sent SIGTERM once.
        let mut termed = std::collections::HashSet::new();
        let mut empty = 0;
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                empty += 1;
                if empty >= 2 {
                    return;
                }
            } else {
                empty = 0;
            }
            for pid in pids {
                if termed.insert(pid) {
                    // SAFETY: kill has no memory-safety preconditions; a pid gone since is ESRCH.
                    unsafe {
                        libc::kill(pid, libc::SIGTERM);
                    }
                }
            }
            if Instant::now() >= until {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.signal(libc::SIGKILL);
    }
}

impl Default for Tracked {
    fn default() -> Self {
        Tracked::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_setsid_child_is_found_by_its_token_and_ended() {
        let t = Tracked::new();
        let (k, v) = t.env();
        let status = Command::new("sh")
            .args(["-c", "setsid sleep 30 &"])
            .env(k, v)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let mut found = Vec::new();
        for _ in 0..100 {
            found = t.pids();
            if !found.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(found.len(), 1, "the setsid sleep carries the token");
        // Another command's token finds nothing of it.
        assert!(Tracked::new().pids().is_empty());
        t.end_all(Duration::from_secs(2));
        // Generous: a loaded CI machine may take a while to run the dying process.
        for _ in 0..1000 {
            if t.pids().is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let left: Vec<_> = t
            .pids()
            .iter()
            .map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
            .collect();
        panic!("the setsid sleep outlived end_all: {left:?}");
    }
}
