//! Checks on raw event bytes that `mysql_common` trusts.
//!
//! A few of its parsers size a vector from a count read from the event
//! (PREVIOUS_GTIDS sids and intervals, ENUM/SET label lists in TABLE_MAP
//! optional metadata). On damaged bytes that count can ask for terabytes,
//! which aborts the process instead of failing. These walks check every such
//! count against the bytes actually present before the parser runs.

/// A length-encoded integer; advances `d`.
fn lenenc(d: &mut &[u8]) -> Option<u64> {
    let (&first, rest) = d.split_first()?;
    let (v, used) = match first {
        0..=0xfa => (u64::from(first), 0),
        0xfc => (
            u64::from(u16::from_le_bytes(rest.get(..2)?.try_into().ok()?)),
            2,
        ),
        0xfd => {
            let b = rest.get(..3)?;
            (
                u64::from(b[0]) | u64::from(b[1]) << 8 | u64::from(b[2]) << 16,
                3,
            )
        }
        0xfe => (u64::from_le_bytes(rest.get(..8)?.try_into().ok()?), 8),
        _ => return None,
    };
    *d = rest.get(used..)?;
    Some(v)
}

fn skip(d: &mut &[u8], n: u64) -> Option<()> {
    let n = usize::try_from(n).ok()?;
    *d = d.get(n..)?;
    Some(())
}

/// MySQL's variable-length unsigned integer (tagged GTID formats).
fn varlen(d: &mut &[u8]) -> Option<u64> {
    let first = *d.first()?;
    let ones = first.trailing_ones() as usize;
    if ones == 8 {
        let v = u64::from_le_bytes(d.get(1..9)?.try_into().ok()?);
        *d = d.get(9..)?;
        return Some(v);
    }
    let n = ones + 1;
    let mut v: u64 = 0;
    for (i, b) in d.get(..n)?.iter().enumerate() {
        v |= u64::from(*b) << (8 * i);
    }
    *d = d.get(n..)?;
    Some(v >> n)
}

/// Whether a PREVIOUS_GTIDS body (without checksum) is self-consistent.
pub fn previous_gtids_ok(mut d: &[u8]) -> bool {
    let Some(header) = d
        .get(..8)
        .and_then(|h| h.try_into().ok())
        .map(u64::from_le_bytes)
    else {
        return false;
    };
    d = &d[8..];
    let tagged = (header >> 56) != 0;
    let n_sids = if tagged {
        (header >> 8) & ((1u64 << 48) - 1)
    } else {
        header & ((1u64 << 56) - 1)
    };
    if n_sids > (d.len() / 24) as u64 {
        return false;
    }
    for _ in 0..n_sids {
        if skip(&mut d, 16).is_none() {
            return false;
        }
        if tagged {
            let Some(tag_len) = varlen(&mut d) else {
                return false;
            };
            if skip(&mut d, tag_len).is_none() {
                return false;
            }
        }
        let Some(n) = d
            .get(..8)
            .and_then(|h| h.try_into().ok())
            .map(u64::from_le_bytes)
        else {
            return false;
        };
        d = &d[8..];
        if n > (d.len() / 16) as u64 || skip(&mut d, n * 16).is_none() {
            return false;
        }
    }
    true
}

/// Whether a TABLE_MAP body's ENUM/SET label lists fit the bytes present.
/// `post_header` is the TABLE_MAP post-header length from the FORMAT_DESCRIPTION.
pub fn table_map_ok(data: &[u8], post_header: usize) -> bool {
    table_map_walk(data, post_header).is_some()
}

fn table_map_walk(data: &[u8], post_header: usize) -> Option<()> {
    let mut d = data.get(post_header..)?;
    let db = u64::from(*d.first()?);
    skip(&mut d, 1 + db + 1)?;
    let tbl = u64::from(*d.first()?);
    skip(&mut d, 1 + tbl + 1)?;
    let cols = lenenc(&mut d)?;
    skip(&mut d, cols)?;
    let meta = lenenc(&mut d)?;
    skip(&mut d, meta)?;
    skip(&mut d, cols.div_ceil(8))?;
    while let Some((&kind, rest)) = d.split_first() {
        d = rest;
        let len = lenenc(&mut d)?;
        let n = usize::try_from(len).ok()?;
        let mut field = d.get(..n)?;
        d = &d[n..];
        // SET_STR_VALUE (5) and ENUM_STR_VALUE (6): per column a count and labels.
        if kind == 5 || kind == 6 {
            while !field.is_empty() {
                let variants = lenenc(&mut field)?;
                if variants > field.len() as u64 {
                    return None;
                }
                for _ in 0..variants {
                    let l = lenenc(&mut field)?;
                    skip(&mut field, l)?;
                }
            }
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_counts_are_caught() {
        // 2^40 sids in 8 bytes.
        assert!(!previous_gtids_ok(&(1u64 << 40).to_le_bytes()));
        let mut ok = 1u64.to_le_bytes().to_vec();
        ok.extend([0u8; 16]);
        ok.extend(1u64.to_le_bytes());
        ok.extend([1, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]);
        assert!(previous_gtids_ok(&ok));
        let mut bad = ok.clone();
        bad[24] = 0xff; // n_intervals huge
        assert!(!previous_gtids_ok(&bad));
    }
}
