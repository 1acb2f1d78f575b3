//! Opening the source file.
//!
//! Planning and (later) the snapshot read the file through a read-only
//! connection (`SQLITE_OPEN_READ_ONLY`): ferry cannot damage the source by
//! accident. Opening is lazy in SQLite, so a file that is not a database
//! only fails at the first read (`preflight` runs `PRAGMA quick_check`
//! right after opening).

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

/// Opens `path` read-only; fails if it does not exist.
pub fn open_read_only(path: &Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    // An application holding a write lock should delay us, not fail us.
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}
