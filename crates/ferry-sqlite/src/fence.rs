//! Cutover fence: the source's write lock, held from the final position
//! until the cutover completes.
//!
//! [`Fence::acquire`] opens a dedicated connection and runs `BEGIN
//! IMMEDIATE`: SQLite's single write lock. From then on the application's
//! writers wait (up to their busy timeout) instead of committing changes
//! ferry would not carry; readers go on. The final position is the
//! change-log head read under the lock: no entry can follow it while the
//! fence is held. ferry drains the stream to that position, then either
//! removes change capture inside the same transaction
//! ([`Fence::remove_capture_and_release`]) or just releases
//! ([`Fence::release`]). Dropping the fence releases it too (rollback).
//!
//! Keep the fence short: an application without a busy timeout gets
//! `SQLITE_BUSY` while it is held; one with a timeout shorter than the
//! cutover gets it when the timeout expires.

use std::path::Path;
use std::time::Duration;

use ferry_core::{ChangeLogSeq, Error};
use rusqlite::Connection;

use crate::capture::{self, sql_error};
use crate::reader;

/// The held write lock.
#[derive(Debug)]
pub struct Fence {
    conn: Connection,
    final_position: ChangeLogSeq,
}

impl Fence {
    /// Takes the write lock, waiting up to `wait` for an application write
    /// transaction in progress to finish.
    pub fn acquire(path: &Path, wait: Duration) -> Result<Fence, Error> {
        let conn = capture::open_read_write(path)
            .map_err(sql_error(format!("opening {}", path.display())))?;
        conn.busy_timeout(wait)
            .map_err(sql_error("setting the busy timeout"))?;
        conn.execute_batch("BEGIN IMMEDIATE").map_err(|e| {
            sql_error(format!("taking the write lock of {}", path.display()))(e).with_fix(format!(
                "an application transaction held the write lock for more than {wait:?}; retry the cutover"
            ))
        })?;
        let final_position = reader::head(&conn)?;
        tracing::info!(final_position = %final_position, "source writes fenced");
        Ok(Fence {
            conn,
            final_position,
        })
    }

    /// The last change-log position; nothing can follow it while fenced.
    pub fn final_position(&self) -> ChangeLogSeq {
        self.final_position
    }

    /// Ends the fence; the application's writers proceed.
    pub fn release(self) -> Result<(), Error> {
        self.conn
            .execute_batch("COMMIT")
            .map_err(sql_error("releasing the write lock"))?;
        tracing::info!("source writes released");
        Ok(())
    }

    /// Ends the fence after a failed cutover (`ROLLBACK`); the
    /// application's writers proceed and capture goes on.
    pub fn abort(self) -> Result<(), Error> {
        self.conn
            .execute_batch("ROLLBACK")
            .map_err(sql_error("releasing the write lock"))?;
        tracing::info!("source writes released (cutover abandoned)");
        Ok(())
    }

    /// Removes ferry's triggers and tables, then releases: the first write
    /// after the fence is no longer captured (nor needs to be).
    pub fn remove_capture_and_release(self) -> Result<(), Error> {
        capture::remove_all(&self.conn)?;
        self.release()
    }
}
