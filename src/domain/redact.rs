//! Secret redaction, applied to every message before it is stored or sent.
//!
//! The rules are data, in `src/redact-rules.json`: each has an id, keywords for a fast
//! prefilter, a pattern, the capture groups that are the secret, and samples that must
//! and must not be redacted (a test runs them all). Each pattern needs a marker that
//! makes a secret likely (a key prefix, a `password=` name, credentials inside a URL, an
//! Authorization scheme), so ordinary text such as "basic validation failed" or an
//! apostrophe survives untouched.
//!
//! The keywords say which rules can apply (one substring search each for a short message,
//! one Aho-Corasick pass for a long one); only those rules' patterns are compiled (once per
//! process) and run. A message with no keyword costs just the search.

use std::borrow::Cow;
use std::sync::OnceLock;

use regex::{Captures, Regex};
use serde::Deserialize;

/// What a redacted secret is replaced with.
pub const MARK: &str = "[REDACTED]";

/// The rules, as shipped.
pub const RULES_JSON: &str = include_str!("redact-rules.json");

/// One rule of `src/redact-rules.json`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDef {
    pub id: String,
    pub keywords: Vec<String>,
    pub regex: String,
    #[serde(default = "whole_match")]
    pub groups: Vec<usize>,
    #[serde(default)]
    pub min_len: usize,
    #[serde(default)]
    pub needs: String,
    #[serde(default)]
    pub catch: Vec<String>,
    #[serde(default)]
    pub keep: Vec<String>,
}

fn whole_match() -> Vec<usize> {
    vec![0]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[allow(dead_code)]
    about: Vec<String>,
    rule: Vec<RuleDef>,
}

struct Rule {
    def: RuleDef,
    re: OnceLock<Regex>,
}

struct Rules {
    rules: Vec<Rule>,
    /// Every keyword, and (at the same index) the rule it belongs to.
    words: Vec<String>,
    owner: Vec<usize>,
    /// All keywords at once, for long messages; built when first needed.
    automaton: OnceLock<aho_corasick::AhoCorasick>,
}

/// The shipped rules, parsed on first use.
pub fn rule_defs() -> impl Iterator<Item = &'static RuleDef> {
    rules().rules.iter().map(|r| &r.def)
}

fn rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| {
        let file: RuleFile = serde_json::from_str(RULES_JSON)
            .expect("src/redact-rules.json parses (a test checks it)");
        let mut words = Vec::new();
        let mut owner = Vec::new();
        for (i, r) in file.rule.iter().enumerate() {
            for k in &r.keywords {
                words.push(k.to_ascii_lowercase());
                owner.push(i);
            }
        }
        Rules {
            rules: file
                .rule
                .into_iter()
                .map(|def| Rule {
                    def,
                    re: OnceLock::new(),
                })
                .collect(),
            words,
            automaton: OnceLock::new(),
            owner,
        }
    })
}

/// Below this many bytes a message is searched keyword by keyword; above, with one
/// Aho-Corasick pass (building the automaton costs about a hundred such searches).
const SHORT: usize = 4096;

impl Rules {
    /// Which rules have a keyword in `lower`.
    fn hits(&self, lower: &str) -> Vec<bool> {
        let mut hit = vec![false; self.rules.len()];
        if lower.len() < SHORT {
            for (w, i) in self.words.iter().zip(&self.owner) {
                if !hit[*i] && lower.contains(w.as_str()) {
                    hit[*i] = true;
                }
            }
        } else {
            let ac = self.automaton.get_or_init(|| {
                aho_corasick::AhoCorasick::new(&self.words).expect("keywords build an automaton")
            });
            for m in ac.find_overlapping_iter(lower) {
                hit[self.owner[m.pattern().as_usize()]] = true;
            }
        }
        hit
    }
}

impl Rule {
    fn regex(&self) -> &Regex {
        self.re.get_or_init(|| {
            Regex::new(&self.def.regex).expect("redaction patterns compile (a test checks them)")
        })
    }

    /// The match with its secret groups replaced, or unchanged when none qualifies.
    fn replace(&self, c: &Captures<'_>) -> String {
        let whole = c.get(0).expect("group 0 always takes part");
        let mut spans: Vec<(usize, usize)> = self
            .def
            .groups
            .iter()
            .filter_map(|g| c.get(*g))
            .filter(|m| m.len() >= self.def.min_len.max(1))
            .filter(|m| {
                self.def.needs.is_empty()
                    || m.as_str().chars().any(|ch| self.def.needs.contains(ch))
            })
            .map(|m| (m.start() - whole.start(), m.end() - whole.start()))
            .collect();
        spans.sort_unstable();
        let text = whole.as_str();
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (a, b) in spans {
            if a < at {
                continue;
            }
            out.push_str(&text[at..a]);
            out.push_str(MARK);
            at = b;
        }
        out.push_str(&text[at..]);
        out
    }
}

/// Return `text` with every secret that a rule recognises replaced by [`MARK`].
/// Borrows when nothing matched, which is the common case.
pub fn redact(text: &str) -> Cow<'_, str> {
    let all = rules();
    let lower = text.to_ascii_lowercase();
    let hit = all.hits(&lower);
    let mut out: Cow<'_, str> = Cow::Borrowed(text);
    for (rule, _) in all.rules.iter().zip(&hit).filter(|(_, h)| **h) {
        let re = rule.regex();
        if re.is_match(&out) {
            let replaced = re.replace_all(&out, |c: &Captures<'_>| rule.replace(c));
            // A rule may decide a match is not a secret after all and keep it.
            if replaced != out {
                out = Cow::Owned(replaced.into_owned());
            }
        }
    }
    out
}

/// The most of a bad input an error message repeats.
pub const MAX_ECHO: usize = 80;

/// A bad input as an error message repeats it: redacted, escaped, and cut to
/// [`MAX_ECHO`] characters (a 100 KB value is named, not printed).
pub fn echo(text: &str) -> String {
    let red = redact(text);
    let n = red.chars().count();
    let shown: String = red.chars().take(MAX_ECHO).collect::<String>();
    let shown = shown.escape_debug().to_string();
    if n > MAX_ECHO {
        format!("{shown}... ({n} characters)")
    } else {
        shown
    }
}

/// Whether `c` must not reach a terminal or a page as it is: control characters other
/// than a newline and a tab (an `\r` or an escape sequence rewrites what was printed
/// before it), C1 controls, and the characters that reorder text (U+202E shows a name
/// backwards).
fn unprintable(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every character that must not reach a terminal or a page as it is
/// (see `unprintable`) shown as `\uXXXX`: what a person reads. The same escape in a JSON
/// string means the very character, so JSON output passed through here still carries the
/// exact text.
pub fn printable(text: &str) -> Cow<'_, str> {
    // Every such character is a C0 control, DEL, or starts with one of these bytes.
    let suspect = |b: &u8| *b < 0x20 || *b == 0x7f || matches!(*b, 0xc2 | 0xd8 | 0xe2);
    if !text.as_bytes().iter().any(suspect) || !text.chars().any(unprintable) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if unprintable(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::{printable, redact, rule_defs, MARK};

    #[test]
    fn printable_neutralises_what_rewrites_a_terminal_or_reorders_text() {
        assert_eq!(
            printable("plain 'text'\n\twith é and 漢"),
            "plain 'text'\n\twith é and 漢"
        );
        assert!(matches!(printable("é漢🙂"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(printable("ok\r\u{1b}[Kfaked"), "ok\\u000d\\u001b[Kfaked");
        assert_eq!(printable("a\u{202e}txt.exe"), "a\\u202etxt.exe");
        assert_eq!(printable("\u{85}\u{7f}\u{2066}"), "\\u0085\\u007f\\u2066");
        // In a JSON string the escape is the character itself: the exact text survives.
        let json = serde_json::to_string("x\u{202e}\u{85}y").unwrap();
        let back: String = serde_json::from_str(&printable(&json)).unwrap();
        assert_eq!(back, "x\u{202e}\u{85}y");
    }

    /// The rules file's own samples: each `catch` loses every secret its rule sees in it,
    /// each `keep` passes every rule untouched. A rule without both is refused.
    #[test]
    fn every_rule_catches_its_samples_and_keeps_the_rest() {
        let mut ids = std::collections::BTreeSet::new();
        for r in rule_defs() {
            assert!(ids.insert(r.id.as_str()), "rule id {} is used twice", r.id);
            let re = regex::Regex::new(&r.regex).unwrap_or_else(|e| panic!("{}: {e}", r.id));
            assert!(!r.keywords.is_empty(), "{}: no keywords", r.id);
            assert!(
                r.keywords.iter().all(|k| *k == k.to_ascii_lowercase()),
                "{}: keywords are matched against lower-cased text",
                r.id
            );
            assert!(
                !r.catch.is_empty() && !r.keep.is_empty(),
                "{}: needs samples of both kinds",
                r.id
            );
            for sample in &r.catch {
                let secrets: Vec<&str> = re
                    .captures_iter(sample)
                    .flat_map(|c| {
                        r.groups
                            .iter()
                            .filter_map(|g| c.get(*g).map(|m| m.as_str()))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                assert!(
                    !secrets.is_empty(),
                    "{}: does not match its sample {sample:?}",
                    r.id
                );
                let out = redact(sample);
                assert!(out.contains(MARK), "{}: {sample:?} -> {out:?}", r.id);
                for secret in secrets {
                    assert!(
                        !out.contains(secret),
                        "{}: {secret:?} survived in {out:?}",
                        r.id
                    );
                }
            }
            for sample in &r.keep {
                assert_eq!(
                    redact(sample),
                    sample.as_str(),
                    "{}: a keep sample changed",
                    r.id
                );
            }
        }
        assert!(ids.len() >= 30, "only {} rules", ids.len());
    }

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
                "posting to hooks.slack.com/[REDACTED]",
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
                "-----BEGIN OPENSSH PRIVATE KEY-----[REDACTED]",
            ),
            // Issue 14: each of these passed through before.
            ("token glpat-xxxxxxxxxxxxxxxxxxxx expired", "token [REDACTED] expired"),
            (
                "id eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlX2hlcmU ok",
                "id [REDACTED] ok",
            ),
            (
                r#"{"auths": {"r.example.com": {"auth": "dXNlcjpwdw=="}}}"#,
                r#"{"auths": {"r.example.com": {"auth": "[REDACTED]"}}}"#,
            ),
            (
                "//registry.npmjs.org/:_authToken=f1e2d3c4-b5a6",
                "//registry.npmjs.org/:_authToken=[REDACTED]",
            ),
            (
                "sshpass -p 'hunter 2' ssh root@h",
                "sshpass -p [REDACTED] ssh root@h",
            ),
            (
                "curl -u admin:s3cr3t https://nexus/x",
                "curl -u admin:[REDACTED] https://nexus/x",
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
