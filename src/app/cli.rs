//! What every binary shares: the common flags, where the database lives by default,
//! and how results and errors are printed and turned into exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::environment::Settings;
use crate::remote::Remote;
use crate::store::Store;
use crate::sync::Writer;
use crate::{exit, Error, Result};

/// Flags every binary takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// The SQLite database [default: $XDG_STATE_HOME/buildstate/buildstate.db,
    /// or ~/.local/state/buildstate/buildstate.db]
    #[arg(long, value_name = "PATH", env = "BUILDSTATE_DB", global = true)]
    pub db: Option<PathBuf>,

    /// Print JSON on stdout instead of text (errors too, as {"error": {...}})
    #[arg(long, global = true)]
    pub json: bool,

    /// Remote mode: every write pulls the build from this remote and pushes it back with
    /// compare-and-swap; reads pull first (s3://, az://, gs://, file:///; docs/sync.md)
    #[arg(long, value_name = "URL", env = "BUILDSTATE_REMOTE", global = true)]
    pub remote: Option<String>,
}

impl Common {
    pub fn db_path(&self) -> PathBuf {
        self.db
            .clone()
            .unwrap_or_else(crate::environment::default_db_path)
    }

    /// Open the database, creating it if needed: init-state only.
    pub fn create(&self) -> Result<Store> {
        Store::open_with(&self.db_path(), settings()?.busy_timeout)
    }

    /// The remote named by --remote / BUILDSTATE_REMOTE, if any.
    pub fn open_remote(&self) -> Result<Option<Remote>> {
        self.remote
            .as_deref()
            .map(|url| Remote::open(url, settings()?.remote.clone()))
            .transpose()
    }

    /// The store and, in remote mode, the remote its writes go through. In remote mode
    /// the local database is a cache of the remote and is created when missing; without
    /// a remote it must exist (see [`Common::open`]). `create`: init-state's right to
    /// create a database in local mode.
    pub fn writer(&self, create: bool) -> Result<Writer> {
        crate::session::open(crate::session::Open {
            db: self.db_path(),
            remote: self.open_remote()?,
            busy_timeout: settings()?.busy_timeout,
            create,
            tool: "buildstate",
        })
    }

    /// Open an existing database. A missing file is an error (exit 9): a mistyped
    /// `--db` must neither read as "no such build, start it" nor leave a new file behind.
    pub fn open(&self) -> Result<Store> {
        Store::open_existing(&self.db_path(), settings()?.busy_timeout)
    }
}

/// The settings this command runs with: resolved from the environment once, by
/// [`parse_from`], before the command does anything.
static SETTINGS: std::sync::OnceLock<Settings> = std::sync::OnceLock::new();

/// The settings [`parse_from`] resolved (resolved now when it did not run, as in a
/// test of a command's `run`).
pub fn settings() -> Result<&'static Settings> {
    if let Some(s) = SETTINGS.get() {
        return Ok(s);
    }
    let s = Settings::from_env()?;
    Ok(SETTINGS.get_or_init(|| s))
}

/// Set by the all-in-one `buildstate` executable when it was run as `buildstate COMMAND
/// ARGS...`: the command's arguments then start one place later.
static SHIFTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// `buildstate COMMAND ARGS...`: from now on [`args`] leaves out `buildstate`.
pub fn shift_command_name() {
    let _ = SHIFTED.set(true);
}

/// The command line as the running command sees it: its name first, then its arguments
/// (also when it runs inside the all-in-one `buildstate` executable).
pub fn args() -> Vec<std::ffi::OsString> {
    let skip = usize::from(SHIFTED.get().copied().unwrap_or(false));
    std::env::args_os().skip(skip).collect()
}

/// `COMMAND --generate bash|zsh|fish|man`: print the command's shell completion script or
/// man page (roff), made from the same clap definition as `--help`, and exit 0; what
/// `scripts/install` installs. `--generate man DIR` writes the command's page and one per
/// subcommand (`update-state-fail.1`, which `update-state.1` refers to) into DIR.
/// `None` when the command line asks for something else.
pub fn generate(cmd: &clap::Command, tool: &'static str) -> Option<ExitCode> {
    let mut args = args().into_iter().skip(1);
    if args.next().is_none_or(|a| a != "--generate") {
        return None;
    }
    let what = args.next().map(|a| a.to_string_lossy().into_owned());
    let mut cmd = cmd.clone().name(tool).bin_name(tool);
    let rest: Vec<std::ffi::OsString> = args.collect();
    let (dir, extra) = match (what.as_deref(), rest.as_slice()) {
        (_, []) => (None, None),
        (Some("man"), [d]) => (Some(d), None),
        (Some("man"), [_, e, ..]) | (_, [e, ..]) => (None, Some(e)),
    };
    if let Some(extra) = extra {
        eprintln!(
            "{tool}: error: --generate takes one of bash, zsh, fish or man (and for man, one folder), not also '{}'",
            crate::redact::echo(&extra.to_string_lossy())
        );
        return Some(ExitCode::from(exit::USAGE as u8));
    }
    if let Some(dir) = dir {
        let written = man_pages(cmd, std::path::Path::new(&dir));
        return Some(finish(tool, false, written.map(|()| exit::OK)));
    }
    let mut buf: Vec<u8> = Vec::new();
    let shell = match what.as_deref() {
        Some("bash") => Some(clap_complete::Shell::Bash),
        Some("zsh") => Some(clap_complete::Shell::Zsh),
        Some("fish") => Some(clap_complete::Shell::Fish),
        Some("man") => None,
        other => {
            eprintln!(
                "{tool}: error: --generate takes bash, zsh, fish or man, not '{}'",
                crate::redact::echo(other.unwrap_or(""))
            );
            return Some(ExitCode::from(exit::USAGE as u8));
        }
    };
    let rendered = match shell {
        Some(shell) => {
            clap_complete::generate(shell, &mut cmd, tool, &mut buf);
            buf = completion_fixes(shell, &cmd, tool, &String::from_utf8_lossy(&buf)).into_bytes();
            Ok(())
        }
        None => {
            cmd = cmd.disable_help_subcommand(true);
            cmd.build();
            man_page(&cmd, &lead(&cmd), &mut buf)
        }
    };
    let written = rendered
        .map_err(|source| crate::Error::Io {
            path: "man page".into(),
            source,
        })
        .and_then(|()| {
            write_out(
                format_args!("{}", String::from_utf8_lossy(&buf)),
                false,
                false,
            )
        });
    Some(finish(tool, false, written.map(|()| exit::OK)))
}

/// The man page of a built `cmd` (a subcommand's names the command it belongs to:
/// `update-state-fail`, synopsis `update-state fail`): clap_mangen's sections, with a
/// date (`SOURCE_DATE_EPOCH` when set, for a reproducible build; else today) and a
/// synopsis that shows each option's value.
fn man_page(cmd: &clap::Command, lead: &str, out: &mut Vec<u8>) -> std::io::Result<()> {
    let date = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or_else(std::time::SystemTime::now, |secs| {
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs)
        });
    let date = crate::time::format(date)[..10].to_string();
    let man = clap_mangen::Man::new(cmd.clone())
        .date(date)
        .source(format!("buildstate {}", env!("CARGO_PKG_VERSION")))
        .manual("buildstate manual");
    let mut page = Vec::new();
    sections(&man, cmd, lead, &mut page)?;
    // Each section comes with roff's preamble (the apostrophe string): once is enough.
    // Before an option's possible values clap_mangen breaks, skips a line and breaks
    // again, which mandoc warns of: one vertical space says the same.
    let page = String::from_utf8_lossy(&page).replace(".br\n\n.br\n", ".sp\n");
    let mut seen = std::collections::HashSet::new();
    for line in page.lines() {
        let preamble = line.starts_with(".ie \\n(.g .ds Aq") || line.starts_with(".el .ds Aq");
        if preamble && !seen.insert(line.to_string()) {
            continue;
        }
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    Ok(())
}

fn sections(
    man: &clap_mangen::Man,
    cmd: &clap::Command,
    lead: &str,
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    man.render_title(out)?;
    man.render_name_section(out)?;
    out.extend_from_slice(synopsis(cmd, lead).as_bytes());
    man.render_description_section(out)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(out)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(out)?;
    }
    if cmd.get_after_long_help().is_some() || cmd.get_after_help().is_some() {
        man.render_extra_section(out)?;
    }
    if cmd.get_version().is_some() {
        man.render_version_section(out)?;
    }
    Ok(())
}

/// What clap_complete's scripts get wrong for our commands, put right (each fix is held
/// to the real shell by tests/it/completion.rs; docs/decisions.md):
/// - bash: the script's case arms for a hyphenated command's subcommands are named
///   `update__subcmd__state__subcmd__fail` while its loop looks for
///   `update__state__subcmd__fail`, so nothing after an action completes (an open
///   upstream bug, clap-rs/clap#6421);
/// - fish: a command whose build id comes before its action (update-state) had the build
///   id taken for the action: no action's options completed after it, and the actions
///   were offered in the build id's place.
fn completion_fixes(
    shell: clap_complete::Shell,
    cmd: &clap::Command,
    tool: &str,
    script: &str,
) -> String {
    let leading_positional =
        cmd.get_positionals().next().is_some() && cmd.get_subcommands().next().is_some();
    match shell {
        clap_complete::Shell::Bash => {
            let wrong = format!("{}__subcmd__", tool.replace('-', "__subcmd__"));
            let right = format!("{}__subcmd__", tool.replace('-', "__"));
            script.replace(&wrong, &right)
        }
        clap_complete::Shell::Fish if leading_positional => {
            let f = tool.replace('-', "_");
            let parsed = format!(
                "    argparse -s (__fish_{f}_global_optspecs) -- $cmd 2>/dev/null\n    or return\n"
            );
            // The first word after the options is the build id, not the action.
            let skip = format!("{parsed}    set -e argv[1]\n");
            let has_id = format!(
                "# Whether the build id is typed (the actions come after it).\nfunction __fish_{f}_has_build_id\n    set -l cmd (commandline -opc)\n    set -e cmd[1]\n    argparse -s (__fish_{f}_global_optspecs) -- $cmd 2>/dev/null\n    or return 1\n    set -q argv[1]\nend\n\nfunction __fish_{f}_using_subcommand\n"
            );
            let actions = format!("-n \"__fish_{f}_needs_command\" -a ");
            let after_id =
                format!("-n \"__fish_{f}_needs_command; and __fish_{f}_has_build_id\" -a ");
            script
                .replacen(&parsed, &skip, 1)
                .replacen(
                    &format!("function __fish_{f}_using_subcommand\n"),
                    &has_id,
                    1,
                )
                .replace(&actions, &after_id)
        }
        _ => script.to_string(),
    }
}

/// A command's own name, in bold, as its synopsis starts.
fn lead(cmd: &clap::Command) -> String {
    format!("\\fB{}\\fR", roff_text(cmd.get_name()))
}

/// Text as roff shows it literally.
fn roff_text(text: &str) -> String {
    text.replace('\\', "\\e")
        .replace('-', "\\-")
        .replace('\'', "\\(aq")
}

/// An argument's value as the synopsis shows it (`PATH`, in italics).
fn value(a: &clap::Arg) -> String {
    let names: Vec<String> = a
        .get_value_names()
        .map(|v| v.iter().map(|n| n.to_string()).collect())
        .unwrap_or_else(|| vec![a.get_id().as_str().to_uppercase()]);
    format!("\\fI{}\\fR", roff_text(&names.join(" ")))
}

/// The positionals of `cmd` as the synopsis shows them: ` <BUILD_ID> [STATE]`.
fn positionals(cmd: &clap::Command) -> String {
    let mut line = String::new();
    for a in cmd.get_positionals().filter(|a| !a.is_hide_set()) {
        let many = a.get_num_args().is_some_and(|n| n.max_values() > 1);
        let dots = if many { "..." } else { "" };
        if a.is_required_set() {
            line.push_str(&format!(" <{}>{dots}", value(a)));
        } else {
            line.push_str(&format!(" [{}]{dots}", value(a)));
        }
    }
    line
}

/// `.SH SYNOPSIS` of a built `cmd`, after `lead` (the command's name, and for a
/// subcommand, the commands and positionals before it: `update-state <BUILD_ID> fail`):
/// each option with its value (`[--db PATH]`), its positionals and its subcommand.
fn synopsis(cmd: &clap::Command, lead: &str) -> String {
    let mut line = lead.to_string();
    for a in cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !a.is_positional())
    {
        let flag = match (a.get_short(), a.get_long()) {
            (Some(s), Some(l)) => format!("\\fB\\-{s}\\fR|\\fB\\-\\-{}\\fR", roff_text(l)),
            (Some(s), None) => format!("\\fB\\-{s}\\fR"),
            (None, Some(l)) => format!("\\fB\\-\\-{}\\fR", roff_text(l)),
            (None, None) => continue,
        };
        let takes = a.get_num_args().is_some_and(|n| n.takes_values());
        let shown = if takes {
            format!("{flag} {}", value(a))
        } else {
            flag
        };
        let many = matches!(
            a.get_action(),
            clap::ArgAction::Append | clap::ArgAction::Count
        );
        let dots = if many { "..." } else { "" };
        if a.is_required_set() {
            line.push_str(&format!(" {shown}{dots}"));
        } else {
            line.push_str(&format!(" [{shown}]{dots}"));
        }
    }
    line.push_str(&positionals(cmd));
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        let what = cmd.get_subcommand_value_name().unwrap_or("COMMAND");
        if cmd.is_subcommand_required_set() {
            line.push_str(&format!(" <\\fI{}\\fR>", roff_text(what)));
        } else {
            line.push_str(&format!(" [\\fI{}\\fR]", roff_text(what)));
        }
    }
    format!(".SH SYNOPSIS\n{line}\n")
}

/// Write the man page of `cmd` and of each of its subcommands, at every depth, into `dir`.
fn man_pages(cmd: clap::Command, dir: &std::path::Path) -> crate::Result<()> {
    fn walk(cmd: &clap::Command, lead: &str, dir: &std::path::Path) -> crate::Result<()> {
        let name = cmd.get_display_name().unwrap_or_else(|| cmd.get_name());
        let path = dir.join(format!("{name}.1"));
        let mut buf = Vec::new();
        man_page(cmd, lead, &mut buf)
            .and_then(|()| std::fs::write(&path, &buf))
            .map_err(|source| crate::Error::Io {
                path: path.clone(),
                source,
            })?;
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let lead = format!(
                "{lead}{} \\fB{}\\fR",
                positionals(cmd),
                roff_text(sub.get_name())
            );
            walk(sub, &lead, dir)?;
        }
        Ok(())
    }
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    walk(&cmd, &lead(&cmd), dir)
}

/// Parse the command line. Usage errors follow `--json` like every other error: with
/// it, stdout carries `{"error": {"kind": "usage", ...}}`; the message goes to stderr and
/// the exit code is 2. `--help` and `--version` print as usual.
pub fn parse<T: clap::Parser>(tool: &'static str) -> std::result::Result<T, ExitCode> {
    parse_from(tool, args())
}

/// Whether the command line asks for `--json` (before any `--`).
fn json_asked(argv: &[std::ffi::OsString]) -> bool {
    argv.iter()
        .skip(1)
        .take_while(|a| *a != "--")
        .any(|a| a == "--json")
}

/// [`parse`] of `argv` (a command that rewrites its arguments first, as the Concourse
/// resource does for the name it was installed under).
pub fn parse_from<T: clap::Parser>(
    tool: &'static str,
    argv: Vec<std::ffi::OsString>,
) -> std::result::Result<T, ExitCode> {
    let mut cmd = hide_env_values(T::command());
    if let Some(code) = generate(&cmd, tool) {
        return Err(code);
    }
    match cmd
        .try_get_matches_from_mut(&argv)
        .and_then(|m| T::from_arg_matches(&m))
    {
        Ok(args) => match settings() {
            Ok(_) => Ok(args),
            Err(e) => Err(finish(tool, json_asked(&argv), Err(e))),
        },
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                let code = if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    exit::USAGE
                } else {
                    exit::OK
                };
                return Err(ExitCode::from(code as u8));
            }
            let json = json_asked(&argv);
            // clap quotes the offending argument, which may be a secret typed in the
            // wrong place.
            // clap quotes the offending value whole: cut long lines as errors elsewhere do.
            let mut message: String = crate::redact::redact(&e.render().to_string())
                .lines()
                .map(|l| {
                    // clap lists in the usage line the options it found, also those that
                    // came from the environment (BUILDSTATE_DB, BUILDSTATE_REMOTE), which
                    // then read as if they were required: only what was typed is shown.
                    let l = if l.starts_with("Usage:") {
                        let mut l = l.to_string();
                        for (flag, shown) in
                            [("--db", " --db <PATH>"), ("--remote", " --remote <URL>")]
                        {
                            if !typed(&argv, flag) {
                                l = l.replacen(shown, "", 1);
                            }
                        }
                        l
                    } else {
                        l.to_string()
                    };
                    let n = l.chars().count();
                    if n > 4 * crate::redact::MAX_ECHO {
                        let head: String = l.chars().take(4 * crate::redact::MAX_ECHO).collect();
                        format!("{head}... ({n} characters)\n")
                    } else {
                        format!("{l}\n")
                    }
                })
                .collect();
            // run-state's command goes after `--`; without it, its first word looks like
            // an unknown argument.
            if tool == "run-state"
                && e.kind() == ErrorKind::UnknownArgument
                && !argv.iter().any(|a| a == "--")
            {
                message.push_str(
                    "tip: the command to run goes after --: run-state BUILD_ID STATE -- COMMAND [ARGS...]\n",
                );
            }
            // A value read from the environment looks typed: say where it came from.
            let env_tip = env_source_tip(&cmd, &e, &argv);
            if let Some(tip) = &env_tip {
                message.push_str(tip);
            }
            if json {
                // The error and what it names (clap puts missing arguments on the lines
                // after the first), up to the usage line.
                let first = message
                    .lines()
                    .take_while(|l| {
                        !l.starts_with("Usage:") && !l.starts_with("For more information")
                    })
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ")
                    .trim_start_matches("error: ")
                    .to_string()
                    + &env_tip.map_or_else(String::new, |t| format!(" ({})", t.trim()));
                let body = serde_json::json!({
                    "error": {"kind": "usage", "message": first, "exit_code": exit::USAGE}
                });
                let _ = outln(format_args!("{body}"));
            }
            eprint!("{tool}: {message}");
            Err(ExitCode::from(exit::USAGE as u8))
        }
    }
}

/// Whether the command line itself gives `flag` (`--db PATH` or `--db=PATH`), before
/// any `--` that starts a command's own arguments.
fn typed(argv: &[std::ffi::OsString], flag: &str) -> bool {
    argv.iter().skip(1).take_while(|a| *a != "--").any(|a| {
        a.to_str()
            .is_some_and(|a| a == flag || a.strip_prefix(flag).is_some_and(|v| v.starts_with('=')))
    })
}

/// `--help` names each option's variable but never shows its value: a remote URL may
/// carry credentials, and a value from the caller's environment is not documentation.
fn hide_env_values(cmd: clap::Command) -> clap::Command {
    cmd.mut_args(|a| a.hide_env_values(true))
        .mut_subcommands(hide_env_values)
}

/// When clap refuses an option's value that the command line did not give, the value
/// came from the option's environment variable (`BUILDSTATE_DB=` set but empty, say):
/// a tip naming the variable, never its value.
fn env_source_tip(
    cmd: &clap::Command,
    e: &clap::Error,
    argv: &[std::ffi::OsString],
) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let Some(ContextValue::String(shown)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = shown.split_whitespace().next()?.strip_prefix("--")?;
    let flag = format!("--{long}");
    if typed(argv, &flag) {
        return None;
    }
    fn find<'a>(cmd: &'a clap::Command, long: &str) -> Option<&'a clap::Arg> {
        cmd.get_arguments()
            .find(|a| a.get_long() == Some(long))
            .or_else(|| cmd.get_subcommands().find_map(|c| find(c, long)))
    }
    let var = find(cmd, long)?.get_env()?;
    let value = std::env::var_os(var)?;
    let var = var.to_string_lossy();
    Some(if value.is_empty() {
        format!("tip: the value comes from {var}, which is set but empty: set it, or unset it\n")
    } else {
        format!("tip: the value comes from {var}: fix it there, or pass {flag}\n")
    })
}

/// Print a line of a command's output on stdout. A reader that went away (EPIPE: `| head`)
/// is not an error: the rest of the output is dropped silently and the command ends with
/// the code it would have had, as a well-mannered Unix tool does. Any other failure (a
/// full disk, `>/dev/full`) is [`Error::Output`] (exit 21), whose message says that
/// what was asked was done: output is only ever printed after the write it reports.
pub fn outln(args: std::fmt::Arguments<'_>) -> Result<()> {
    write_out(args, true, true)
}

/// [`outln`] without the newline.
pub fn out(args: std::fmt::Arguments<'_>) -> Result<()> {
    write_out(args, false, true)
}

/// Writes through to stdout with what must not reach a terminal as it is shown escaped
/// ([`crate::redact::printable`]): stored text (an error message with `\r\x1b[K`, a
/// name with U+202E) cannot rewrite or reorder what a person reads. JSON keeps its exact
/// text: the escape in a JSON string is the character itself.
struct Printable<W: std::io::Write>(W, Option<std::io::Error>);

impl<W: std::io::Write> std::fmt::Write for Printable<W> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0
            .write_all(crate::redact::printable(s).as_bytes())
            .map_err(|e| {
                self.1 = Some(e);
                std::fmt::Error
            })
    }
}

fn write_out(args: std::fmt::Arguments<'_>, newline: bool, printable: bool) -> Result<()> {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    let written = if printable {
        let mut p = Printable(&mut o, None);
        match std::fmt::Write::write_fmt(&mut p, args) {
            Ok(()) => Ok(()),
            Err(_) => Err(p
                .1
                .take()
                .unwrap_or_else(|| std::io::Error::other("formatting failed"))),
        }
    } else {
        o.write_fmt(args)
    };
    let written = written
        .and_then(|()| if newline { o.write_all(b"\n") } else { Ok(()) })
        .and_then(|()| o.flush());
    match written {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Error::Output(e.to_string())),
    }
}

/// A command: its name, its arguments (clap), and what it does with them.
pub trait Command: clap::Parser {
    const NAME: &'static str;
    /// Whether `--json` was asked (errors are printed as JSON too).
    fn json(&self) -> bool;
    /// Do what was asked; the exit code, after the output is printed.
    fn run(&self) -> Result<i32>;
}

/// A binary's `Command` impl and `main` in one line: `buildstate::command!("update-state",
/// run);` for an `Args` with a `common: Common` field and a `fn run(&Args) -> Result<i32>`.
#[macro_export]
macro_rules! command {
    ($name:literal, $run:ident) => {
        impl $crate::cli::Command for Args {
            const NAME: &'static str = $name;
            fn json(&self) -> bool {
                self.common.json
            }
            fn run(&self) -> $crate::Result<i32> {
                $run(self)
            }
        }

        pub fn main() -> std::process::ExitCode {
            $crate::cli::main::<Args>()
        }
    };
}

/// Every command's `main`: parse the arguments (help, version, completions and usage
/// errors end here), check the environment, run, and print any error.
pub fn main<C: Command>() -> ExitCode {
    if let Err(e) = init_logging() {
        return finish(C::NAME, false, Err(e));
    }
    match parse::<C>(C::NAME) {
        Ok(args) => finish(C::NAME, args.json(), args.run()),
        Err(code) => code,
    }
}

/// `BUILDSTATE_LOG`: diagnostics on stderr, through `tracing`. A level (`error`, `warn`,
/// `info`, `debug`, `trace`) is buildstate's own events at that level (each remote
/// request, lock waits, Slack deliveries at `debug`) and object_store's retries
/// (`info`); anything else is read as tracing-subscriber's filter directives
/// (`buildstate::remote=debug,object_store=debug`). Every line is redacted before it is
/// written, whoever wrote it. Unset: no subscriber, nothing is formatted.
fn init_logging() -> Result<()> {
    let Some(value) = std::env::var_os("BUILDSTATE_LOG") else {
        return Ok(());
    };
    let value = value.to_string_lossy().trim().to_lowercase();
    let bad = |why: String| {
        Error::InvalidInput(format!(
            "BUILDSTATE_LOG='{}': {why}: give a level (error, warn, info, debug, trace) or filter directives such as buildstate::remote=debug",
            crate::redact::echo(&value)
        ))
    };
    let directives = match value.as_str() {
        "" | "off" => return Ok(()),
        "error" | "warn" => format!("buildstate={value},object_store={value}"),
        "info" | "debug" | "trace" => format!("buildstate={value},object_store=info"),
        other if other.contains('=') => other.to_string(),
        _ => return Err(bad("not a level".into())),
    };
    let filter = tracing_subscriber::EnvFilter::builder()
        .parse(&directives)
        .map_err(|e| bad(e.to_string()))?;
    // Another subscriber already set (a test harness) is left as it is.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactedStderr)
        .with_ansi(false)
        .try_init();
    Ok(())
}

/// Where diagnostics go: stderr, one redacted write per event.
struct RedactedStderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactedStderr {
    type Writer = RedactedLine;
    fn make_writer(&'a self) -> RedactedLine {
        RedactedLine(Vec::new())
    }
}

/// One event's text, redacted and written to stderr when the formatter is done with it.
struct RedactedLine(Vec<u8>);

impl std::io::Write for RedactedLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for RedactedLine {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0);
        let shown = crate::redact::redact(&text);
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), shown.as_bytes());
    }
}

/// Print an outcome and return the process exit code. `Ok(code)` has already printed its
/// output; an error is printed here, on stderr, and as JSON on stdout with `--json`.
pub fn finish(tool: &str, json: bool, result: Result<i32>) -> ExitCode {
    let code = match result {
        Ok(code) => code,
        Err(e) => report_error(tool, json, &e),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn report_error(tool: &str, json: bool, e: &Error) -> i32 {
    let code = e.exit_code();
    if json && !matches!(e, Error::Output(_)) {
        let body = serde_json::json!({
            "error": {"kind": e.kind(), "message": e.to_string(), "exit_code": code}
        });
        let _ = outln(format_args!("{body}"));
    }
    eprintln!(
        "{tool}: error: {}",
        crate::redact::printable(&e.to_string())
    );
    code
}

/// After a write: deliver the alerts that are due, with this command's settings
/// ([`crate::session::deliver_after_write`]).
pub fn deliver_after_write(tool: &str, store: &mut Writer) {
    match settings() {
        Ok(s) => crate::session::deliver_after_write(tool, store, s),
        // Resolved before the command began: parse_from refused it then.
        Err(e) => eprintln!("{tool}: warning: Slack alerts are not sent: {e}"),
    }
}

// Value parsers with documented ranges (docs/exit-codes.md, "Ranges"): every number,
// duration and size a flag accepts is checked here, before anything is read or written,
// so that no value can overflow time arithmetic or an allocation later.

/// A duration flag: `0s` to 366 days.
pub fn duration(s: &str) -> std::result::Result<std::time::Duration, String> {
    crate::time::parse_bounded_duration(s, std::time::Duration::ZERO)
}

/// A duration flag that must be positive: 1 ms to 366 days.
pub fn positive_duration(s: &str) -> std::result::Result<std::time::Duration, String> {
    crate::time::parse_bounded_duration(s, std::time::Duration::from_millis(1))
}

/// A lease's time to live: 300 ms (room to renew it in time) to 366 days.
pub fn lease_ttl(s: &str) -> std::result::Result<std::time::Duration, String> {
    crate::time::parse_bounded_duration(s, std::time::Duration::from_millis(300))
}

/// The largest `run-state --stderr-tail`: 1 MiB (a failure message is stored with every
/// failed attempt).
pub const MAX_STDERR_TAIL: usize = 1024 * 1024;

/// `run-state --stderr-tail`: 0 to 1 MiB.
pub fn stderr_tail(s: &str) -> std::result::Result<usize, String> {
    s.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| *n <= MAX_STDERR_TAIL)
        .ok_or_else(|| {
            format!(
                "'{}': give a number of bytes from 0 to {MAX_STDERR_TAIL}",
                crate::redact::echo(s)
            )
        })
}

/// `monitor check --factor`: a number from 1 to 1000.
pub fn factor(s: &str) -> std::result::Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|f| f.is_finite() && (1.0..=1000.0).contains(f))
        .ok_or_else(|| format!("'{}': give a number from 1 to 1000", crate::redact::echo(s)))
}

/// How long work reports where it is: `(done, total)`.
pub type Progress<'a> = &'a (dyn Fn(usize, usize) + Sync);

/// Run `work` with a progress bar on stderr when it is a terminal (not with --json).
pub fn with_progress<T>(json: bool, work: impl FnOnce(Progress<'_>) -> Result<T>) -> Result<T> {
    let bar = indicatif::ProgressBar::new(0);
    if json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let result = work(&|done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    result
}
