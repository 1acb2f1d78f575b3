//! Row images of a rows event, read straight from the event's bytes.
//!
//! `mysql_common`'s row iterator rebuilds, for every row, the column
//! descriptions of the TABLE_MAP (its optional metadata walked again, a
//! `Column` with copies of the database, table and column names per
//! value). The decoder already resolved all that once per TABLE_MAP
//! ([`super::columns::resolve`]), so it reads each image itself: the null
//! bitmap, then each present column's value through `mysql_common`'s value
//! parser with the same type, metadata and signedness `mysql_common` would
//! pass. Partial JSON updates (a shared image before the after image) keep
//! `mysql_common`'s iterator.
//!
//! Layout of one image (v1 and v2 rows events alike, after the event's
//! column bitmaps): a null bitmap with one bit per column present in the
//! image (least significant bit first), then the values of the present,
//! non-NULL columns in column order.

use std::io;

use mysql_common::binlog::value::BinlogValue;
use mysql_common::io::ParseBuf;
use mysql_common::value::Value as My;

use super::columns::ColumnSpec;

/// One row image by column index: `None` when the column is not in it.
pub(crate) type Image = Vec<Option<BinlogValue<'static>>>;

/// Reads the next image from `buf`: `present[i]` says whether column `i`
/// is in it (the event's column bitmap; all columns when `None`).
pub(crate) fn image(
    buf: &mut ParseBuf<'_>,
    columns: &[ColumnSpec],
    present: Option<&[bool]>,
) -> io::Result<Image> {
    let here = |i: usize| present.is_none_or(|p| p.get(i).copied().unwrap_or(false));
    let in_image = (0..columns.len()).filter(|&i| here(i)).count();
    let nulls = buf
        .checked_eat(in_image.div_ceil(8))
        .ok_or_else(|| short("null bitmap"))?;
    // Values borrow the metadata only while parsed; each is owned at once.
    let mut rest: ParseBuf<'_> = ParseBuf(buf.0);
    let mut out = Vec::with_capacity(columns.len());
    let mut nth = 0;
    for (i, spec) in columns.iter().enumerate() {
        if !here(i) {
            out.push(None);
            continue;
        }
        let null = nulls[nth / 8] >> (nth % 8) & 1 == 1;
        nth += 1;
        out.push(Some(if null {
            BinlogValue::Value(My::NULL)
        } else {
            let ctx = (
                spec.binlog_type,
                spec.meta.as_slice(),
                spec.binlog_unsigned,
                false,
            );
            rest.parse::<BinlogValue<'_>>(ctx)?.into_owned()
        }));
    }
    let used = buf.0.len() - rest.0.len();
    buf.skip(used);
    Ok(out)
}

fn short(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("the row image ends inside its {what}"),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use mysql_common::binlog::events::{EventData, RowsEventData, TableMapEvent};

    use super::*;
    use crate::binlog::columns;
    use crate::binlog::file::BinlogFileReader;

    /// Every image of every rows event in the binlog fixtures (MySQL 8.x
    /// and MariaDB, compressed transactions included) reads the same
    /// through [`image`] as through `mysql_common`'s row iterator.
    #[test]
    fn images_match_mysql_common_on_every_fixture() {
        let dir = ferry_testkit::datasets_dir()
            .expect("../shared/datasets")
            .join("mysql-binlogs");
        let mut compared = 0;
        let mut files = 0;
        let mut per_file = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("fixtures") {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("LICENSE") {
                continue;
            }
            files += 1;
            let file = std::fs::File::open(&path).unwrap();
            let reader = BinlogFileReader::new(name.clone(), std::io::BufReader::new(file))
                .expect("a binlog file");
            let before_file = compared;
            let mut maps: HashMap<u64, (TableMapEvent<'static>, Vec<ColumnSpec>)> = HashMap::new();
            for event in reader {
                let Ok(event) = event else { break };
                match event.read_data() {
                    Ok(Some(EventData::TableMapEvent(tme))) => {
                        let specs = match columns::resolve(&tme, None, None) {
                            Ok(t) => t.columns,
                            // No column names (MINIMAL metadata): the types
                            // and signedness alone, as mysql_common reads them.
                            Err(_) => bare_specs(&tme),
                        };
                        maps.insert(tme.table_id(), (tme.into_owned(), specs));
                    }
                    Ok(Some(EventData::RowsEvent(rows))) => {
                        if matches!(rows, RowsEventData::PartialUpdateRowsEvent(_)) {
                            continue;
                        }
                        let Some((tme, specs)) = maps.get(&rows.table_id()) else {
                            continue;
                        };
                        let before = rows
                            .columns_before_image()
                            .map(|b| b.iter().map(|x| *x).collect::<Vec<bool>>());
                        let after = rows
                            .columns_after_image()
                            .map(|b| b.iter().map(|x| *x).collect::<Vec<bool>>());
                        let mut buf = ParseBuf(rows.rows_data());
                        for pair in rows.rows(tme) {
                            let (b, a) = pair.expect("mysql_common reads the row");
                            for (row, present) in [(b, &before), (a, &after)] {
                                let Some(row) = row else { continue };
                                let mut values = row.unwrap().into_iter();
                                let want: Image = (0..specs.len())
                                    .map(|i| {
                                        let here = present
                                            .as_ref()
                                            .is_none_or(|p| p.get(i).copied().unwrap_or(false));
                                        if here { values.next() } else { None }
                                    })
                                    .collect();
                                let got = image(&mut buf, specs, present.as_deref())
                                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                                assert_eq!(got, want, "{name}: table id {}", rows.table_id());
                                compared += 1;
                            }
                        }
                        assert!(buf.is_empty(), "{name}: bytes left after the last image");
                    }
                    _ => {}
                }
            }
            per_file.push((name, compared - before_file));
        }
        assert!(files >= 10, "fixtures found: {files}");
        assert!(compared >= 50, "row images compared: {per_file:?}");
    }

    fn bare_specs(tme: &TableMapEvent<'_>) -> Vec<ColumnSpec> {
        use mysql_common::binlog::events::OptionalMetaExtractor;
        let extractor = OptionalMetaExtractor::new(tme.iter_optional_meta()).unwrap();
        let mut signedness = extractor.iter_signedness();
        (0..tme.columns_count() as usize)
            .map(|i| {
                let binlog_type = tme.get_column_type(i).unwrap().unwrap();
                let unsigned =
                    binlog_type.is_numeric_type() && signedness.next().unwrap_or_default();
                ColumnSpec {
                    name: format!("@{i}"),
                    binlog_type,
                    meta: tme.get_column_metadata(i).unwrap_or(&[]).to_vec(),
                    pg_type: String::new(),
                    unsigned,
                    binlog_unsigned: unsigned,
                    labels: None,
                    collation: None,
                    charset: None,
                    target: None,
                }
            })
            .collect()
    }
}
