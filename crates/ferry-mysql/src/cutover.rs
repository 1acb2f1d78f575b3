//! The source side of a cutover on MariaDB/MySQL.
//!
//! Fence: `SET GLOBAL read_only = ON`, then every session of another user
//! is ended (`KILL CONNECTION`; replication threads and ferry's own user's
//! sessions are kept) and the fence returns once they are gone, so no
//! commit can follow. Users with SUPER or READ ONLY ADMIN are not stopped
//! by `read_only`: the operator stops such writers. On managed services
//! (RDS/Aurora) `read_only` is a parameter-group setting and sessions are
//! ended with `mysql.rds_kill`: cut over without `--fence` after doing so.
//! Final position: `SHOW MASTER STATUS` after the fence (binlog heartbeats
//! carry an idle stream there). Sequences: each carried table's
//! AUTO_INCREMENT counter (or its column's maximum, whichever is larger:
//! `information_schema` may be cached) as the value of the target's
//! identity sequence of that column.

use std::time::{Duration, Instant};

use ferry_core::config::Config;
use ferry_core::source::{Cutover, SequenceValue, Source};
use ferry_core::{Error, MySqlPosition, TableId};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use tracing::info;

use crate::catalog::query_error;
use crate::snapshot::{quote, quote_table};
use crate::source::{MySqlSource, head_position};

/// How long ended source sessions may take to go away when fencing.
const SESSIONS_GONE_WITHIN: Duration = Duration::from_secs(30);

/// The source side of a cutover.
#[derive(Debug)]
pub struct MySqlCutover {
    pub(crate) conn: Conn,
    pub(crate) config: Config,
}

impl Cutover<MySqlPosition> for MySqlCutover {
    fn fence_description(&self) -> String {
        "SET GLOBAL read_only = ON; end the sessions of every other user (KILL CONNECTION). \
         Users with SUPER or READ ONLY ADMIN are not stopped by read_only, and sessions of ferry's \
         own user are not ended: stop such writers yourself. On RDS/Aurora set read_only in the \
         parameter group and end the sessions with mysql.rds_kill instead"
            .into()
    }

    async fn fence(&mut self) -> Result<(), Error> {
        self.conn
            .query_drop("SET GLOBAL read_only = ON")
            .await
            .map_err(|e| {
                query_error("fencing the source (SET GLOBAL read_only = ON)", e).with_fix(
                    "connect as a user with SUPER (or READ_ONLY ADMIN), or stop the application and cut over without --fence",
                )
            })?;
        let sessions: Vec<u64> = self
            .conn
            .query(
                "SELECT ID FROM information_schema.PROCESSLIST \
                 WHERE ID <> CONNECTION_ID() \
                   AND USER <> SUBSTRING_INDEX(CURRENT_USER(), '@', 1) \
                   AND USER NOT IN ('system user', 'event_scheduler', 'unauthenticated user') \
                   AND COMMAND NOT IN ('Binlog Dump', 'Binlog Dump GTID', 'Daemon', 'Slave_IO', 'Slave_SQL')",
            )
            .await
            .map_err(|e| query_error("listing sessions on the source", e))?;
        for id in &sessions {
            match self.conn.query_drop(format!("KILL CONNECTION {id}")).await {
                Ok(()) => {}
                // ER_NO_SUCH_THREAD: gone already.
                Err(mysql_async::Error::Server(s)) if s.code == 1094 => {}
                Err(e) => {
                    return Err(query_error(&format!("ending source session {id}"), e).with_fix(
                        "grant the ferry user CONNECTION ADMIN (or SUPER), or end the application's sessions yourself",
                    ));
                }
            }
        }
        info!(
            sessions = sessions.len(),
            "source fenced: read_only on, other sessions ended"
        );
        // An ended session may still be finishing its commit: the final
        // position is read once every one of them is gone.
        let started = Instant::now();
        loop {
            let left: Vec<u64> = self
                .conn
                .query("SELECT ID FROM information_schema.PROCESSLIST")
                .await
                .map_err(|e| query_error("waiting for ended sessions on the source", e))?;
            let left: Vec<u64> = left.into_iter().filter(|i| sessions.contains(i)).collect();
            if left.is_empty() {
                return Ok(());
            }
            if started.elapsed() > SESSIONS_GONE_WITHIN {
                return Err(Error::operator(
                    format!(
                        "source sessions {left:?} did not end within {}s of KILL CONNECTION; the final position cannot be read safely",
                        SESSIONS_GONE_WITHIN.as_secs()
                    ),
                    "find what keeps those sessions alive (SHOW PROCESSLIST) and end them, then cut over again",
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn unfence(&mut self) -> Result<(), Error> {
        self.conn
            .query_drop("SET GLOBAL read_only = OFF")
            .await
            .map_err(|e| {
                query_error("unfencing the source", e).with_fix("run: SET GLOBAL read_only = OFF")
            })
    }

    async fn final_position(&mut self) -> Result<MySqlPosition, Error> {
        // After the fence nothing commits; binlog heartbeats carry the
        // stream to this position on an idle source.
        head_position(&mut self.conn).await
    }

    async fn sequences(&mut self) -> Result<Vec<SequenceValue>, Error> {
        let source = MySqlSource::new(self.config.clone());
        let catalog = Source::catalog(&source).await?;
        let mut out = Vec::new();
        for t in &catalog.tables {
            let id = &t.schema.id;
            let Some(column) = catalog.auto_increment.get(id) else {
                continue;
            };
            let next: Option<Option<u64>> = self
                .conn
                .exec_first(
                    "SELECT AUTO_INCREMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                    (id.schema.clone(), id.name.clone()),
                )
                .await
                .map_err(|e| query_error(&format!("reading the AUTO_INCREMENT of {id}"), e))?;
            // information_schema may be cached (MySQL 8): the column's
            // maximum is a floor that is always current.
            let max: Option<Option<String>> = self
                .conn
                .query_first(format!(
                    "SELECT CAST(MAX({}) AS CHAR) FROM {}",
                    quote(column),
                    quote_table(id)
                ))
                .await
                .map_err(|e| query_error(&format!("reading the largest {column} of {id}"), e))?;
            let max: i64 = max.flatten().and_then(|m| m.parse().ok()).unwrap_or(0);
            let counter = next.flatten().map_or(0, |n| {
                i64::try_from(n.saturating_sub(1)).unwrap_or(i64::MAX)
            });
            let last = counter.max(max);
            out.push(SequenceValue {
                id: TableId::new(id.schema.clone(), format!("{}_{column}_seq", id.name)),
                owned_by: Some((id.clone(), column.clone())),
                last_value: last.max(1),
                is_called: last >= 1,
            });
        }
        Ok(out)
    }

    async fn count_rows(&mut self, table: &TableId) -> Result<u64, Error> {
        let n: Option<u64> = self
            .conn
            .query_first(format!("SELECT COUNT(*) FROM {}", quote_table(table)))
            .await
            .map_err(|e| query_error(&format!("counting {table}"), e))?;
        Ok(n.unwrap_or(0))
    }
}
