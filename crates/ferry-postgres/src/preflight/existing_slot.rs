//! The `existing slot` check of `postgres.existing_slot`: a replication
//! slot created beforehand (by a DBA, for a role that may not or should not
//! create it) must exist, be logical with pgoutput, belong to the source
//! database and — before ferry first uses it — have no other consumer.

use ferry_core::Error;
use ferry_core::plan::Check;
use tokio_postgres::Client;

use super::{SIDE, SlotOwnership};
use crate::connect::query_error;

/// A slot as the `existing slot` check reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ExistingSlot {
    /// `logical` or `physical`.
    slot_type: String,
    plugin: Option<String>,
    /// The slot's database; `None` for a physical slot.
    database: Option<String>,
    /// The database ferry is connected to.
    current_database: String,
    /// The process streaming from it, if any.
    active_pid: Option<i32>,
}

pub(super) async fn existing_slot_check(
    client: &Client,
    name: &str,
    ownership: SlotOwnership,
) -> Result<Check, Error> {
    let row = client
        .query_opt(
            "SELECT s.slot_type::text, s.plugin::text, s.database::text, current_database()::text,
                    CASE WHEN s.active THEN coalesce(s.active_pid, 0) END
               FROM pg_replication_slots s WHERE s.slot_name = $1",
            &[&name],
        )
        .await
        .map_err(|e| query_error("reading pg_replication_slots", e))?;
    let found = row.map(|r| ExistingSlot {
        slot_type: r.get(0),
        plugin: r.get(1),
        database: r.get(2),
        current_database: r.get(3),
        active_pid: r.get(4),
    });
    Ok(existing_slot_verdict(name, found.as_ref(), ownership))
}

/// `postgres.existing_slot`: slot `name` must exist, be logical with
/// pgoutput, on this database, and — before ferry first uses it — have no
/// consumer. Once ferry's run is recorded, a consumer may be ferry's own
/// walsender that has not noticed its client is gone; the stream retries
/// while the slot is held.
fn existing_slot_verdict(
    name: &str,
    slot: Option<&ExistingSlot>,
    ownership: SlotOwnership,
) -> Check {
    const CHECK: &str = "existing slot";
    let create = format!("SELECT pg_create_logical_replication_slot('{name}', 'pgoutput')");
    let Some(slot) = slot else {
        return if ownership == SlotOwnership::Resuming {
            Check::fail(
                SIDE,
                CHECK,
                format!(
                    "slot '{name}' (created beforehand, postgres.existing_slot) recorded in the target state no longer exists on the source"
                ),
                format!(
                    "changes since the checkpoint are lost: run `ferry cleanup --state`, {create}, and start the migration again"
                ),
            )
        } else {
            Check::fail(
                SIDE,
                CHECK,
                format!(
                    "slot '{name}' does not exist, and postgres.existing_slot says it was created beforehand"
                ),
                format!(
                    "create it on the source database as a role with REPLICATION: {create}; or set postgres.existing_slot = false to let ferry create it"
                ),
            )
        };
    };
    if slot.slot_type != "logical" {
        return Check::fail(
            SIDE,
            CHECK,
            format!(
                "slot '{name}' is a {} slot; ferry streams from a logical slot with the pgoutput plugin",
                slot.slot_type
            ),
            "leave it to its standby and create a logical slot under another name: SELECT pg_create_logical_replication_slot('<name>', 'pgoutput'); then set postgres.slot to that name",
        );
    }
    if slot.plugin.as_deref() != Some("pgoutput") {
        return Check::fail(
            SIDE,
            CHECK,
            format!(
                "slot '{name}' uses output plugin '{}'; ferry needs pgoutput",
                slot.plugin.as_deref().unwrap_or("")
            ),
            format!(
                "if nothing else reads it, recreate it: SELECT pg_drop_replication_slot('{name}'); {create}; otherwise create a pgoutput slot under another name and set postgres.slot"
            ),
        );
    }
    if slot.database.as_deref() != Some(slot.current_database.as_str()) {
        return Check::fail(
            SIDE,
            CHECK,
            format!(
                "slot '{name}' belongs to database '{}', not '{}' of source.url",
                slot.database.as_deref().unwrap_or(""),
                slot.current_database
            ),
            format!(
                "create the slot while connected to database '{}': {create} (slot names are server-wide: drop the other one or choose another postgres.slot)",
                slot.current_database
            ),
        );
    }
    if let Some(pid) = slot.active_pid
        && matches!(ownership, SlotOwnership::Fresh | SlotOwnership::Unknown)
    {
        // Unknown (the target unreachable): the consumer may be this
        // migration's own walsender that has not noticed its client left.
        return Check::fail(
            SIDE,
            CHECK,
            format!("slot '{name}' is in use by another consumer (process {pid})"),
            format!(
                "stop that consumer (SELECT pg_terminate_backend({pid})), or give ferry a slot of its own: {create} under a free name, set in postgres.slot"
            ),
        )
        .with_transient(ownership == SlotOwnership::Unknown);
    }
    Check::pass(
        SIDE,
        CHECK,
        match ownership {
            SlotOwnership::Resuming => format!(
                "slot '{name}' was created beforehand and exists (resuming); never dropped by ferry"
            ),
            _ => format!(
                "slot '{name}' was created beforehand: ferry advances it to its load snapshot, streams from it and never drops it"
            ),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::plan::CheckStatus;

    #[test]
    fn existing_slot_verdicts() {
        let good = ExistingSlot {
            slot_type: "logical".into(),
            plugin: Some("pgoutput".into()),
            database: Some("app".into()),
            current_database: "app".into(),
            active_pid: None,
        };
        let physical = ExistingSlot {
            slot_type: "physical".into(),
            plugin: None,
            database: None,
            ..good.clone()
        };
        let decoding = ExistingSlot {
            plugin: Some("test_decoding".into()),
            ..good.clone()
        };
        let elsewhere = ExistingSlot {
            database: Some("other".into()),
            ..good.clone()
        };
        let active = ExistingSlot {
            active_pid: Some(4242),
            ..good.clone()
        };
        use CheckStatus::{Fail, Pass};
        use SlotOwnership::{Fresh, Interrupted, Resuming, Unknown};
        let create = "SELECT pg_create_logical_replication_slot('s', 'pgoutput')";
        // (slot, ownership, status, detail contains, fix contains)
        let cases: [(
            Option<&ExistingSlot>,
            SlotOwnership,
            CheckStatus,
            &str,
            &str,
        ); 12] = [
            (None, Fresh, Fail, "slot 's' does not exist", create),
            (None, Interrupted, Fail, "slot 's' does not exist", create),
            (
                None,
                Resuming,
                Fail,
                "no longer exists",
                "ferry cleanup --state",
            ),
            (
                Some(&physical),
                Fresh,
                Fail,
                "slot 's' is a physical slot",
                "pg_create_logical_replication_slot('<name>', 'pgoutput')",
            ),
            (
                Some(&decoding),
                Fresh,
                Fail,
                "slot 's' uses output plugin 'test_decoding'",
                "SELECT pg_drop_replication_slot('s'); SELECT pg_create_logical_replication_slot('s', 'pgoutput')",
            ),
            (
                Some(&elsewhere),
                Fresh,
                Fail,
                "belongs to database 'other', not 'app'",
                "connected to database 'app'",
            ),
            (
                Some(&active),
                Fresh,
                Fail,
                "in use by another consumer (process 4242)",
                "pg_terminate_backend(4242)",
            ),
            (
                Some(&active),
                Unknown,
                Fail,
                "in use by another consumer (process 4242)",
                "pg_terminate_backend(4242)",
            ),
            (Some(&active), Resuming, Pass, "exists (resuming)", ""),
            (None, Unknown, Fail, "slot 's' does not exist", create),
            (
                Some(&good),
                Fresh,
                Pass,
                "ferry advances it to its load snapshot",
                "",
            ),
            (Some(&good), Interrupted, Pass, "never drops it", ""),
        ];
        for (slot, ownership, status, detail, fix) in cases {
            let c = existing_slot_verdict("s", slot, ownership);
            assert_eq!(c.name, "existing slot");
            assert_eq!(c.status, status, "{slot:?} {ownership:?}: {c:?}");
            assert!(c.detail.contains(detail), "{ownership:?}: {}", c.detail);
            if status == Fail {
                let got = c.fix.as_deref().unwrap_or_default();
                assert!(got.contains(fix), "{ownership:?}: {got}");
            }
            // Only a consumer that may be this migration's own walsender,
            // with the target's state unknown, may pass by itself.
            let own_walsender =
                ownership == Unknown && slot.is_some_and(|s| s.active_pid.is_some());
            assert_eq!(c.transient, own_walsender, "{slot:?} {ownership:?}: {c:?}");
        }
    }
}
