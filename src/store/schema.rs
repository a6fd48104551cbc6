//! Schema migrations: an ordered list, applied in one transaction each, with the version
//! kept in `PRAGMA user_version`. A database written by a newer buildstate is refused
//! rather than misread.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use crate::{Error, Result};

/// `PRAGMA application_id` of a buildstate database ("BSt1"), so that another SQLite file
/// passed by mistake is refused instead of having tables added to it.
const APPLICATION_ID: i32 = 0x4253_7431;

/// Migration `i` brings the schema from version `i` to `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
    include_str!("v1.sql"),
    include_str!("v2.sql"),
    include_str!("v3.sql"),
    include_str!("v4.sql"),
    include_str!("v5.sql"),
    include_str!("v6.sql"),
    include_str!("v7.sql"),
    include_str!("v8.sql"),
    include_str!("v9.sql"),
    include_str!("v10.sql"),
    include_str!("v11.sql"),
    include_str!("v12.sql"),
    include_str!("v13.sql"),
    include_str!("v14.sql"),
];

/// The schema version this build of buildstate writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Set connection pragmas and migrate. Safe to call from many processes at once.
pub(super) fn prepare(conn: &mut Connection, path: &Path) -> Result<()> {
    // WAL is persistent once set; only the first opener pays for the switch.
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Database {
                path: path.to_path_buf(),
                message: format!("cannot switch to WAL journaling (got '{mode}'): put the database on a local disk"),
            });
        }
    }
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
    // Each command is a short-lived process and usually the only connection, so by
    // default every exit would checkpoint the WAL into the database and delete it: four
    // extra fsyncs per write. Commits are already durable in the WAL (synchronous=FULL);
    // checkpoints happen when it grows (see Store::trim_wal).
    // The WAL is kept small by Store::trim_wal instead.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )?;

    let (version, app_id) = versions(conn)?;
    if version == SCHEMA_VERSION && app_id == APPLICATION_ID {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Re-read under the write lock: another process may have migrated meanwhile.
    let (version, app_id) = versions(&tx)?;
    let tables: i64 = tx.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table'",
        [],
        |r| r.get(0),
    )?;
    if app_id != APPLICATION_ID && (app_id != 0 || tables > 0) {
        return Err(Error::Database {
            path: path.to_path_buf(),
            message: "this is not a buildstate database (it already holds other tables): pass another --db".into(),
        });
    }
    if version > SCHEMA_VERSION {
        return Err(Error::Database {
            path: path.to_path_buf(),
            message: format!(
                "written by a newer buildstate (schema version {version}; this one knows up to {SCHEMA_VERSION}): upgrade buildstate, or pass another --db"
            ),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql).map_err(|e| Error::Database {
            path: path.to_path_buf(),
            message: format!("migration to schema version {} failed: {e}", i + 1),
        })?;
    }
    tx.execute_batch(&format!(
        "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION};"
    ))?;
    tx.commit()?;
    Ok(())
}

fn versions(conn: &Connection) -> Result<(i64, i32)> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let app_id: i32 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    Ok((version, app_id))
}
