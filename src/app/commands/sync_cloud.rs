//! sync-cloud: share build state through object storage.

use std::path::PathBuf;

use crate::cli::Common;
use crate::remote::Remote;
use crate::sync::{self, StatusRow, Synced};
use crate::{exit, Error, Result};
use clap::Subcommand;

/// Share builds between machines through object storage, with compare-and-swap writes.
///
/// Each build is one JSON snapshot object (docs/sync.md) under the remote's prefix. A push
/// is create-only for a build the remote has never had from this database, and If-Match
/// on the ETag last seen otherwise: if another worker wrote first, the push is refused
/// (exit 15) and nothing is overwritten; pull, then push again. A pull fast-forwards a
/// build whose history the remote extends; a divergent history or another build under the
/// same id is refused (exit 16) until a person chooses a side (--take-remote / --force).
///
/// Remotes: s3://bucket/prefix (AWS_* variables; AWS_ENDPOINT for S3-compatibles),
/// az://container/prefix (AZURE_STORAGE_*), gs://bucket/prefix (GOOGLE_*), file:///path.
/// Credentials come from the environment only and are never printed.
#[derive(clap::Parser)]
#[command(
    version,
    subcommand_value_name = "COMMAND",
    after_help = "Examples:
  export BUILDSTATE_REMOTE=s3://image-builds/state
  sync-cloud push img-42
  sync-cloud pull img-42
  sync-cloud push --all
  sync-cloud status --json
  sync-cloud backup --name before-upgrade.db
  sync-cloud restore before-upgrade.db --to /tmp/restored.db"
)]
struct Args {
    #[command(subcommand)]
    command: Command,

    #[command(flatten)]
    common: Common,
}

#[derive(Subcommand)]
enum Command {
    /// Write builds to the remote (conditional on the copy last seen)
    Push {
        /// The build (or --all)
        #[arg(
            value_name = "BUILD_ID",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        build_id: Option<String>,
        /// Every local build that changed since it was last synced
        #[arg(long)]
        all: bool,
        /// A person's choice after a divergence: replace the remote copy with this
        /// database's (still conditional on the copy just read)
        #[arg(long, conflicts_with = "all")]
        force: bool,
    },
    /// Read builds from the remote, fast-forwarding local copies
    Pull {
        /// The build (or --all)
        #[arg(
            value_name = "BUILD_ID",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        build_id: Option<String>,
        /// Every build on the remote
        #[arg(long)]
        all: bool,
        /// A person's choice after a divergence: replace the local build (and its
        /// history) with the remote copy
        #[arg(long, conflicts_with = "all")]
        take_remote: bool,
    },
    /// Local vs remote serial of every build on either side
    Status,
    /// Upload a consistent copy of the whole database (SQLite online backup)
    Backup {
        /// The backup's name under the remote's backups/ [default: buildstate-TIME.db]
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
    /// Download a backup into a new database file
    Restore {
        /// The backup's name, as given to (or printed by) backup
        #[arg(value_name = "NAME")]
        name: String,
        /// Where to write it; must not exist yet
        #[arg(long, value_name = "PATH")]
        to: PathBuf,
    },
}

fn remote(args: &Args) -> Result<Remote> {
    let url = args.common.remote.as_deref().ok_or_else(|| {
        Error::InvalidInput(
            "no remote: pass --remote URL or set BUILDSTATE_REMOTE (s3://, az://, gs:// or file:///)"
                .into(),
        )
    })?;
    Remote::open(url, crate::cli::settings()?.remote.clone())
}

/// Print one line per build, or a JSON array; exit with the first failure's code.
fn report_many(args: &Args, verb: &str, results: Vec<(String, Result<Synced>)>) -> Result<i32> {
    let mut code = exit::OK;
    let mut rows = Vec::new();
    let (mut ok, mut failed, mut unchanged) = (0, 0, 0);
    for (id, r) in results {
        match r {
            Ok(s) => {
                ok += 1;
                unchanged += usize::from(s.fetched == Some(false));
                if !args.common.json {
                    crate::cli::outln(format_args!("{id}: {}", s.outcome))?;
                }
                rows.push(serde_json::to_value(&s).expect("serializes"));
            }
            Err(e) => {
                failed += 1;
                if code == exit::OK {
                    code = e.exit_code();
                }
                eprintln!("sync-cloud: {id}: error: {e}");
                rows.push(serde_json::json!({
                    "build_id": id,
                    "error": {"kind": e.kind(), "message": e.to_string(), "exit_code": e.exit_code()},
                }));
            }
        }
    }
    if args.common.json {
        crate::cli::outln(format_args!("{}", serde_json::Value::Array(rows)))?;
    } else {
        let skipped = if unchanged > 0 {
            format!(" ({unchanged} not fetched: unchanged since the last pull)")
        } else {
            String::new()
        };
        eprintln!("sync-cloud: {verb} {ok} build(s){skipped}, {failed} failed");
    }
    Ok(code)
}

fn report_one(args: &Args, s: &Synced) -> Result<()> {
    if args.common.json {
        crate::cli::outln(format_args!(
            "{}",
            serde_json::to_string(s).expect("serializes")
        ))?;
    } else {
        let serials = match (s.local_serial, s.remote_serial) {
            (Some(l), Some(r)) => format!(" (local serial {l}, remote serial {r})"),
            _ => String::new(),
        };
        crate::cli::outln(format_args!(
            "{}: {}{serials}",
            s.build_id,
            s.outcome.replace('_', " ")
        ))?;
    }
    Ok(())
}

fn run(args: &Args) -> Result<i32> {
    let remote = remote(args)?;
    match &args.command {
        Command::Push {
            build_id,
            all,
            force,
        } => {
            // What this machine journaled while the remote was away lands first.
            let mut w = crate::sync::Writer::new(args.common.open()?, Some(remote));
            crate::session::land_journal(&mut w, "buildstate");
            let (mut store, remote) = w.into_parts();
            let remote = remote.expect("given above");
            if *all {
                let results = crate::cli::with_progress(args.common.json, |p| {
                    sync::push_all(&mut store, &remote, p)
                })?;
                return report_many(args, "pushed", results);
            }
            let id = build_id.as_deref().expect("clap requires a build or --all");
            report_one(args, &sync::push(&mut store, &remote, id, *force)?)?;
        }
        Command::Pull {
            build_id,
            all,
            take_remote,
        } => {
            // A pull may create the database: it is how a fresh worker gets its state.
            let mut store = args.common.create()?;
            if *all {
                let results = crate::cli::with_progress(args.common.json, |p| {
                    sync::pull_all(&mut store, &remote, p)
                })?;
                return report_many(args, "pulled", results);
            }
            let id = build_id.as_deref().expect("clap requires a build or --all");
            crate::model::validate_build_id(id)?;
            report_one(args, &sync::pull(&mut store, &remote, id, *take_remote)?)?;
        }
        Command::Status => {
            let store = args.common.open()?;
            let rows = sync::status(&store, &remote)?;
            print_status(args, &rows)?;
        }
        Command::Backup { name } => {
            let store = args.common.open()?;
            let name = match name {
                Some(n) => n.clone(),
                None => format!(
                    "buildstate-{}.db",
                    crate::time::format(std::time::SystemTime::now()).replace(':', "")
                ),
            };
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                return Err(Error::InvalidInput(format!(
                    "invalid backup name '{name}': use letters, digits, '.', '_' or '-'"
                )));
            }
            let tmp = tempfile::tempdir().map_err(|source| Error::Io {
                path: std::env::temp_dir(),
                source,
            })?;
            let file = tmp.path().join("backup.db");
            store.backup_to(&file)?;
            let bytes = std::fs::read(&file).map_err(|source| Error::Io { path: file, source })?;
            let size = bytes.len();
            remote.put_backup(&name, bytes)?;
            if args.common.json {
                crate::cli::outln(format_args!(
                    "{}",
                    serde_json::json!({"backup": name, "bytes": size, "remote": remote.name()})
                ))?;
            } else {
                crate::cli::outln(format_args!(
                    "backed up the database to {}/backups/{name} ({size} bytes)",
                    remote.name()
                ))?;
            }
        }
        Command::Restore { name, to } => {
            if to.exists() {
                return Err(Error::InvalidInput(format!(
                    "{} exists already: restore into a new path, then move it into place",
                    to.display()
                )));
            }
            let bytes = remote.get_backup(name)?;
            let dir = to
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.into(),
                source,
            })?;
            let io = |source| Error::Io {
                path: to.clone(),
                source,
            };
            let tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
            std::fs::write(tmp.path(), &bytes).map_err(io)?;
            // Refuse anything that is not a whole buildstate database before it lands.
            let check =
                crate::store::Store::open_existing(tmp.path(), std::time::Duration::from_secs(5))?;
            check.integrity_check()?;
            let builds = check.build_serials()?.len();
            drop(check);
            tmp.persist_noclobber(to).map_err(|e| io(e.error))?;
            if args.common.json {
                crate::cli::outln(format_args!(
                    "{}",
                    serde_json::json!({"restored": name, "to": to, "builds": builds})
                ))?;
            } else {
                crate::cli::outln(format_args!(
                    "restored {name} to {} ({builds} builds)",
                    to.display()
                ))?;
            }
        }
    }
    Ok(exit::OK)
}

fn print_status(args: &Args, rows: &[StatusRow]) -> Result<()> {
    if args.common.json {
        return crate::cli::outln(format_args!(
            "{}",
            serde_json::to_string(rows).expect("serializes")
        ));
    }
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::NOTHING);
    table.set_header(["build", "local serial", "remote serial", "state"]);
    let n = |s: Option<u64>| s.map_or("-".to_string(), |s| s.to_string());
    for r in rows {
        table.add_row([
            r.build_id.clone(),
            n(r.local_serial),
            n(r.remote_serial),
            r.state.replace('_', " "),
        ]);
    }
    crate::cli::outln(format_args!("{table}"))
}

crate::command!("sync-cloud", run);
