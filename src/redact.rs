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
    "pass",
    "token",
    "secret",
    "api_key",
    "apikey",
    "private_key",
    "privatekey",
    "access_key",
    "accesskey",
    "credential",
];

/// Names whose value is a secret, as a regex alternation: `db_password`, `vault_pass`,
/// `ansible_become_pass`, `aws_session_token`, `client_secret`, `--db-password`, ...
/// A prefix must end in `_` or `-`, so `bypass=` or `compass:` are left alone.
macro_rules! secret_name {
    () => {
        r"(?:[a-z0-9_\-]*[_\-])?(?:password|passwd|pwd|pass|token|secret|api_?key|apikey|private_?key|client_?secret|access_?key|session_?token|credentials?)"
    };
}

static RULES: [Rule; 17] = [
    // PEM private keys: the whole block, whatever the key type.
    Rule::new(
        &["private key-----"],
        r"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY)-----[\s\S]*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|$)",
        |c| format!("-----BEGIN {}-----{MARK}-----END {}-----", &c[1], &c[1]),
    ),
    // Slack incoming-webhook and workflow URLs, with or without the scheme: the whole
    // path is the secret.
    Rule::new(
        &["hooks.slack.com"],
        r"(?:https?://)?hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/\-]+",
        |_| format!("https://hooks.slack.com/{MARK}"),
    ),
    // Slack tokens: bot, user, app, refresh, configuration.
    Rule::new(
        &["xox", "xapp-"],
        r"(?-u:\b)(?:xox[abposre]|xapp)-[A-Za-z0-9\-]{8,}",
        |_| MARK.to_string(),
    ),
    // GitHub tokens: classic (ghp_, gho_, ghu_, ghs_, ghr_) and fine-grained.
    Rule::new(
        &["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"],
        r"(?-u:\b)(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})",
        |_| MARK.to_string(),
    ),
    // Signed URLs: S3 presigned (X-Amz-Signature, X-Amz-Credential, X-Amz-Security-Token),
    // Azure SAS (sig=), GCS (X-Goog-Signature).
    Rule::new(
        &["x-amz-", "sig=", "x-goog-signature"],
        r"(?i)((?:[?&;]|\b)(?:x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|sig)=)[^&\s'\x22]+",
        |c| format!("{}{MARK}", &c[1]),
    ),
    // Azure storage connection strings: AccountKey=...; SharedAccessSignature=...
    Rule::new(
        &["accountkey", "sharedaccesssignature"],
        r"(?i)((?:AccountKey|SharedAccessSignature)=)[^;\s'\x22]+",
        |c| format!("{}{MARK}", &c[1]),
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
    // name=value and name = value pairs whose name says secret (ini, env, Ansible
    // extra vars: ansible_become_pass=..., vault_pass=..., aws_session_token = ...).
    Rule::new(
        SECRET_NAMES,
        concat!(
            r"(?i)(?-u:\b)(",
            secret_name!(),
            r"[ \t]*=[ \t]*)(\x22[^\x22]*\x22|'[^']*'|[^\s&;,'\x22]+)"
        ),
        |c| format!("{}{MARK}", &c[1]),
    ),
    // The same in JSON: "password": "...".
    Rule::new(
        SECRET_NAMES,
        concat!(
            r#"(?i)("(?:"#,
            secret_name!(),
            r#")"\s*:\s*)"(?:[^"\\]|\\.)*""#
        ),
        |c| format!("{}\"{MARK}\"", &c[1]),
    ),
    // YAML and log style, unquoted: `password: hunter2`.
    Rule::new(
        SECRET_NAMES,
        concat!(
            r"(?i)(?-u:\b)(",
            secret_name!(),
            r"[ \t]*:[ \t]+)(\x22[^\x22\n]{2,}\x22|'[^'\n]{2,}'|[^\s'\x22{}\[\],][^\s,]*)"
        ),
        |c| format!("{}{MARK}", &c[1]),
    ),
    // Command-line flags: --password hunter2, --token=abc, -p is too ambiguous to touch.
    Rule::new(
        SECRET_NAMES,
        concat!(
            r"(?i)((?:^|\s)--",
            secret_name!(),
            r"(?:[ \t]+|=))(\x22[^\x22]*\x22|'[^']*'|[^\s'\x22]+)"
        ),
        |c| format!("{}{MARK}", &c[1]),
    ),
    // Private key material inline in JSON (GCP service-account keys).
    Rule::new(
        &["private_key_id"],
        r#"(?i)("private_key_id"\s*:\s*)"[^"]*""#,
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
            // Issue 7: each of these passed through before.
            ("password: hunter2", "password: [REDACTED]"),
            ("  db_password: 'hunter 2'\n", "  db_password: [REDACTED]\n"),
            ("mysql --password hunter2 -h db", "mysql --password [REDACTED] -h db"),
            ("vault --token=s.abcdef123", "vault --token=[REDACTED]"),
            (
                "aws_session_token = IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQ",
                "aws_session_token = [REDACTED]",
            ),
            (
                "ansible-playbook -e ansible_become_pass=Sup3r site.yml",
                "ansible-playbook -e ansible_become_pass=[REDACTED] site.yml",
            ),
            ("vault_pass=opensesame ok", "vault_pass=[REDACTED] ok"),
            (
                "slack said invalid_auth for xoxb-1234567890-0987654321-AbCdEfGhIjKl",
                "slack said invalid_auth for [REDACTED]",
            ),
            ("user token xoxp-11111-22222-33333-abcdef", "user token [REDACTED]"),
            (
                "posting to hooks.slack.com/services/T000/B000/XXXXXXXXXXXX",
                "posting to https://hooks.slack.com/[REDACTED]",
            ),
            (
                "git clone with ghp_abcdefghijklmnopqrstuvwxyz0123456789",
                "git clone with [REDACTED]",
            ),
            (
                "GH: github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
                "GH: [REDACTED]",
            ),
            (
                "DefaultEndpointsProtocol=https;AccountName=img;AccountKey=Eby8vdM02xNOcqFl==;EndpointSuffix=core",
                "DefaultEndpointsProtocol=https;AccountName=img;AccountKey=[REDACTED];EndpointSuffix=core",
            ),
            (
                "GET https://a.blob.core.windows.net/c/b?sv=2022-11-02&se=2026&sp=r&sig=abc%2Bdef%3D failed",
                "GET https://a.blob.core.windows.net/c/b?sv=2022-11-02&se=2026&sp=r&sig=[REDACTED] failed",
            ),
            (
                "403 for https://b.s3.amazonaws.com/k?X-Amz-Credential=AK%2F2026&X-Amz-Signature=9f8e7d6c5b",
                "403 for https://b.s3.amazonaws.com/k?X-Amz-Credential=[REDACTED]&X-Amz-Signature=[REDACTED]",
            ),
            (
                "key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\nabc\n-----END RSA PRIVATE KEY-----\ndone",
                "key:\n-----BEGIN RSA PRIVATE KEY-----[REDACTED]-----END RSA PRIVATE KEY-----\ndone",
            ),
            (
                "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA (cut off",
                "-----BEGIN OPENSSH PRIVATE KEY-----[REDACTED]-----END OPENSSH PRIVATE KEY-----",
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
            "bypass=1 compass: north",
            "Password: ",
            "--password-file /etc/pw.txt",
            "-----BEGIN PUBLIC KEY-----",
            "design=signature",
        ];
        for input in cases {
            assert_eq!(redact(input), input);
            assert!(matches!(redact(input), std::borrow::Cow::Borrowed(_)));
        }
    }
}
