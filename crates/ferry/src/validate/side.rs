//! The two sides a table's validation reads, behind one interface, so the
//! scan, narrowing and confirmation of [`super::table`] are the same for
//! every source:
//!
//! | source | source side | target side |
//! |---|---|---|
//! | PostgreSQL | [`Pg`]: digests computed in the source, in snapshots | [`Pg`]: digests computed in the target |
//! | MySQL/MariaDB, SQLite | [`Reader`]: rows through the source crate's [`KeyReader`], hashed by ferry | [`Normalized`]: rows read from the target, hashed by ferry |
//!
//! For a non-PostgreSQL source, both sides hash the normal form of each
//! value ([`ferry_core::normalize`], the one table shared with the type
//! mapping), so the rows of a range cross the network from both databases
//! (PostgreSQL's own digest cannot reproduce a MySQL or SQLite value's text);
//! ranges are cut at the same keys on both sides because text keys are
//! read in byte order on both ([`Shape::byte_ordered`]). Reads of a range
//! go through pages of [`PAGE`] rows, or a streamed result, so memory
//! stays bounded whatever the table.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::marker::PhantomData;

use anyhow::Context;
use ferry_core::TableSchema;
use ferry_core::normalize::normalized;
use ferry_core::position::Lsn;
use ferry_core::source::{BoxFuture, KeyRange, KeyReader};
use futures_util::TryStreamExt;
use tokio::sync::Mutex;
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use super::digest::{Bounds, Shape};
use super::session::{self, Digest, Rows};
use super::settle::Key;

/// Rows read from a non-PostgreSQL source per statement.
const PAGE: u64 = 2_000;

/// One side's reads of one table (the range reads of the source side run
/// inside the snapshot [`SourceSide::begin`] opened).
pub trait Side: Send + Sync {
    /// The relation, for messages.
    fn relation(&self) -> &str;
    /// The key `n` rows after `lo`, `None` when fewer remain.
    fn next_bound<'a>(
        &'a self,
        lo: Option<&'a Key>,
        n: i64,
    ) -> BoxFuture<'a, anyhow::Result<Option<Key>>>;
    /// Row count and digest of `(lo, hi]`.
    fn digest<'a>(
        &'a self,
        lo: Option<&'a Key>,
        hi: Option<&'a Key>,
    ) -> BoxFuture<'a, anyhow::Result<Digest>>;
    /// Keys cutting `(lo, hi]` into parts of `step` rows.
    fn quantiles<'a>(
        &'a self,
        lo: Option<&'a Key>,
        hi: Option<&'a Key>,
        step: i64,
    ) -> BoxFuture<'a, anyhow::Result<Vec<Key>>>;
    /// Every row's key and hash in `(lo, hi]`.
    fn hashes<'a>(
        &'a self,
        lo: Option<&'a Key>,
        hi: Option<&'a Key>,
    ) -> BoxFuture<'a, anyhow::Result<BTreeMap<Key, i64>>>;
    /// The rows of `keys`, each column in the form values compare in.
    fn rows<'a>(&'a self, keys: &'a [Key]) -> BoxFuture<'a, anyhow::Result<Rows>>;
}

/// The source side: short snapshots and positions as well.
pub trait SourceSide<P>: Side {
    /// Begin a short consistent read; the position it is exact at.
    fn begin(&self) -> BoxFuture<'_, anyhow::Result<P>>;
    fn end(&self) -> BoxFuture<'_, anyhow::Result<()>>;
    /// The source's position now.
    fn position(&self) -> BoxFuture<'_, anyhow::Result<P>>;
    /// The rows of `keys` as PostgreSQL input text of the target types
    /// (what a repair writes).
    fn repair_rows<'a>(&'a self, keys: &'a [Key]) -> BoxFuture<'a, anyhow::Result<Rows>>;
}

/// A PostgreSQL side whose digests are computed by the database.
pub struct Pg<'a> {
    pub client: &'a Client,
    pub shape: Shape,
}

impl Side for Pg<'_> {
    fn relation(&self) -> &str {
        &self.shape.relation
    }
    fn next_bound<'a>(
        &'a self,
        lo: Option<&'a Key>,
        n: i64,
    ) -> BoxFuture<'a, anyhow::Result<Option<Key>>> {
        Box::pin(session::next_bound(self.client, &self.shape, lo, n))
    }
    fn digest<'a>(
        &'a self,
        lo: Option<&'a Key>,
        hi: Option<&'a Key>,
    ) -> BoxFuture<'a, anyhow::Result<Digest>> {
        Box::pin(session::digest(self.client, &self.shape, lo, hi))
    }
    fn quantiles<'a>(
        &'a self,
        lo: Option<&'a Key>,
        hi: Option<&'a Key>,
        step: i64,
    ) -> BoxFuture<'a, anyhow::Result<Vec<Key>>> {
        Box::pin(session::quantiles(self.client, &self.shape, lo, hi, step))
    }
    fn hashes<'a>(
        &'a self,
        lo: Option<&'a Key>,
        hi: Option<&'a Key>,
    ) -> BoxFuture<'a, anyhow::Result<BTreeMap<Key, i64>>> {
        Box::pin(session::hashes(self.client, &self.shape, lo, hi))
    }
    fn rows<'a>(&'a self, keys: &'a [Key]) -> BoxFuture<'a, anyhow::Result<Rows>> {
        Box::pin(async move {
            session::rows(self.client, &self.shape, keys)
                .await
                .with_context(|| format!("reading rows of {}", self.shape.relation))
        })
    }
}

/// As the source side, [`Pg`] reads in snapshots (`REPEATABLE READ READ
/// ONLY`, position `pg_current_wal_lsn()` read inside).
impl SourceSide<Lsn> for Pg<'_> {
    fn begin(&self) -> BoxFuture<'_, anyhow::Result<Lsn>> {
        Box::pin(async move {
            self.client
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .context("starting a source snapshot")?;
            // The first statement takes the snapshot; the position is read
            // in it, after the snapshot was taken.
            pg_position(self.client).await
        })
    }
    fn end(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            self.client
                .batch_execute("COMMIT")
                .await
                .context("ending a source snapshot")
        })
    }
    fn position(&self) -> BoxFuture<'_, anyhow::Result<Lsn>> {
        Box::pin(pg_position(self.client))
    }
    fn repair_rows<'a>(&'a self, keys: &'a [Key]) -> BoxFuture<'a, anyhow::Result<Rows>> {
        self.rows(keys)
    }
}

async fn pg_position(c: &Client) -> anyhow::Result<Lsn> {
    let text: String = c
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .context("reading the source position")?
        .get(0);
    text.parse()
        .with_context(|| format!("source position {text:?}"))
}

/// A row's 64-bit hash over its normal form (NULL apart from every text).
fn row_hash(row: &[Option<String>]) -> i64 {
    let mut h = DefaultHasher::new();
    row.hash(&mut h);
    h.finish() as i64
}

/// Count and order-independent digest of rows given by their hashes.
#[derive(Debug, Default)]
struct Fold {
    rows: i64,
    sum: i128,
}

impl Fold {
    fn add(&mut self, hash: i64) {
        self.rows += 1;
        self.sum += i128::from(hash);
    }
    fn digest(self) -> Digest {
        Digest {
            rows: self.rows,
            sum: self.sum.to_string(),
        }
    }
}

/// The target of a non-PostgreSQL source: rows read in byte order of text
/// keys, normalized and hashed by ferry.
pub struct Normalized<'a> {
    pub client: &'a Client,
    /// Byte-ordered ([`Shape::byte_ordered`]).
    pub shape: Shape,
    /// The target type of each column, in table order.
    pub types: Vec<String>,
    /// The target type of each key column, in key order.
    pub key_types: Vec<String>,
}

impl Normalized<'_> {
    fn key(&self, texts: Vec<Option<String>>) -> Key {
        texts
            .into_iter()
            .zip(&self.key_types)
            .map(|(t, ty)| normalized(ty, &t.unwrap_or_default()))
            .collect()
    }

    fn row(&self, texts: Vec<Option<String>>) -> Vec<Option<String>> {
        texts
            .into_iter()
            .zip(&self.types)
            .map(|(t, ty)| t.map(|t| normalized(ty, &t)))
            .collect()
    }

    /// Every row of `(lo, hi]`, streamed, each passed to `each`.
    async fn each_row(
        &self,
        lo: Option<&Key>,
        hi: Option<&Key>,
        mut each: impl FnMut(Key, Vec<Option<String>>),
    ) -> anyhow::Result<()> {
        let sql = self.shape.range_rows_sql(Bounds {
            lo: lo.is_some(),
            hi: hi.is_some(),
        });
        let params: Vec<&(dyn ToSql + Sync)> = [lo, hi]
            .into_iter()
            .flatten()
            .flat_map(|k| k.iter().map(|v| v as &(dyn ToSql + Sync)))
            .collect();
        let what = || format!("reading rows of {} to validate", self.shape.relation);
        let stream = self
            .client
            .query_raw(&sql, params)
            .await
            .with_context(what)?;
        let mut stream = std::pin::pin!(stream);
        while let Some(r) = stream.try_next().await.with_context(what)? {
            let key = self.key(r.get(0));
            each(key, self.row(r.get(1)));
        }
        Ok(())
    }
}

impl Side for Normalized<'_> {
    fn relation(&self) -> &str {
        &self.shape.relation
    }
    fn next_bound<'a>(
        &'a self,
        lo: Option<&'a Key>,
        n: i64,
    ) -> BoxFuture<'a, anyhow::Result<Option<Key>>> {
        Box::pin(async move {
            let k = session::next_bound(self.client, &self.shape, lo, n).await?;
            Ok(k.map(|k| self.key(k.into_iter().map(Some).collect())))
        })
    }
    fn digest<'a>(
        &'a self,
        lo: Option<&'a Key>,
        hi: Option<&'a Key>,
    ) -> BoxFuture<'a, anyhow::Result<Digest>> {
        Box::pin(async move {
            let mut fold = Fold::default();
            self.each_row(lo, hi, |_, row| fold.add(row_hash(&row)))
                .await?;
            Ok(fold.digest())
        })
    }
    fn quantiles<'a>(
        &'a self,
        lo: Option<&'a Key>,
        hi: Option<&'a Key>,
        step: i64,
    ) -> BoxFuture<'a, anyhow::Result<Vec<Key>>> {
        Box::pin(async move {
            let keys = session::quantiles(self.client, &self.shape, lo, hi, step).await?;
            Ok(keys
                .into_iter()
                .map(|k| self.key(k.into_iter().map(Some).collect()))
                .collect())
        })
    }
    fn hashes<'a>(
        &'a self,
        lo: Option<&'a Key>,
        hi: Option<&'a Key>,
    ) -> BoxFuture<'a, anyhow::Result<BTreeMap<Key, i64>>> {
        Box::pin(async move {
            let mut out = BTreeMap::new();
            self.each_row(lo, hi, |k, row| {
                out.insert(k, row_hash(&row));
            })
            .await?;
            Ok(out)
        })
    }
    fn rows<'a>(&'a self, keys: &'a [Key]) -> BoxFuture<'a, anyhow::Result<Rows>> {
        Box::pin(async move {
            let rows = session::rows(self.client, &self.shape, keys)
                .await
                .with_context(|| format!("reading rows of {}", self.shape.relation))?;
            Ok(rows
                .into_iter()
                .map(|(k, row)| (self.key(k.into_iter().map(Some).collect()), self.row(row)))
                .collect())
        })
    }
}

/// A non-PostgreSQL source read through its [`KeyReader`]; values in
/// their normal form, hashed by ferry.
pub struct Reader<'r, R, P> {
    pub reader: &'r Mutex<R>,
    pub schema: TableSchema,
    pub relation: String,
    pub position: PhantomData<fn() -> P>,
}

impl<R, P> Reader<'_, R, P> {
    fn key_of(&self, row: &ferry_core::Row) -> Key {
        self.schema
            .key
            .iter()
            .map(|&i| {
                let c = &self.schema.columns[i];
                normalized(&c.pg_type, &row.values[i].to_pg_text().unwrap_or_default())
            })
            .collect()
    }

    fn normal_row(&self, row: &ferry_core::Row) -> Vec<Option<String>> {
        row.values
            .iter()
            .zip(&self.schema.columns)
            .map(|(v, c)| v.to_pg_text().map(|t| normalized(&c.pg_type, &t)))
            .collect()
    }

    fn input_row(row: &ferry_core::Row) -> Vec<Option<String>> {
        row.values
            .iter()
            .map(ferry_core::Value::to_pg_text)
            .collect()
    }
}

impl<R, P> Reader<'_, R, P>
where
    R: KeyReader<P>,
    P: ferry_core::Position,
{
    /// Every row of `(lo, hi]` page by page (inside the open read), each
    /// passed to `each`.
    async fn each_row(
        &self,
        lo: Option<&Key>,
        hi: Option<&Key>,
        mut each: impl FnMut(&ferry_core::Row) + Send,
    ) -> anyhow::Result<()> {
        let mut reader = self.reader.lock().await;
        let mut offset = 0;
        loop {
            let page = reader
                .range(
                    &self.schema,
                    KeyRange {
                        lo: lo.map(Vec::as_slice),
                        hi: hi.map(Vec::as_slice),
                        offset,
                        limit: Some(PAGE),
                        keys_only: false,
                    },
                )
                .await
                .with_context(|| format!("reading rows of {} to validate", self.relation))?;
            let n = page.len() as u64;
            page.iter().for_each(&mut each);
            if n < PAGE {
                return Ok(());
            }
            offset += n;
        }
    }

    async fn keys_from(
        &self,
        lo: Option<&Key>,
        hi: Option<&Key>,
        offset: u64,
        limit: Option<u64>,
    ) -> anyhow::Result<Vec<Key>> {
        let rows = self
            .reader
            .lock()
            .await
            .range(
                &self.schema,
                KeyRange {
                    lo: lo.map(Vec::as_slice),
                    hi: hi.map(Vec::as_slice),
                    offset,
                    limit,
                    keys_only: true,
                },
            )
            .await
            .with_context(|| format!("reading keys of {} to validate", self.relation))?;
        Ok(rows.iter().map(|r| self.key_of(r)).collect())
    }

    async fn read_rows(
        &self,
        keys: &[Key],
        form: fn(&Self, &ferry_core::Row) -> Vec<Option<String>>,
    ) -> anyhow::Result<Rows> {
        let rows = self
            .reader
            .lock()
            .await
            .rows(&self.schema, keys)
            .await
            .with_context(|| format!("reading rows of {}", self.relation))?;
        Ok(rows
            .iter()
            .map(|r| (self.key_of(r), form(self, r)))
            .collect())
    }
}

impl<R, P> Side for Reader<'_, R, P>
where
    R: KeyReader<P>,
    P: ferry_core::Position,
{
    fn relation(&self) -> &str {
        &self.relation
    }
    fn next_bound<'a>(
        &'a self,
        lo: Option<&'a Key>,
        n: i64,
    ) -> BoxFuture<'a, anyhow::Result<Option<Key>>> {
        Box::pin(async move {
            let keys = self.keys_from(lo, None, n.max(0) as u64, Some(1)).await?;
            Ok(keys.into_iter().next())
        })
    }
    fn digest<'a>(
        &'a self,
        lo: Option<&'a Key>,
        hi: Option<&'a Key>,
    ) -> BoxFuture<'a, anyhow::Result<Digest>> {
        Box::pin(async move {
            let mut fold = Fold::default();
            self.each_row(lo, hi, |r| fold.add(row_hash(&self.normal_row(r))))
                .await?;
            Ok(fold.digest())
        })
    }
    fn quantiles<'a>(
        &'a self,
        lo: Option<&'a Key>,
        hi: Option<&'a Key>,
        step: i64,
    ) -> BoxFuture<'a, anyhow::Result<Vec<Key>>> {
        Box::pin(async move {
            // Every `step`-th key, one key per statement (bounded memory).
            let step = step.max(1) as u64;
            let mut out = Vec::new();
            let mut from = lo.cloned();
            loop {
                let next = self.keys_from(from.as_ref(), hi, step - 1, Some(1)).await?;
                match next.into_iter().next() {
                    Some(k) => {
                        out.push(k.clone());
                        from = Some(k);
                    }
                    None => return Ok(out),
                }
            }
        })
    }
    fn hashes<'a>(
        &'a self,
        lo: Option<&'a Key>,
        hi: Option<&'a Key>,
    ) -> BoxFuture<'a, anyhow::Result<BTreeMap<Key, i64>>> {
        Box::pin(async move {
            let mut out = BTreeMap::new();
            self.each_row(lo, hi, |r| {
                out.insert(self.key_of(r), row_hash(&self.normal_row(r)));
            })
            .await?;
            Ok(out)
        })
    }
    fn rows<'a>(&'a self, keys: &'a [Key]) -> BoxFuture<'a, anyhow::Result<Rows>> {
        Box::pin(self.read_rows(keys, Self::normal_row))
    }
}

impl<R, P> SourceSide<P> for Reader<'_, R, P>
where
    R: KeyReader<P>,
    P: ferry_core::Position,
{
    fn begin(&self) -> BoxFuture<'_, anyhow::Result<P>> {
        Box::pin(async move {
            self.reader
                .lock()
                .await
                .begin()
                .await
                .context("starting a source snapshot")
        })
    }
    fn end(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            self.reader
                .lock()
                .await
                .end()
                .await
                .context("ending a source snapshot")
        })
    }
    fn position(&self) -> BoxFuture<'_, anyhow::Result<P>> {
        Box::pin(async move {
            self.reader
                .lock()
                .await
                .position()
                .await
                .context("reading the source position")
        })
    }
    fn repair_rows<'a>(&'a self, keys: &'a [Key]) -> BoxFuture<'a, anyhow::Result<Rows>> {
        Box::pin(self.read_rows(keys, |_, r| Self::input_row(r)))
    }
}

#[cfg(test)]
mod tests {
    use super::{Fold, row_hash};

    #[test]
    fn null_and_empty_hash_apart_and_digests_ignore_order() {
        assert_ne!(row_hash(&[None]), row_hash(&[Some(String::new())]));
        assert_ne!(
            row_hash(&[Some("a".into()), Some("bc".into())]),
            row_hash(&[Some("ab".into()), Some("c".into())])
        );
        let rows = [
            vec![Some("1".to_owned())],
            vec![Some("2".to_owned())],
            vec![None],
        ];
        let (mut a, mut b) = (Fold::default(), Fold::default());
        rows.iter().for_each(|r| a.add(row_hash(r)));
        rows.iter().rev().for_each(|r| b.add(row_hash(r)));
        assert_eq!(a.digest(), b.digest());
    }
}
