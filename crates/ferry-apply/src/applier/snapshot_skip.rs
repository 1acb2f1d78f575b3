//! Changes a table (re)loaded from a snapshot already holds.
//!
//! After a load resumed from a crash, a table may have been loaded from a
//! later snapshot (at position `S`) than the stream's checkpoint: its rows
//! already include every transaction whose commit precedes `S`. The stream
//! starts at the checkpoint, so it sends those transactions again; their
//! changes of that table are dropped here, the other tables' changes in
//! them are applied. The transaction's commit position comes from its
//! `Begin` (`final_position`); a source that does not announce it is never
//! skipped here (the checkpoint still skips whole transactions).

use std::collections::HashMap;

use ferry_core::{Change, TableId};

/// The change as the applier should see it, or `None` when every table it
/// touches was loaded from a snapshot that already includes it (the
/// transaction commits at `final_position`, before the snapshot's position).
pub fn skip_for_snapshot<P: Ord>(
    change: Change,
    final_position: Option<&P>,
    snapshots: &HashMap<TableId, P>,
) -> Option<Change> {
    let covered = |t: &TableId| held_by_snapshot(t, final_position, snapshots);
    match change {
        Change::Truncate {
            tables,
            cascade,
            restart_identity,
        } => {
            let tables: Vec<TableId> = tables.into_iter().filter(|t| !covered(t)).collect();
            (!tables.is_empty()).then_some(Change::Truncate {
                tables,
                cascade,
                restart_identity,
            })
        }
        c => match c.table() {
            Some(t) if covered(t) => None,
            _ => Some(c),
        },
    }
}

/// Whether the snapshot `table` was (re)loaded from already holds the
/// transaction whose commit position is announced as `final_position`.
pub fn held_by_snapshot<P: Ord>(
    table: &TableId,
    final_position: Option<&P>,
    snapshots: &HashMap<TableId, P>,
) -> bool {
    final_position
        .zip(snapshots.get(table))
        .is_some_and(|(f, s)| f < s)
}

#[cfg(test)]
mod tests {
    use ferry_core::{Lsn, Row};

    use super::*;

    fn insert(t: &str) -> Change {
        Change::Insert {
            table: TableId::new("public", t),
            new: Row::default(),
        }
    }

    #[test]
    fn snapshot_skip_decisions() {
        let snaps: HashMap<TableId, Lsn> = [(TableId::new("public", "reloaded"), Lsn(100))].into();
        // (change, final lsn of its transaction, kept?)
        let cases = [
            (insert("reloaded"), Some(Lsn(99)), false),
            (insert("reloaded"), Some(Lsn(100)), true),
            (insert("reloaded"), Some(Lsn(150)), true),
            (insert("reloaded"), None, true),
            (insert("other"), Some(Lsn(10)), true),
        ];
        for (change, final_lsn, kept) in cases {
            assert_eq!(
                skip_for_snapshot(change.clone(), final_lsn.as_ref(), &snaps).is_some(),
                kept,
                "{change:?} at {final_lsn:?}"
            );
        }
        let truncate = Change::Truncate {
            tables: vec![
                TableId::new("public", "reloaded"),
                TableId::new("public", "other"),
            ],
            cascade: false,
            restart_identity: false,
        };
        match skip_for_snapshot(truncate, Some(&Lsn(50)), &snaps) {
            Some(Change::Truncate { tables, .. }) => {
                assert_eq!(tables, vec![TableId::new("public", "other")])
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
