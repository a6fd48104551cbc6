//! Issue 28: completion in the real shells. Each command's script, as `--generate`
//! prints it (and scripts/install installs it), is loaded into Debian's bash (with its
//! bash-completion), zsh and fish, run in a pseudo-terminal by completest-pty (clap's
//! own harness), and TAB is pressed: actions, options after an action, and enumerated
//! values must be offered.

use completest_pty::{Runtime, Term};

use crate::util::bin;

fn script(tool: &str, shell: &str) -> String {
    let out = std::process::Command::new(bin(tool))
        .args(["--generate", shell])
        .output()
        .unwrap();
    assert!(out.status.success(), "{tool} --generate {shell}");
    String::from_utf8(out.stdout).unwrap()
}

/// The screen after typing `input` (ending in TAB) into `shell` with `tool`'s script
/// loaded. The harness stops reading when the shell has been quiet for a moment; a
/// loaded machine can be slower than that, so a screen that lacks what is wanted is
/// read again (up to 5 times), and the last one is what the test judges.
fn complete(shell: &str, tool: &str, input: &str, wanted: &[&str]) -> String {
    let bin_root = bin(tool).parent().unwrap().to_path_buf();
    let mut screen = String::new();
    for _ in 0..5 {
        let home = tempfile::tempdir().unwrap();
        let home = home.path().join(shell);
        let mut rt: Box<dyn Runtime> = match shell {
            "bash" => Box::new(completest_pty::BashRuntime::new(bin_root.clone(), home).unwrap()),
            "zsh" => Box::new(completest_pty::ZshRuntime::new(bin_root.clone(), home).unwrap()),
            "fish" => Box::new(completest_pty::FishRuntime::new(bin_root.clone(), home).unwrap()),
            other => panic!("{other}"),
        };
        rt.register(tool, &script(tool, shell)).unwrap();
        screen = rt
            .complete(input, &Term::new().width(200).height(60))
            .unwrap_or_else(|e| panic!("{shell} could not run ({e}): scripts/test installs bash-completion, zsh and fish"));
        if wanted.iter().all(|w| screen.contains(w)) {
            break;
        }
    }
    screen
}

fn offers(shell: &str, tool: &str, input: &str, wanted: &[&str], unwanted: &[&str]) {
    let screen = complete(shell, tool, input, wanted);
    for w in wanted {
        assert!(
            screen.contains(w),
            "{shell}: `{input}` does not offer {w}:\n{screen}"
        );
    }
    for u in unwanted {
        assert!(
            !screen.contains(u),
            "{shell}: `{input}` offers {u}:\n{screen}"
        );
    }
}

/// What every shell must complete, for every command: the actions (subcommands), an
/// action's own options, and `--category`'s values.
#[test]
fn actions_options_and_values_complete_in_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        // Actions after the build id; options of an action after it.
        offers(
            shell,
            "update-state",
            "update-state img-42 \t\t",
            &["complete", "rollback", "resource"],
            &[],
        );
        offers(
            shell,
            "update-state",
            "update-state img-42 fail 10 --\t\t",
            &["--error-file", "--category", "--exit-code"],
            &["--reason"],
        );
        offers(
            shell,
            "update-state",
            "update-state img-42 fail 10 --category \t\t",
            &["transient", "persistent", "unknown"],
            &[],
        );
        offers(
            shell,
            "update-state",
            "update-state img-42 resource add --\t\t",
            &["--cleanup", "--prop"],
            &[],
        );
        offers(
            shell,
            "sync-cloud",
            "sync-cloud push --\t\t",
            &["--all", "--remote"],
            &[],
        );
        offers(
            shell,
            "sync-cloud",
            "sync-cloud \t\t",
            &["push", "pull", "backup"],
            &[],
        );
        offers(
            shell,
            "concourse-resource",
            "concourse-resource check --\t\t",
            &["--help"],
            &[],
        );
        offers(
            shell,
            "monitor",
            "monitor \t\t",
            &["status", "metrics", "gc"],
            &[],
        );
        offers(
            shell,
            "monitor",
            "monitor gc --\t\t",
            &["--older-than", "--dry-run"],
            &[],
        );
        offers(
            shell,
            "check-state",
            "check-state img-42 --\t\t",
            &["--resources", "--json"],
            &[],
        );
        offers(
            shell,
            "run-state",
            "run-state img-42 --\t\t",
            &["--lease-ttl", "--next"],
            &[],
        );
        offers(
            shell,
            "init-state",
            "init-state img-42 --\t\t",
            &["--cloud", "--image"],
            &[],
        );
    }
    // fish took the build id for the action: no action is offered in its place.
    offers(
        "fish",
        "update-state",
        "update-state \t\t",
        &[],
        &["rollback"],
    );
}
