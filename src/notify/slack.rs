//! Delivering queued alerts to Slack: an incoming webhook, or the Web API
//! (`chat.postMessage` with a bot token, one thread per build).
//!
//! Secrets (the webhook URL, the token) come from the environment or a file only
//! ([`Target::from_vars`], given the environment by the edge); they are never stored,
//! printed or put in an error message.
//!
//! [`deliver`] sends what is due within a time budget: a command that just wrote gives
//! it 2 s, `monitor deliver` (cron) more. Slack's ~1 message per second per channel is
//! kept; a 429 waits its `Retry-After` (without using up an attempt); 5xx and timeouts
//! are retried with a growing delay up to [`MAX_ATTEMPTS`], then the alert is marked
//! `gave_up` with its last error; a refusal that retrying cannot fix (a bad token, an
//! unknown channel, an invalid payload) gives up at once.

use std::ffi::OsString;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use super::{claim, Claimed, Settle};
use crate::store::Store;
use crate::{Error, Result};

/// Delivery attempts (5xx, timeouts) before an alert is given up.
pub const MAX_ATTEMPTS: u32 = 8;
/// Between two messages to one channel.
pub const CHANNEL_GAP: Duration = Duration::from_secs(1);

/// Where alerts go.
#[derive(Clone)]
pub enum Target {
    Webhook {
        url: String,
    },
    WebApi {
        token: String,
        channel: String,
        api: String,
    },
}

impl std::fmt::Debug for Target {
    /// Never shows the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Webhook { .. } => f.write_str("Webhook([REDACTED])"),
            Target::WebApi { channel, api, .. } => {
                write!(f, "WebApi({channel} via {api}, token [REDACTED])")
            }
        }
    }
}

/// A secret from `NAME`, or from the file named by `NAME_FILE`, as `get` gives them.
fn secret(get: &impl Fn(&str) -> Option<OsString>, name: &str) -> Result<Option<String>> {
    if let Some(v) = get(name)
        .and_then(|v| v.into_string().ok())
        .filter(|v| !v.trim().is_empty())
    {
        return Ok(Some(v.trim().to_string()));
    }
    let file_var = format!("{name}_FILE");
    match get(&file_var) {
        None => Ok(None),
        Some(path) => std::fs::read_to_string(&path)
            .map(|s| Some(s.trim().to_string()).filter(|s| !s.is_empty()))
            .map_err(|e| {
                Error::InvalidInput(format!(
                    "{file_var}: cannot read {}: {e}",
                    std::path::Path::new(&path).display()
                ))
            }),
    }
}

impl Target {
    /// `BUILDSTATE_SLACK_WEBHOOK_URL` (or `_FILE`), else `BUILDSTATE_SLACK_TOKEN` (or
    /// `_FILE`) with `BUILDSTATE_SLACK_CHANNEL` (`BUILDSTATE_SLACK_API_URL` overrides
    /// `https://slack.com/api`), as `get` gives the variables (the edge gives the
    /// environment's). `None` when Slack is not configured.
    pub fn from_vars(get: impl Fn(&str) -> Option<OsString>) -> Result<Option<Target>> {
        let text = |name: &str| get(name).and_then(|v| v.into_string().ok());
        if let Some(url) = secret(&get, "BUILDSTATE_SLACK_WEBHOOK_URL")? {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(Error::InvalidInput(
                    "BUILDSTATE_SLACK_WEBHOOK_URL is not an http(s) URL (its value is not shown)"
                        .into(),
                ));
            }
            return Ok(Some(Target::Webhook { url }));
        }
        if let Some(token) = secret(&get, "BUILDSTATE_SLACK_TOKEN")? {
            let channel = text("BUILDSTATE_SLACK_CHANNEL")
                .filter(|c| !c.trim().is_empty())
                .ok_or_else(|| {
                    Error::InvalidInput(
                        "BUILDSTATE_SLACK_TOKEN is set but BUILDSTATE_SLACK_CHANNEL is not: name the channel (e.g. #image-builds or its id)".into(),
                    )
                })?;
            let api = text("BUILDSTATE_SLACK_API_URL")
                .unwrap_or_else(|| "https://slack.com/api".into())
                .trim_end_matches('/')
                .to_string();
            return Ok(Some(Target::WebApi {
                token,
                channel,
                api,
            }));
        }
        Ok(None)
    }
}

/// Slack's mrkdwn needs `&`, `<` and `>` escaped.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// How many characters `c` takes once escaped by [`esc`].
fn escaped_len(c: char) -> usize {
    match c {
        '&' => 5,
        '<' | '>' => 4,
        _ => 1,
    }
}

/// `s` escaped for mrkdwn, in at most `max` characters (Slack's limits: 3000 per section
/// text, 2000 per field): the cut is made before escaping, so the result never ends in a
/// broken entity, and it counts what escaping adds, so it never exceeds `max`. A cut text
/// ends in `…`.
fn fit(s: &str, max: usize) -> String {
    if s.chars().map(escaped_len).sum::<usize>() <= max {
        return esc(s);
    }
    let mut used = 1; // the `…`
    let kept: String = s
        .chars()
        .take_while(|&c| {
            used += escaped_len(c);
            used <= max
        })
        .collect();
    format!("{}…", esc(&kept))
}

/// [`fit`], keeping the end of `s` (an error's last lines say most): a cut text starts
/// with `…`.
fn fit_end(s: &str, max: usize) -> String {
    if s.chars().map(escaped_len).sum::<usize>() <= max {
        return esc(s);
    }
    let mut used = 1;
    let mut kept: Vec<char> = s
        .chars()
        .rev()
        .take_while(|&c| {
            used += escaped_len(c);
            used <= max
        })
        .collect();
    kept.reverse();
    format!("…{}", esc(&kept.into_iter().collect::<String>()))
}

/// A field: its bold label, then its value, within Slack's 2000 characters.
fn field(label: &str, value: &str) -> Value {
    let head = format!("*{label}*\n");
    let value = fit(value, 2000 - head.chars().count());
    json!({"type": "mrkdwn", "text": format!("{head}{value}")})
}

/// Whether `v` may be a link in a message: an http(s) URL of at most 2000 characters
/// without white space, control characters or the characters that end a Slack link
/// (`<`, `>`, `|`) or a JSON string (`"`). A `javascript:` or other scheme never is.
pub fn is_link(v: &str) -> bool {
    (v.starts_with("https://") || v.starts_with("http://"))
        && v.len() <= 2000
        && !v
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>|\"".contains(c))
}

/// Cut plain text to `max` characters (a header's 150, the notification text).
fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(max - 1).collect::<String>())
    }
}

/// Where the HTML reports are published (`BUILDSTATE_REPORT_URL`, an http(s) URL): each
/// alert about a build links `BASE/BUILD.html` (docs/fleet.md).
pub fn report_base(url: Option<&str>) -> Result<Option<String>> {
    match url {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Ok(None),
        Some(v) => {
            if is_link(v) {
                Ok(Some(v.trim_end_matches('/').to_string()))
            } else {
                Err(Error::InvalidInput(format!(
                    "BUILDSTATE_REPORT_URL '{}' is not an http(s) URL without spaces, <, > or |: give where the reports are published, e.g. https://reports.example.com/builds",
                    crate::redact::echo(v)
                )))
            }
        }
    }
}

/// The Block Kit message for an alert, with a plain `text` fallback (notifications).
/// `report_base`: where the HTML reports are published, to link the build's timeline.
pub fn message(alert: &Claimed, report_base: Option<&str>) -> Value {
    let p = &alert.payload;
    let s = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_string);
    let build = s("build_id").unwrap_or_else(|| "(no build)".into());
    let state = match (p.get("state").and_then(Value::as_u64), s("state_name")) {
        (Some(n), Some(name)) => format!("state {n} ({name})"),
        (Some(n), None) => format!("state {n}"),
        _ => "no state".into(),
    };
    let (icon, headline) = match alert.kind.as_str() {
        "blocked" => (":rotating_light:", format!("needs a person at {state}")),
        "completed" => (":white_check_mark:", "completed".to_string()),
        "cancelled" => (":no_entry:", "was cancelled".to_string()),
        "rollback" => (":rewind:", format!("was rolled back to {state}")),
        "takeover" => (
            ":arrows_counterclockwise:",
            format!("was taken over at {state}"),
        ),
        "stuck" => (":hourglass:", format!("looks stuck at {state}")),
        "drift" => (
            ":warning:",
            format!("drifted at {state}: its verify failed"),
        ),
        "cleanup" => (
            ":wastebasket:",
            format!(
                "could not clean up {} {}",
                s("resource_type").unwrap_or_default(),
                s("resource_id").unwrap_or_default()
            ),
        ),
        "revoked" => (
            ":recycle:",
            format!(
                "is stale at {state}: {} revoked what it was built on",
                s("parent").unwrap_or_default()
            ),
        ),
        other => (":information_source:", other.to_string()),
    };
    let text = cut(&format!("Build {build} {headline}"), 150);
    let mut fields = vec![field("State", &state)];
    if let (Some(a), Some(m)) = (
        p.get("attempt").and_then(Value::as_u64),
        p.get("max_attempts").and_then(Value::as_u64),
    ) {
        fields.push(field("Attempt", &format!("{a} of {m}")));
    }
    if let Some(c) = s("category") {
        fields.push(field("Category", &c));
    }
    if let (Some(cloud), Some(image)) = (s("cloud"), s("image")) {
        fields.push(field("Image", &format!("{image} on {cloud}")));
    }
    if let Some(w) = s("who") {
        fields.push(field("Who", &w));
    }
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": cut(&format!("{} {text}", icon), 150), "emoji": true}}),
        json!({"type": "section", "fields": fields}),
    ];
    if let Some(r) = s("reason") {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("*Why:* {}", fit(&r, 3000 - 7))}}));
    }
    if let Some(e) = s("error_tail") {
        // The tail of the (already redacted) error, in a code block that fits Slack's limit.
        let body = fit_end(&e.replace("```", "'''"), 3000 - 6);
        blocks.push(
            json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("```{body}```")}}),
        );
    }
    // A link from the pipeline's environment (BUILD_URL) or another machine's snapshot:
    // only an http(s) URL becomes one.
    if let Some(u) = s("concourse_url").filter(|u| is_link(u)) {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("<{}|Concourse build>", esc(&u))}}));
    }
    if let (Some(base), Some(id)) = (report_base, s("build_id")) {
        // Build ids are [A-Za-z0-9._-]: safe in a URL path as they are.
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("<{}/{}.html|Timeline of {}>", esc(base), esc(&id), esc(&id))}}));
    }
    blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("buildstate alert {} · {}", alert.id, fit(&s("at").unwrap_or_default(), 100))}]}));
    json!({"text": text, "blocks": blocks})
}

/// The same alert as plain text without blocks: what is sent when Slack refuses the
/// Block Kit message as malformed, so that someone still hears of it.
pub fn plain_message(alert: &Claimed) -> Value {
    let blocks = message(alert, None);
    let headline = blocks["text"].as_str().unwrap_or_default().to_string();
    let p = &alert.payload;
    let s = |k: &str| {
        p.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let why = fit(&s("reason"), 1000);
    let tail = fit_end(&s("error_tail"), 1500);
    let text = format!(
        "{}\n{why}\n{tail}\n(buildstate alert {})",
        esc(&headline),
        alert.id
    );
    json!({"text": text.trim_end()})
}

/// How one send went.
enum Sent {
    Ok {
        ts: Option<String>,
    },
    RateLimited(Duration),
    Transient(String),
    Refused(String),
    /// Slack refused the message's content (its blocks, its length): a plain-text
    /// message may still go through.
    Malformed(String),
}

/// The errors by which Slack says the message itself is at fault (webhooks answer them
/// with 400 as the body, chat.postMessage as `error`).
fn malformed(error: &str) -> bool {
    let e = error.trim();
    e.starts_with("invalid_blocks")
        || [
            "invalid_payload",
            "msg_too_long",
            "no_text",
            "invalid_attachments",
        ]
        .contains(&e)
}

async fn send(
    client: &reqwest::Client,
    target: &Target,
    mut body: Value,
    thread_ts: Option<&str>,
) -> Sent {
    let request = match target {
        Target::Webhook { url } => client.post(url).json(&body),
        Target::WebApi {
            token,
            channel,
            api,
        } => {
            body["channel"] = json!(channel);
            if let Some(ts) = thread_ts {
                body["thread_ts"] = json!(ts);
            }
            client
                .post(format!("{api}/chat.postMessage"))
                .bearer_auth(token)
                .json(&body)
        }
    };
    let response = match request.send().await {
        Ok(r) => r,
        // Never echo reqwest's error: it contains the URL (the webhook's secret).
        Err(e) if e.is_timeout() => return Sent::Transient("Slack did not answer in time".into()),
        Err(e) if e.is_connect() => return Sent::Transient("could not connect to Slack".into()),
        Err(_) => return Sent::Transient("the request to Slack failed".into()),
    };
    let status = response.status();
    if status.as_u16() == 429 {
        let wait = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(30);
        return Sent::RateLimited(Duration::from_secs(wait.clamp(1, 3600)));
    }
    let text = response.text().await.unwrap_or_default();
    if status.is_server_error() {
        return Sent::Transient(format!("Slack answered {status}"));
    }
    if !status.is_success() {
        if malformed(&text) {
            return Sent::Malformed(format!(
                "Slack refused the message: {status} {}",
                cut(&text, 200)
            ));
        }
        return Sent::Refused(format!(
            "Slack refused the message: {status} {}",
            cut(&text, 200)
        ));
    }
    match target {
        Target::Webhook { .. } => Sent::Ok { ts: None },
        Target::WebApi { .. } => {
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if v.get("ok").and_then(Value::as_bool) == Some(true) {
                Sent::Ok {
                    ts: v.get("ts").and_then(Value::as_str).map(str::to_string),
                }
            } else {
                let err = v
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("no error given");
                if err == "ratelimited" {
                    Sent::RateLimited(Duration::from_secs(30))
                } else if malformed(err) {
                    Sent::Malformed(format!("Slack refused the message: {err}"))
                } else {
                    Sent::Refused(format!("Slack refused the message: {err}"))
                }
            }
        }
    }
}

/// What a delivery run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Delivered {
    pub delivered: u32,
    pub retried: u32,
    pub gave_up: u32,
    /// Alerts still due when the budget ran out.
    pub left: u64,
    /// The last delivery error met (redacted), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The delay before retry `n` (1-based) of a failed delivery: `first` doubling, at most
/// 1 h. `first` is `BUILDSTATE_SLACK_RETRY_DELAY` (default 30 s).
pub fn retry_delay(first: Duration, attempt: u32) -> Duration {
    first
        .saturating_mul(1 << attempt.saturating_sub(1).min(12))
        .min(Duration::from_secs(3600))
}

/// How alerts are delivered: resolved once at the edge (`environment::Settings`).
#[derive(Debug, Clone)]
pub struct Options {
    /// How long one delivery may go on (`BUILDSTATE_SLACK_BUDGET` after a write,
    /// `monitor deliver --budget`).
    pub budget: Duration,
    /// The first delay before an undelivered alert is tried again, doubling
    /// (`BUILDSTATE_SLACK_RETRY_DELAY`).
    pub retry_delay: Duration,
    /// Where the HTML reports are published (`BUILDSTATE_REPORT_URL`), checked by
    /// [`report_base`] when alerts are sent.
    pub report_url: Option<String>,
}

/// Deliver due alerts for at most `opts.budget`. `worker` names this deliverer in its claims.
///
/// In remote mode the alerts that travel with their builds are claimed and settled
/// through the remote ([`super::claim_shared`]), then this machine's own outbox's (a
/// remote-mode `monitor check` queues its stuck alerts there); in local mode only the
/// local outbox's.
pub fn deliver(
    store: &mut crate::sync::Writer,
    target: &Target,
    opts: &Options,
    worker: &str,
) -> Result<Delivered> {
    let shared = store.is_remote();
    let report_base = report_base(opts.report_url.as_deref())?;
    let deadline = Instant::now() + opts.budget;
    let rt = crate::remote::runtime(&mut tokio::runtime::Builder::new_current_thread())?;
    crate::remote::ensure_tls();
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|_| Error::InvalidInput("could not set up the HTTP client for Slack".into()))?;
    let mut report = Delivered::default();
    let mut last_send: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        // Keep to about one message a second per channel, but wait only for a message.
        if let Some(t) = last_send {
            if !super::any_due(store.store(), SystemTime::now(), shared)? {
                break;
            }
            let next = t + CHANNEL_GAP;
            if next >= deadline {
                break;
            }
            std::thread::sleep(next.saturating_duration_since(now));
        }
        let wall = SystemTime::now();
        // The claim outlives the request's timeout, so no other deliverer takes it while
        // this one may still be sending it.
        let until = wall + Duration::from_secs(60);
        // In remote mode the alerts that travel with builds first, then this machine's
        // own (monitor check's stuck alerts, which belong to no snapshot).
        let claimed = match shared {
            true => super::claim_shared(store, worker, wall, until)?.map(|a| (a, true)),
            false => None,
        };
        let claimed = match claimed {
            Some(c) => Some(c),
            None => claim(store.store(), worker, wall, until)?.map(|a| (a, false)),
        };
        let Some((alert, travels)) = claimed else {
            break;
        };
        let settle = |store: &mut crate::sync::Writer, outcome: Settle<'_>, now| {
            if travels {
                super::settle_shared(store, &alert, worker, outcome, now)
            } else {
                crate::store::outbox::settle_local(store.store(), alert.id, worker, outcome, now)
            }
        };
        let timeout = deadline
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(200), Duration::from_secs(10));
        let thread = thread_ts(store.store(), &alert, target)?;
        let body = message(&alert, report_base.as_deref());
        last_send = Some(Instant::now());
        let send_one = |body: Value| {
            rt.block_on(async {
                tokio::time::timeout(timeout, send(&client, target, body, thread.as_deref()))
                    .await
                    .unwrap_or_else(|_| Sent::Transient("Slack did not answer in time".into()))
            })
        };
        let sent = match send_one(body) {
            // Its blocks were refused: the same alert as plain text, at once, rather
            // than an alert nobody hears.
            Sent::Malformed(error) => match send_one(plain_message(&alert)) {
                Sent::Malformed(plain_error) => {
                    Sent::Refused(format!("{error}; as plain text too: {plain_error}"))
                }
                other => other,
            },
            other => other,
        };
        let now = SystemTime::now();
        tracing::debug!(
            target: "buildstate::slack",
            "alert {} ({}, attempt {}): {}, {} ms",
            alert.id,
            alert.kind,
            alert.attempts + 1,
            match &sent {
                Sent::Ok { .. } => "delivered".to_string(),
                Sent::RateLimited(wait) => format!("rate limited, retry after {} s", wait.as_secs()),
                Sent::Transient(e) => format!("not delivered, will retry: {e}"),
                Sent::Refused(e) | Sent::Malformed(e) => format!("refused: {e}"),
            },
            last_send.map_or(0, |t| t.elapsed().as_millis())
        );
        match sent {
            Sent::Ok { ts } => {
                if let (Some(ts), None, Some(b), Target::WebApi { channel, .. }) =
                    (ts, thread, &alert.build_id, target)
                {
                    crate::store::outbox::record_thread(store.store(), b, channel, &ts)?;
                }
                settle(store, Settle::Delivered, now)?;
                report.delivered += 1;
            }
            Sent::RateLimited(wait) => {
                let error = format!("rate limited by Slack: retry after {}s", wait.as_secs());
                report.last_error = Some(error.clone());
                settle(
                    store,
                    Settle::Retry {
                        at: now + wait,
                        error: &error,
                        counts: false,
                    },
                    now,
                )?;
                report.retried += 1;
                break; // the channel is saturated: the rest waits too
            }
            Sent::Transient(error) if alert.attempts + 1 < MAX_ATTEMPTS => {
                report.last_error = Some(crate::redact::redact(&error).into_owned());
                let at = now + retry_delay(opts.retry_delay, alert.attempts + 1);
                settle(
                    store,
                    Settle::Retry {
                        at,
                        error: &error,
                        counts: true,
                    },
                    now,
                )?;
                report.retried += 1;
            }
            Sent::Transient(error) | Sent::Refused(error) | Sent::Malformed(error) => {
                report.last_error = Some(crate::redact::redact(&error).into_owned());
                settle(store, Settle::GaveUp { error: &error }, now)?;
                report.gave_up += 1;
            }
        }
    }
    // Local mode leaves alerts that travel with builds to a deliverer in remote mode.
    report.left = crate::store::outbox::due(store.store(), SystemTime::now(), shared)?;
    Ok(report)
}

/// The thread of the build's earlier alerts in this channel (Web API only).
fn thread_ts(store: &Store, alert: &Claimed, target: &Target) -> Result<Option<String>> {
    let (Target::WebApi { channel, .. }, Some(build)) = (target, &alert.build_id) else {
        return Ok(None);
    };
    crate::store::outbox::thread(store, build, channel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_escape_and_fit_slack_limits() {
        let alert = Claimed {
            id: 7,
            build_id: Some("img-1".into()),
            kind: "blocked".into(),
            payload: json!({
                "build_id": "img-1", "state": 10, "state_name": "green-image-validation",
                "attempt": 5, "max_attempts": 5, "category": "transient",
                "reason": "all 5 attempts failed", "error_tail": format!("{} <script> & end", "x".repeat(5000)),
                "who": "ci@worker-3 (run-state, pid 4)", "concourse_url": "https://ci/x?a=1&b=2",
                "cloud": "aws", "image": "rhel9", "at": "2026-11-22T10:00:00.000Z",
            }),
            attempts: 0,
        };
        let m = message(&alert, None);
        assert_eq!(
            m["text"],
            "Build img-1 needs a person at state 10 (green-image-validation)"
        );
        let text = m.to_string();
        assert!(!text.contains("<script>") && text.contains("&lt;script&gt;"));
        for b in m["blocks"].as_array().unwrap() {
            if let Some(t) = b["text"]["text"].as_str() {
                assert!(t.chars().count() <= 3000, "{}", t.len());
            }
        }
        assert!(text.contains("Attempt*\\n5 of 5"));
        assert!(text.contains("buildstate alert 7"));
    }

    #[test]
    fn every_alert_kind_has_its_own_headline() {
        for kind in crate::policy::AlertKind::ALL {
            let alert = Claimed {
                id: 1,
                build_id: Some("app-1".into()),
                kind: kind.as_str().into(),
                payload: json!({"build_id": "app-1", "state": 10, "parent": "base-rhel9",
                    "resource_type": "key-pair", "resource_id": "k1"}),
                attempts: 0,
            };
            let m = message(&alert, None);
            let head = m["blocks"][0]["text"]["text"].as_str().unwrap();
            assert!(!head.contains(":information_source:"), "{kind}: {head}");
        }
    }

    fn blocked(error_tail: &str, reason: &str, concourse_url: &str) -> Claimed {
        Claimed {
            id: 9,
            build_id: Some("img-1".into()),
            kind: "blocked".into(),
            payload: json!({
                "build_id": "img-1", "state": 5, "state_name": "kickstart",
                "attempt": 1, "max_attempts": 1, "category": "persistent",
                "reason": reason, "error_tail": error_tail, "who": reason,
                "concourse_url": concourse_url, "cloud": "aws", "image": reason,
                "at": "2026-11-22T10:00:00.000Z",
            }),
            attempts: 0,
        }
    }

    /// Slack's documented limits, and escaping that never leaves a broken entity.
    fn assert_within_slack_limits(m: &Value) {
        let blocks = m["blocks"].as_array().unwrap();
        assert!(!blocks.is_empty() && blocks.len() <= 50);
        assert!(m["text"].as_str().unwrap().chars().count() <= 150);
        let mut mrkdwn = Vec::new();
        for b in blocks {
            match b["type"].as_str().unwrap() {
                "header" => assert!(b["text"]["text"].as_str().unwrap().chars().count() <= 150),
                "section" => {
                    if let Some(t) = b["text"]["text"].as_str() {
                        assert!(
                            t.chars().count() <= 3000,
                            "section of {}",
                            t.chars().count()
                        );
                        mrkdwn.push(t);
                    }
                    for f in b["fields"].as_array().into_iter().flatten() {
                        let t = f["text"].as_str().unwrap();
                        assert!(t.chars().count() <= 2000, "field of {}", t.chars().count());
                        mrkdwn.push(t);
                    }
                }
                "context" => mrkdwn.push(b["elements"][0]["text"].as_str().unwrap()),
                other => panic!("block type {other}"),
            }
        }
        for t in mrkdwn {
            for (i, _) in t.match_indices('&') {
                let rest = &t[i..];
                assert!(
                    ["&amp;", "&lt;", "&gt;"]
                        .iter()
                        .any(|e| rest.starts_with(e)),
                    "a broken entity in {t:?}"
                );
            }
            // The only markup is ours: a link's angle brackets.
            let links = t.matches("|Concourse build>").count() + t.matches("|Timeline of ").count();
            assert!(t.matches('<').count() <= links, "markup in {t:?}");
        }
    }

    #[test]
    fn markup_heavy_errors_fit_after_escaping() {
        // Cut to 2,900 characters and then escaped, this was 11,600: Slack's 400.
        let m = message(&blocked(&"<&>".repeat(1000), &"&".repeat(5000), ""), None);
        assert_within_slack_limits(&m);
        let text = m.to_string();
        assert!(text.contains("&lt;&amp;&gt;"), "{text}");
    }

    #[test]
    fn only_http_links_become_links() {
        for bad in [
            "javascript:alert(1)",
            "https://x/<script>",
            "https://a b",
            "https://x|y",
            "data:text/html,x",
        ] {
            let m = message(&blocked("e", "r", bad), None);
            assert!(!m.to_string().contains("Concourse build"), "{bad}: {m}");
        }
        let m = message(
            &blocked("e", "r", "https://ci.example.com/builds/42?a=1&b=2"),
            None,
        );
        assert!(m
            .to_string()
            .contains("<https://ci.example.com/builds/42?a=1&amp;b=2|Concourse build>"));
    }

    #[test]
    fn the_plain_text_fallback_fits_too() {
        let big = "é<&>".repeat(300_000);
        let m = plain_message(&blocked(&big, &big, "javascript:x"));
        let t = m["text"].as_str().unwrap();
        assert!(t.chars().count() <= 3000, "{}", t.chars().count());
        assert!(m.get("blocks").is_none());
        assert!(t.starts_with("Build img-1 needs a person at state 5 (kickstart)"));
        assert!(t.ends_with("(buildstate alert 9)"));
    }

    #[test]
    fn slack_errors_that_blame_the_message_are_told_apart() {
        for e in [
            "invalid_blocks",
            "invalid_blocks_format",
            "invalid_payload",
            "msg_too_long",
        ] {
            assert!(malformed(e), "{e}");
        }
        for e in ["channel_not_found", "invalid_auth", "no_service", ""] {
            assert!(!malformed(e), "{e}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(40))]
        #[test]
        fn every_payload_fits_slack_whatever_the_error_says(
            chunks in proptest::collection::vec("[<>&`*_~|a-zé漢🙂\\n ]{0,64}", 0..80),
            repeat in 1usize..20_000,
        ) {
            // Up to about 1 MB of markup, multibyte characters and backticks.
            let text: String = chunks.concat().repeat(repeat.min(1 + 1_000_000 / (1 + chunks.concat().len())));
            let m = message(&blocked(&text, &text, &text), Some("https://reports.example.com"));
            assert_within_slack_limits(&m);
            let p = plain_message(&blocked(&text, &text, &text));
            proptest::prop_assert!(p["text"].as_str().unwrap().chars().count() <= 3000);
        }
    }

    #[test]
    fn retry_delays_grow_and_are_capped() {
        let s30 = Duration::from_secs(30);
        assert_eq!(retry_delay(s30, 1), s30);
        assert_eq!(retry_delay(s30, 2), Duration::from_secs(60));
        assert_eq!(retry_delay(s30, 20), Duration::from_secs(3600));
    }

    #[test]
    fn targets_never_show_their_secret() {
        let t = Target::Webhook {
            url: "https://hooks.slack.com/services/T/B/secret".into(),
        };
        assert!(!format!("{t:?}").contains("secret"));
        let t = Target::WebApi {
            token: "xoxb-123-secret".into(),
            channel: "#c".into(),
            api: "https://slack.com/api".into(),
        };
        assert!(!format!("{t:?}").contains("secret"));
    }
}
