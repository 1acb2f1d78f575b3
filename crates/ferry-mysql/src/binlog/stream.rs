//! The live replication stream: ferry registers as a replica with
//! `mysql.server_id` and dumps the binlog from a position.
//!
//! Before the dump request ferry sets, on the session:
//!
//! - `@mariadb_slave_capability = 4` (MariaDB): send real GTID events
//!   (GTID, GTID_LIST) instead of rewriting them for old replicas;
//! - `@master_heartbeat_period` (nanoseconds): the server sends HEARTBEAT
//!   events when idle, which become `Heartbeat`s (progress and lag stay
//!   true with no writes);
//! - `@master_binlog_checksum = 'ALL'` (done by the driver): CRC32 events.
//!
//! The stream yields `mysql_common` events for [`super::BinlogDecoder`];
//! compressed MySQL 8 transactions arrive expanded (the payload event, then
//! its inner events).

use std::time::Duration;

use ferry_core::{Error, MySqlPosition};
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn};

use crate::catalog::query_error;
use crate::connect::Flavor;

/// Turns `conn` into a binlog stream from `start` (file and offset).
pub async fn open(
    mut conn: Conn,
    flavor: Flavor,
    server_id: u32,
    start: &MySqlPosition,
    heartbeat: Duration,
) -> Result<BinlogStream, Error> {
    if server_id == 0 {
        return Err(Error::operator(
            "mysql.server_id is 0",
            "set mysql.server_id to a value unique among the source's replicas",
        ));
    }
    if flavor == Flavor::MariaDb {
        conn.query_drop("SET @mariadb_slave_capability = 4")
            .await
            .map_err(|e| query_error("preparing the replication session", e))?;
    }
    let nanos = heartbeat.as_nanos().clamp(1_000_000, 4_294_967_000_000_000);
    conn.query_drop(format!("SET @master_heartbeat_period = {nanos}"))
        .await
        .map_err(|e| query_error("preparing the replication session", e))?;
    let request = BinlogStreamRequest::new(server_id)
        .with_filename(start.file.as_bytes())
        .with_pos(start.offset);
    conn.get_binlog_stream(request).await.map_err(|e| {
        let e2 = query_error(&format!("starting the binlog dump at {start}"), e);
        match e2.class() {
            ferry_core::ErrorClass::Operator => e2.with_fix(
                "check that the binlog file still exists (SHOW BINARY LOGS; binlog_expire_logs_seconds) \
                 and that the ferry user has REPLICATION SLAVE",
            ),
            ferry_core::ErrorClass::Transient => e2,
        }
    })
}
