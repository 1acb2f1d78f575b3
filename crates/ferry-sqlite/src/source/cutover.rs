//! The source side of a cutover: the fence (SQLite's write lock on a
//! dedicated connection, [`Fence`]), the final position read under it,
//! the `INTEGER PRIMARY KEY` sequences and exact row counts.
//!
//! The fence lives in a slot shared with [`super::SqliteSource`]: the
//! release of capture after a successful cutover removes the triggers and
//! tables inside the fence's own transaction and commits; a failed cutover
//! rolls it back; a session dropped with the fence still held rolls back
//! too, so the application's writers are never left waiting.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ferry_core::schema::quote_ident;
use ferry_core::source::{self, SequenceValue};
use ferry_core::{ChangeLogSeq, Error, TableId};
use tracing::warn;

use super::ddl::rowid_alias;
use super::{FENCE_WAIT, blocking, open_ro, take_fence};
use crate::capture::{self, sql_error};
use crate::catalog::SCHEMA;
use crate::fence::Fence;
use crate::reader;

/// The source side of a cutover.
#[derive(Debug)]
pub struct SqliteCutover {
    pub(super) path: PathBuf,
    pub(super) fence: Arc<Mutex<Option<Fence>>>,
}

impl Drop for SqliteCutover {
    fn drop(&mut self) {
        // A cutover that ended without unfence or release (the pipeline
        // stopped first): never leave the application's writers blocked.
        // Rolling back a transaction that wrote nothing is immediate.
        if let Some(f) = take_fence(&self.fence) {
            warn!("cutover session ended with the source fenced; releasing the write lock");
            if let Err(e) = f.abort() {
                warn!(error = %e, "releasing the write lock failed");
            }
        }
    }
}

/// The sequences of the captured tables: each `INTEGER PRIMARY KEY`, at
/// the highest rowid handed out (AUTOINCREMENT: `sqlite_sequence` too).
fn read_sequences(path: &Path) -> Result<Vec<SequenceValue>, Error> {
    let conn = open_ro(path)?;
    let tracked = capture::load_tracked(&conn)?;
    let mut out = Vec::new();
    for t in tracked.values() {
        let q = quote_ident(&t.name);
        let has_rowid = conn
            .prepare(&format!("SELECT rowid FROM {q} LIMIT 0"))
            .is_ok();
        let schema = t.schema();
        let Some(k) = rowid_alias(has_rowid, &schema) else {
            continue;
        };
        let col = &schema.columns[k].name;
        let ctx = || format!("reading the highest {}.{col}", t.id());
        let max: Option<i64> = conn
            .query_row(
                &format!("SELECT max({}) FROM {q}", quote_ident(col)),
                [],
                |r| r.get(0),
            )
            .map_err(sql_error(ctx()))?;
        let seq: Option<i64> = rusqlite::OptionalExtension::optional(conn.query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = ?1",
            [&t.name],
            |r| r.get(0),
        ))
        .map_err(sql_error(ctx()))?;
        let last = max.into_iter().chain(seq).max().filter(|v| *v > 0);
        out.push(SequenceValue {
            id: TableId::new(SCHEMA, format!("{}_{col}_seq", t.name)),
            owned_by: Some((t.id(), col.clone())),
            last_value: last.unwrap_or(1),
            is_called: last.is_some(),
        });
    }
    Ok(out)
}

impl source::Cutover<ChangeLogSeq> for SqliteCutover {
    fn fence_description(&self) -> String {
        format!(
            "hold {}'s write lock (BEGIN IMMEDIATE) until the cutover ends: the application's writers wait",
            self.path.display()
        )
    }

    async fn fence(&mut self) -> Result<(), Error> {
        let (path, slot) = (self.path.clone(), self.fence.clone());
        blocking("fencing the source", move || {
            let fence = Fence::acquire(&path, FENCE_WAIT)?;
            let old = slot
                .lock()
                .map(|mut s| s.replace(fence))
                .map_err(|_| Error::transient("the fence slot was poisoned"))?;
            if let Some(old) = old {
                let _ = old.abort();
            }
            Ok(())
        })
        .await
    }

    async fn unfence(&mut self) -> Result<(), Error> {
        let slot = self.fence.clone();
        blocking("unfencing the source", move || match take_fence(&slot) {
            Some(f) => f.abort(),
            None => Ok(()),
        })
        .await
    }

    async fn final_position(&mut self) -> Result<ChangeLogSeq, Error> {
        let held = self
            .fence
            .lock()
            .ok()
            .and_then(|f| f.as_ref().map(Fence::final_position));
        if let Some(p) = held {
            return Ok(p);
        }
        let path = self.path.clone();
        blocking("reading the change-log head", move || {
            reader::head(&open_ro(&path)?)
        })
        .await
    }

    async fn sequences(&mut self) -> Result<Vec<SequenceValue>, Error> {
        let path = self.path.clone();
        blocking("reading the sequences", move || read_sequences(&path)).await
    }

    async fn count_rows(&mut self, table: &TableId) -> Result<u64, Error> {
        let (path, table) = (self.path.clone(), table.clone());
        blocking("counting rows", move || {
            let n: i64 = open_ro(&path)?
                .query_row(
                    &format!("SELECT count(*) FROM {}", quote_ident(&table.name)),
                    [],
                    |r| r.get(0),
                )
                .map_err(sql_error(format!("counting {table}")))?;
            Ok(n.max(0) as u64)
        })
        .await
    }
}
