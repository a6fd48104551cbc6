//! Secret redaction, applied to every message before it is stored or sent.
//!
//! The patterns favour keeping an error message readable: each one needs a marker that
//! makes a secret likely (a key prefix, a `password=` name, credentials inside a URL,
//! an Authorization scheme), so ordinary text such as "basic validation failed" or an
//! apostrophe survives untouched.

use std::borrow::Cow;
use std::sync::OnceLock;

use regex::{Captures, Regex};

/// What a redacted secret is replaced with.
pub const MARK: &str = "[REDACTED]";

struct Rule {
    /// Cheap literal test (on the lower-cased text): the regex is compiled and run only
    /// when it passes. Compiling all patterns costs milliseconds, more than a whole
    /// transition, and most messages hold no secret at all.
    triggers: &'static [&'static str],
    pattern: &'static str,
    re: OnceLock<Regex>,
    replace: fn(&Captures) -> String,
}

impl Rule {
    const fn new(
        triggers: &'static [&'static str],
        pattern: &'static str,
        replace: fn(&Captures) -> String,
    ) -> Rule {
        Rule {
            triggers,
            pattern,
            re: OnceLock::new(),
            replace,
        }
    }

    fn regex(&self) -> &Regex {
        self.re
            .get_or_init(|| Regex::new(self.pattern).expect("redaction patterns compile"))
    }
}

const AWS_KEY_PREFIXES: &[&str] = &[
    "akia", "asia", "agpa", "aida", "aroa", "aipa", "anpa", "anva",
];
const SECRET_NAMES: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "token",
    "secret",
    "api_key",
    "apikey",
    "private_key",
    "privatekey",
];

static RULES: [Rule; 9] = [
    // Slack incoming-webhook and workflow URLs: the whole path is the secret.
    Rule::new(
        &["hooks.slack.com"],
        r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/\-]+",
        |_| format!("https://hooks.slack.com/{MARK}"),
    ),
    // user:password@ inside any URL.
    Rule::new(
        &["://"],
        r"(?i)(?-u:\b)([a-z][a-z0-9+.\-]*://)([^/\s:@]+):([^/\s@]+)@",
        |c| format!("{}{}:{MARK}@", &c[1], &c[2]),
    ),
    // Authorization headers and bare Bearer tokens.
    Rule::new(
        &["authorization"],
        r#"(?i)(?-u:\b)(authorization\s*[:=]\s*(?:bearer|basic|token)\s+)[^\s,;'"]+"#,
        |c| format!("{}{MARK}", &c[1]),
    ),
    Rule::new(
        &["bearer"],
        r"(?i)(?-u:\b)(bearer\s+)[A-Za-z0-9\-._~+/]{8,}=*",
        |c| format!("{}{MARK}", &c[1]),
    ),
    // "Basic <base64>": only when the token looks like base64 of user:pass.
    Rule::new(
        &["basic"],
        r"(?-u:\b)(Basic\s+)([A-Za-z0-9+/]{8,}={0,2})",
        |c| {
            let token = &c[2];
            let base64ish = token.len() % 4 == 0
                && token
                    .chars()
                    .any(|ch| ch.is_ascii_digit() || matches!(ch, '=' | '+' | '/'));
            if base64ish {
                format!("{}{MARK}", &c[1])
            } else {
                c[0].to_string()
            }
        },
    ),
    // AWS secret access keys, named: aws_secret_access_key = ..., "SecretAccessKey": "..."
    Rule::new(
        &["secret"],
        r#"(?i)(?-u:\b)((?:aws_?)?secret_?access_?key["']?\s*[:=]\s*["']?)[A-Za-z0-9/+=]{16,}"#,
        |c| format!("{}{MARK}", &c[1]),
    ),
    // AWS access key ids.
    Rule::new(
        AWS_KEY_PREFIXES,
        r"(?-u:\b)(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA)[A-Z0-9]{16}(?-u:\b)",
        |_| MARK.to_string(),
    ),
    // name=value pairs whose name says secret.
    Rule::new(
        SECRET_NAMES,
        r#"(?i)(?-u:\b)((?:[a-z0-9_\-]*_)?(?:password|passwd|pwd|token|secret|api_?key|apikey|private_?key|client_?secret)=)("[^"]*"|'[^']*'|[^\s&;,'"]+)"#,
        |c| format!("{}{MARK}", &c[1]),
    ),
    // The same in JSON or YAML: "password": "...".
    Rule::new(
        SECRET_NAMES,
        r#"(?i)("(?:[a-z0-9_\-]*_)?(?:password|passwd|token|secret|api_?key|private_?key|client_?secret)"\s*:\s*)"(?:[^"\\]|\\.)*""#,
        |c| format!("{}\"{MARK}\"", &c[1]),
    ),
];

/// Return `text` with every secret that a rule recognises replaced by [`MARK`].
/// Borrows when nothing matched, which is the common case.
pub fn redact(text: &str) -> Cow<'_, str> {
    let mut out: Cow<'_, str> = Cow::Borrowed(text);
    let lower = text.to_ascii_lowercase();
    for rule in RULES.iter() {
        if !rule.triggers.iter().any(|t| lower.contains(t)) {
            continue;
        }
        let re = rule.regex();
        if re.is_match(&out) {
            let replaced = re.replace_all(&out, |c: &Captures| (rule.replace)(c));
            // A rule may decide a match is not a secret after all and keep it.
            if replaced != out {
                out = Cow::Owned(replaced.into_owned());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn secrets_are_redacted() {
        let cases: &[(&str, &str)] = &[
            ("key AKIAIOSFODNN7EXAMPLE used", "key [REDACTED] used"),
            ("ASIAY34FZKBOKMUTVV7A", "[REDACTED]"),
            (
                "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                "aws_secret_access_key = [REDACTED]",
            ),
            (
                r#"{"SecretAccessKey": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}"#,
                r#"{"SecretAccessKey": "[REDACTED]"}"#,
            ),
            (
                "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                "AWS_SECRET_ACCESS_KEY=[REDACTED]",
            ),
            (
                "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig",
                "Authorization: Bearer [REDACTED]",
            ),
            (
                "curl -H 'Authorization: token ghp_abc123'",
                "curl -H 'Authorization: token [REDACTED]'",
            ),
            (
                "got 401 with bearer abcdefgh12345678",
                "got 401 with bearer [REDACTED]",
            ),
            (
                "Authorization: Basic dXNlcjpwYXNz",
                "Authorization: Basic [REDACTED]",
            ),
            (
                "sent Basic dXNlcjpwYXNzd29yZA== upstream",
                "sent Basic [REDACTED] upstream",
            ),
            (
                "post to https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXX failed",
                "post to https://hooks.slack.com/[REDACTED] failed",
            ),
            (
                "login password=hunter2 rejected",
                "login password=[REDACTED] rejected",
            ),
            ("db_password='hunter 2' x", "db_password=[REDACTED] x"),
            ("?token=abc123&user=me", "?token=[REDACTED]&user=me"),
            ("API_KEY=\"sk 123\" next", "API_KEY=[REDACTED] next"),
            (
                r#"{"password": "p\"w", "user": "u"}"#,
                r#"{"password": "[REDACTED]", "user": "u"}"#,
            ),
            (
                "clone https://deploy:s3cr3t@git.example.com/repo.git",
                "clone https://deploy:[REDACTED]@git.example.com/repo.git",
            ),
            (
                "postgres://app:pw@db:5432/x",
                "postgres://app:[REDACTED]@db:5432/x",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(redact(input), *want, "input: {input}");
        }
    }

    #[test]
    fn ordinary_text_is_untouched() {
        let cases = [
            "basic validation failed",
            "Basic authentication is disabled",
            "couldn't reach the mirror: it's down",
            "'); DROP TABLE builds;--",
            "unexpected token: '}' at line 3",
            "https://example.com/path@v1",
            "user@example.com wrote ssh://git@github.com/x",
            "AKIA is a prefix, AKIASHORT is not a key",
            "password reset required",
            "héllo wörld ✓ 日本",
        ];
        for input in cases {
            assert_eq!(redact(input), input);
            assert!(matches!(redact(input), std::borrow::Cow::Borrowed(_)));
        }
    }
}
