//! Approximate memory held by values, rows, changes and events.
//!
//! Every buffer on the data path (the reader's channel, the streamed
//! transactions of pgoutput v2, the applier's intake queue, open source
//! transaction and batch) bounds its memory in bytes with these figures,
//! not in rows: one row may carry a megabyte. The figure is the inline size
//! plus the heap the value owns (string and byte buffers at their length,
//! array elements), without allocator overhead: cheap to compute, and
//! close enough to be the unit of `apply.max_buffered_bytes`.

use std::mem::size_of;

use crate::change::{Change, Event, OldRow, Row};
use crate::value::Value;

/// Approximate bytes of memory an item holds.
pub trait ApproxBytes {
    fn approx_bytes(&self) -> usize;
}

impl ApproxBytes for Value {
    fn approx_bytes(&self) -> usize {
        size_of::<Value>()
            + match self {
                Value::Numeric(n) => n.as_str().len(),
                Value::Text(s) | Value::Json(s) | Value::Jsonb(s) | Value::Enum(s) => s.len(),
                Value::Bytes(b) => b.len(),
                Value::Array(a) => {
                    a.element_type.len()
                        + a.dims.len() * size_of::<(i32, i32)>()
                        + a.elements
                            .iter()
                            .map(ApproxBytes::approx_bytes)
                            .sum::<usize>()
                }
                Value::Other { type_name, text } => type_name.len() + text.len(),
                _ => 0,
            }
    }
}

impl ApproxBytes for Row {
    fn approx_bytes(&self) -> usize {
        size_of::<Row>()
            + self
                .values
                .iter()
                .map(ApproxBytes::approx_bytes)
                .sum::<usize>()
    }
}

impl ApproxBytes for Change {
    fn approx_bytes(&self) -> usize {
        let rows = match self {
            Change::Insert { new, .. } => new.approx_bytes(),
            Change::Update { old, new, .. } => {
                new.approx_bytes() + old.as_ref().map_or(0, |o| o.row().approx_bytes())
            }
            Change::Delete { old, .. } => old.row().approx_bytes(),
            Change::Truncate { tables, .. } => tables.len() * 64,
        };
        size_of::<Change>() + rows
    }
}

impl ApproxBytes for OldRow {
    fn approx_bytes(&self) -> usize {
        self.row().approx_bytes()
    }
}

impl<P> ApproxBytes for Event<P> {
    fn approx_bytes(&self) -> usize {
        match self {
            Event::Change(c) => c.approx_bytes(),
            // Schemas are shared (`Arc`) and small; the rest is inline.
            _ => size_of::<Event<P>>(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TableId;

    #[test]
    fn large_values_dominate() {
        let small = Value::Int4(1).approx_bytes();
        let big = Value::Text("x".repeat(1 << 20)).approx_bytes();
        assert!(((1 << 20)..(1 << 20) + 64).contains(&big), "{big}");
        let row = Row::new(vec![Value::Int4(1), Value::Bytes(vec![0; 1000])]);
        let ins = Change::Insert {
            table: TableId::new("public", "t"),
            new: row.clone(),
        };
        assert!(ins.approx_bytes() > 1000 + small);
        let upd = Change::Update {
            table: TableId::new("public", "t"),
            old: Some(OldRow::Full(row.clone())),
            new: row,
        };
        assert!(upd.approx_bytes() > 2000);
        let ev: Event<u64> = Event::Change(upd.clone());
        assert_eq!(ev.approx_bytes(), upd.approx_bytes());
    }
}
