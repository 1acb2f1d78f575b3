//! Schema changes carried from a PostgreSQL source (`postgres.capture_ddl`):
//! one [`DdlMessage`] applied to the target at its place in the stream.
//!
//! Consumes the message (the catalog state the source event trigger
//! recorded, see `ferry_core::ddl`) and the open target transaction; runs,
//! in that transaction, the statements that make the target equal to the
//! source ([`plan`]), so the schema change commits with the rows around it
//! and the checkpoint (exactly once across a crash: a replayed message
//! finds the target already equal and runs nothing). Emits [`Applied`]:
//! the tables whose cached staging/ordering the writer must forget, and
//! what was not carried.
//!
//! Which objects: a table is handled when its target exists (every table of
//! a carried schema is on the target, as `pg_dump` created it), or when it
//! is new and the `tables` filter selects it (or it is a partition of a
//! handled table); its rows are then captured from its creation (the event
//! trigger added it to the publication in the creating transaction; a
//! partition detached on the source is published in the detaching
//! transaction and carried on its own from there). Such tables join ferry's
//! table list ([`Applied::created`]); renamed ones follow, dropped ones
//! leave it.
//! `tables.rename` is applied to every name. Enums and sequences are
//! handled in schemas the target has. Drops come from `sql_drop`: tables
//! (`CASCADE`, as the source must have allowed), indexes, constraints (a
//! partition's inherited copy goes with its parent's), sequences and
//! types. The cutover's record of which identities to make `ALWAYS` again
//! follows the source's identity kinds ([`plan::identity_records`]).
//!
//! A table that becomes published later (a key or `REPLICA IDENTITY
//! FULL` added to a keyless table, `CREATE TABLE AS` followed by a key,
//! `SET LOGGED`) holds rows the stream never carried: the applier copies it
//! then (`crate::applier::Adopt`).
//!
//! What is not carried — views, functions, triggers, policies and other
//! object kinds; a new table the filter does not select; the rows of a
//! keyless or unlogged new table until it is published (publishing it
//! would make the application's UPDATEs on it fail) — is recorded in `ferry.events` (kind
//! `ddl_not_carried`), counted in status and logged, never dropped
//! silently. What cannot be applied exactly (a type change whose `USING`
//! is unknown, a volatile default filling existing rows) stops the run with
//! the fix ([`plan::Inexact`]).

use std::collections::BTreeSet;

use ferry_core::config::{TableFilter, TablesConfig};
use ferry_core::ddl::{DdlMessage, DroppedObject, EnumState, SequenceState, TableState};
use ferry_core::schema::quote_ident;
use ferry_core::{Error, Result, TableId};
use tokio_postgres::Client;
use tracing::{info, warn};

use crate::error::pg_error;

pub mod plan;
mod target;

use plan::{Options, TargetTable};
use target::{
    exists, find_index, inherited_constraint, pin_search_path, read_target, restore_search_path,
    schema_exists,
};

/// What applying one message did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Source tables whose shape may have changed (the writer forgets them).
    pub tables: Vec<TableId>,
    /// Statements run on the target.
    pub statements: usize,
    /// Changes recorded as not carried.
    pub not_carried: Vec<String>,
    /// New carried tables (published from their creation): source, target.
    pub created: Vec<(TableId, TableId)>,
    /// Tables renamed on the source: old source name, new source and target.
    pub renamed: Vec<(TableId, TableId, TableId)>,
    /// Tables dropped on the source.
    pub dropped: Vec<TableId>,
}

/// Applies [`DdlMessage`]s; see the module docs.
#[derive(Debug, Clone)]
pub struct SchemaSync {
    tables: TablesConfig,
    filter: Option<TableFilter>,
    opts: Options,
    /// ferry's `overrides` table (quoted), whose cutover work follows the
    /// schema changes.
    overrides: Option<String>,
}

impl SchemaSync {
    pub fn new(tables: TablesConfig, replica_role: bool) -> Self {
        let filter = tables.filter().ok();
        SchemaSync {
            tables,
            filter,
            opts: Options {
                foreign_keys: replica_role,
            },
            overrides: None,
        }
    }

    /// Keep ferry's `overrides` table (`state.table("overrides")`) in step:
    /// the cutover makes `ALWAYS` exactly the identities that are `ALWAYS`
    /// on the source (set, added, dropped, `SET GENERATED`, renamed, new
    /// tables'; [`plan::identity_records`]).
    pub fn with_overrides(mut self, table: String) -> Self {
        self.overrides = Some(table);
        self
    }

    /// Keep a list of carried tables (source, target) in step with `msg`,
    /// as [`SchemaSync::apply`] changes the target: renamed tables follow,
    /// dropped ones leave, new tables the source published join.
    /// Idempotent (a replayed message changes nothing).
    pub fn follow(&self, carried: &mut Vec<(TableId, TableId)>, msg: &DdlMessage) {
        for d in msg.dropped.iter().filter(|d| d.object_type == "table") {
            if let (Some(s), Some(n)) = (&d.schema, &d.name) {
                let id = TableId::new(s, n);
                carried.retain(|(src, _)| *src != id);
            }
        }
        for t in &msg.tables {
            let id = t.id();
            if carried.iter().any(|(src, _)| *src == id) {
                continue;
            }
            if let Some(old) = t.id_before()
                && let Some(entry) = carried.iter_mut().find(|(src, _)| *src == old)
            {
                *entry = (id.clone(), self.target_of(&id));
                continue;
            }
            if t.parent.is_none() && t.published {
                carried.push((id.clone(), self.target_of(&id)));
            }
        }
    }

    fn target_of(&self, t: &TableId) -> TableId {
        self.tables.target_name(t)
    }

    fn selected(&self, t: &TableId) -> bool {
        self.filter.as_ref().is_some_and(|f| f.matches(t))
    }

    /// Apply `msg` in the open transaction of `client`.
    pub async fn apply(&self, client: &Client, msg: &DdlMessage) -> Result<Applied> {
        let mut out = Applied::default();
        let mut sql = Vec::new();
        let saved = pin_search_path(client).await?;
        let mut result = self.plan_all(client, msg, &mut sql, &mut out).await;
        if result.is_ok() {
            result = run(client, &mut sql, &mut out).await;
        }
        // On failure the transaction is aborted (and rolled back by the
        // applier): the error is the statement's.
        result?;
        restore_search_path(client, &saved).await?;
        for what in &out.not_carried {
            warn!(change = %what, "source schema change not carried");
        }
        if out.statements > 0 {
            info!(
                statements = out.statements,
                tables = out.tables.len(),
                "source schema change applied"
            );
        }
        Ok(out)
    }

    async fn plan_all(
        &self,
        client: &Client,
        msg: &DdlMessage,
        sql: &mut Vec<String>,
        out: &mut Applied,
    ) -> Result<()> {
        if let Some(error) = &msg.error {
            out.not_carried.push(format!(
                "{}: the source event trigger could not describe it ({error}); apply it to the target yourself",
                msg.tag.as_deref().unwrap_or("a schema change")
            ));
            return Ok(());
        }
        let dropped_tables: BTreeSet<TableId> = msg
            .dropped
            .iter()
            .filter(|d| d.object_type == "table")
            .filter_map(|d| Some(TableId::new(d.schema.as_ref()?, d.name.as_ref()?)))
            .collect();
        for d in &msg.dropped {
            self.dropped(client, d, &dropped_tables, sql, out).await?;
        }
        for e in &msg.enums {
            enum_sql(client, e, sql).await?;
        }
        for s in &msg.sequences {
            sequence_sql(client, s, sql).await?;
        }
        for t in &msg.tables {
            self.table(client, t, sql, out).await?;
        }
        for s in msg.sequences.iter().filter(|s| !s.identity) {
            if let Some(o) = &s.owned_by {
                let table = self.target_of(&TableId::new(&o.schema, &o.table));
                // Created by this message, or there before.
                let planned = |name: &str| sql.iter().any(|q| q.contains(name));
                let seq = seq_name(s);
                let table_there = exists(client, &table.quoted()).await?
                    || planned(&format!("TABLE {} ", table.quoted()));
                let seq_there = exists(client, &seq).await? || planned(&format!("SEQUENCE {seq} "));
                if table_there && seq_there {
                    sql.push(format!(
                        "ALTER SEQUENCE {seq} OWNED BY {}.{}",
                        table.quoted(),
                        quote_ident(&o.column)
                    ));
                }
            }
        }
        let handled = [
            "table",
            "index",
            "sequence",
            "type",
            "table column",
            "table constraint",
        ];
        for c in &msg.commands {
            let enum_type = c.object_type == "type"
                && msg.enums.iter().any(|e| {
                    c.identity == format!("{}.{}", quote_ident(&e.schema), quote_ident(&e.name))
                        || c.identity == format!("{}.{}", e.schema, e.name)
                });
            if handled.contains(&c.object_type.as_str()) && (c.object_type != "type" || enum_type) {
                continue;
            }
            let in_target = match &c.schema {
                Some(s) => schema_exists(client, s).await?,
                None => false,
            };
            if in_target {
                out.not_carried.push(format!(
                    "{} {} ({}): ferry carries tables, columns, constraints, indexes, sequences, enum types and comments; run it on the target yourself",
                    c.tag, c.identity, c.object_type
                ));
            }
        }
        Ok(())
    }

    async fn dropped(
        &self,
        client: &Client,
        d: &DroppedObject,
        dropped_tables: &BTreeSet<TableId>,
        sql: &mut Vec<String>,
        out: &mut Applied,
    ) -> Result<()> {
        let (Some(schema), Some(name)) = (&d.schema, &d.name) else {
            // A constraint has no object name; its address names say it.
            // A partition's copy of its parent's constraint (inherited on
            // the target) goes with the parent's, which the same message
            // drops: the source lists the partitions' copies first, and
            // PostgreSQL refuses to drop an inherited one on its own.
            if d.object_type == "table constraint" && d.names.len() == 3 {
                let src = TableId::new(&d.names[0], &d.names[1]);
                if !dropped_tables.contains(&src) {
                    let t = self.target_of(&src);
                    if exists(client, &t.quoted()).await?
                        && !inherited_constraint(client, &t, &d.names[2]).await?
                    {
                        sql.push(format!(
                            "ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}",
                            t.quoted(),
                            quote_ident(&d.names[2])
                        ));
                        out.tables.push(src);
                    }
                }
            }
            return Ok(());
        };
        match d.object_type.as_str() {
            "table" => {
                let src = TableId::new(schema, name);
                let t = self.target_of(&src);
                if exists(client, &t.quoted()).await? {
                    sql.push(format!("DROP TABLE IF EXISTS {} CASCADE", t.quoted()));
                    out.tables.push(src.clone());
                    out.dropped.push(src);
                }
            }
            "index" if d.original => {
                if let Some(found) = find_index(client, schema, name, &self.tables).await? {
                    sql.push(format!("DROP INDEX IF EXISTS {found}"));
                }
            }
            "sequence" if d.original => {
                let q = format!("{}.{}", quote_ident(schema), quote_ident(name));
                if exists(client, &q).await? {
                    sql.push(format!("DROP SEQUENCE IF EXISTS {q} CASCADE"));
                }
            }
            "type" if d.original => {
                if schema_exists(client, schema).await? {
                    sql.push(format!(
                        "DROP TYPE IF EXISTS {}.{}",
                        quote_ident(schema),
                        quote_ident(name)
                    ));
                }
            }
            "table constraint" | "index" | "sequence" | "type" | "trigger" | "rule" => {}
            other => {
                if d.original && schema_exists(client, schema).await? {
                    out.not_carried.push(format!(
                        "DROP {} {}: ferry carries tables, columns, constraints, indexes, sequences, enums and comments; drop it on the target yourself",
                        other.to_uppercase(),
                        d.identity
                    ));
                }
            }
        }
        Ok(())
    }

    /// `src` with each foreign key's `REFERENCES` naming the referenced
    /// table's target (`tables.rename`).
    fn renamed_references(&self, src: &TableState) -> TableState {
        let mut src = src.clone();
        for c in &mut src.constraints {
            if let Some(r) = &c.references {
                let from = TableId::new(&r.schema, &r.name);
                let to = self.target_of(&from);
                if to != from {
                    c.def = c.def.replacen(
                        &format!(" REFERENCES {}(", plan::server_quoted(&from)),
                        &format!(" REFERENCES {}(", plan::server_quoted(&to)),
                        1,
                    );
                }
            }
        }
        src
    }

    async fn table(
        &self,
        client: &Client,
        src: &TableState,
        sql: &mut Vec<String>,
        out: &mut Applied,
    ) -> Result<()> {
        let src = &self.renamed_references(src);
        run(client, sql, out).await?;
        let id = src.id();
        let target = self.target_of(&id);
        let mut present = exists(client, &target.quoted()).await?;
        if !present && let Some(old) = src.id_before() {
            // Renamed on the source: rename the target table it was.
            let old_t = self.target_of(&old);
            if exists(client, &old_t.quoted()).await? {
                if old_t.schema != target.schema {
                    sql.push(format!(
                        "ALTER TABLE {} SET SCHEMA {}",
                        old_t.quoted(),
                        quote_ident(&target.schema)
                    ));
                }
                if old_t.name != target.name {
                    let moved = TableId::new(&target.schema, &old_t.name);
                    sql.push(format!(
                        "ALTER TABLE {} RENAME TO {}",
                        moved.quoted(),
                        quote_ident(&target.name)
                    ));
                }
                out.renamed.push((old.clone(), id.clone(), target.clone()));
                out.tables.push(old);
                present = true;
                // Run before the shape is read below.
                run(client, sql, out).await?;
            }
        }
        out.tables.push(id.clone());
        if present {
            if src.published
                && src.parent.is_none()
                && src.before.as_ref().is_some_and(|b| b.parent.is_some())
            {
                // A partition detached on the source: carried on its own now.
                out.created.push((id.clone(), target.clone()));
            }
            let shape = read_target(client, &target).await?;
            let plan = plan::alter_table(src, &target, &shape, self.opts).map_err(|e| {
                Error::operator(
                    format!(
                        "source schema change of {id} cannot be applied exactly: {}",
                        e.what
                    ),
                    e.fix,
                )
            })?;
            sql.extend(plan.statements);
            out.not_carried.extend(plan.not_carried);
            if let Some(o) = &self.overrides {
                let recorded = recorded_identities(client, o, &target).await?;
                let (add, remove) = plan::identity_records(src, &recorded);
                identity_record_sql(o, &target, &add, &remove, sql);
            }
            self.partitions(client, src, &target, &shape, sql).await?;
            return Ok(());
        }
        let parent = match &src.parent {
            Some(p) => {
                let pt = self.target_of(&TableId::new(&p.schema, &p.name));
                exists(client, &pt.quoted()).await?.then_some(pt)
            }
            None => None,
        };
        if parent.is_none() && !self.selected(&id) {
            out.not_carried.push(format!(
                "table {id} created on the source: the tables filter does not select it"
            ));
            return Ok(());
        }
        if parent.is_none() && src.parent.is_none() && src.published {
            out.created.push((id.clone(), target.clone()));
        }
        if parent.is_none() && src.parent.is_none() && !src.published {
            out.not_carried.push(format!(
                "table {id} created on the source but not published (no primary key or REPLICA IDENTITY FULL: publishing it would make the application's UPDATE and DELETE on it fail; or unlogged): created on the target, empty; its rows are carried, copied from a snapshot, once it gets a primary key or REPLICA IDENTITY FULL (or SET LOGGED)"
            ));
        }
        let plan = plan::create_table(src, &target, parent.as_ref(), self.opts);
        sql.extend(plan.statements);
        out.not_carried.extend(plan.not_carried);
        let (always, _) = plan::identity_records(src, &[]);
        match &self.overrides {
            Some(o) => identity_record_sql(o, &target, &always, &[], sql),
            None => out.not_carried.extend(always.iter().map(|c| {
                format!(
                    "column {} of {target} is GENERATED ALWAYS AS IDENTITY on the source, BY DEFAULT on the target (run ALTER TABLE {} ALTER COLUMN {} SET GENERATED ALWAYS after the cutover)",
                    quote_ident(c),
                    target.quoted(),
                    quote_ident(c)
                )
            })),
        }
        Ok(())
    }

    /// Partitions attached or detached on the source.
    async fn partitions(
        &self,
        client: &Client,
        src: &TableState,
        target: &TableId,
        shape: &TargetTable,
        sql: &mut Vec<String>,
    ) -> Result<()> {
        if src.kind != "p" {
            return Ok(());
        }
        let wanted: Vec<(TableId, &str)> = src
            .partitions
            .iter()
            .map(|p| {
                (
                    self.target_of(&TableId::new(&p.schema, &p.name)),
                    p.bound.as_str(),
                )
            })
            .collect();
        for (child, bound) in &wanted {
            if shape.partitions.contains(child) {
                continue;
            }
            if exists(client, &child.quoted()).await? {
                sql.push(format!(
                    "ALTER TABLE {} ATTACH PARTITION {} {bound}",
                    target.quoted(),
                    child.quoted()
                ));
            } else {
                // Created with PARTITION OF: its own state follows in this
                // message (the CREATE TABLE) and creates it attached.
            }
        }
        for child in &shape.partitions {
            if !wanted.iter().any(|(c, _)| c == child) {
                sql.push(format!(
                    "ALTER TABLE {} DETACH PARTITION {}",
                    target.quoted(),
                    child.quoted()
                ));
                info!(partition = %child, table = %target, "partition detached");
            }
        }
        Ok(())
    }
}

/// One line for the event log: what ran on the source (tags and object
/// identities, never the statement text).
pub fn summary(msg: &DdlMessage) -> String {
    let mut parts: Vec<String> = msg
        .commands
        .iter()
        .map(|c| format!("{} {}", c.tag, c.identity))
        .collect();
    parts.extend(
        msg.dropped
            .iter()
            .filter(|d| d.original)
            .map(|d| format!("DROP {} {}", d.object_type.to_uppercase(), d.identity)),
    );
    parts.join("; ")
}

/// Counts of the schema-change events (`ddl_applied`, `ddl_not_carried`)
/// and the newest not-carried message, for status.
pub async fn recorded(
    client: &Client,
    state: &crate::state::StateStore,
) -> Result<(u64, u64, Option<String>)> {
    let events = state.table("events");
    let row = client
        .query_one(
            &format!(
                "SELECT count(*) FILTER (WHERE kind = 'ddl_applied'), count(*) FILTER (WHERE kind = 'ddl_not_carried'),
                        (SELECT message FROM {events} WHERE kind = 'ddl_not_carried' ORDER BY id DESC LIMIT 1)
                   FROM {events} WHERE kind IN ('ddl_applied', 'ddl_not_carried')"
            ),
            &[],
        )
        .await
        .map_err(|e| pg_error("reading schema-change events", e))?;
    Ok((
        row.get::<_, i64>(0).max(0) as u64,
        row.get::<_, i64>(1).max(0) as u64,
        row.get(2),
    ))
}

/// Run the planned statements (in order, in the open transaction): what
/// is read next sees their effect.
async fn run(client: &Client, sql: &mut Vec<String>, out: &mut Applied) -> Result<()> {
    for s in sql.drain(..) {
        client.batch_execute(&s).await.map_err(|e| {
            pg_error(
                format!("applying a source schema change on the target: {s}"),
                e,
            )
        })?;
        out.statements += 1;
    }
    Ok(())
}

/// The identity columns of `target` recorded in ferry's `overrides` table
/// `o` to be made `GENERATED ALWAYS` at the cutover (not done yet).
async fn recorded_identities(client: &Client, o: &str, target: &TableId) -> Result<Vec<String>> {
    let rows = client
        .query(
            &format!(
                "SELECT object FROM {o} WHERE kind = 'identity' AND relid = $1::text::regclass AND done_at IS NULL ORDER BY object"
            ),
            &[&target.quoted()],
        )
        .await
        .map_err(|e| pg_error(format!("reading the identity columns of {target} recorded for the cutover"), e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Record columns of `target` for the cutover to make `GENERATED ALWAYS`
/// (`add`; a record already done is made pending again) and remove the
/// records of `remove` (see [`plan::identity_records`]).
fn identity_record_sql(
    o: &str,
    target: &TableId,
    add: &[String],
    remove: &[String],
    sql: &mut Vec<String>,
) {
    let lit = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let rel = lit(&target.quoted());
    for c in add {
        sql.push(format!(
            "INSERT INTO {o} (kind, relid, object, original) VALUES ('identity', {rel}::regclass, {}, 'always')
             ON CONFLICT (kind, relid, object) DO UPDATE SET done_at = NULL, recorded_at = now()",
            lit(c)
        ));
    }
    if !remove.is_empty() {
        let names: Vec<String> = remove.iter().map(|c| lit(c)).collect();
        sql.push(format!(
            "DELETE FROM {o} WHERE kind = 'identity' AND relid = {rel}::regclass AND object IN ({}) AND done_at IS NULL",
            names.join(", ")
        ));
    }
}

fn seq_name(s: &SequenceState) -> String {
    format!("{}.{}", quote_ident(&s.schema), quote_ident(&s.name))
}

async fn enum_sql(client: &Client, e: &EnumState, sql: &mut Vec<String>) -> Result<()> {
    let name = format!("{}.{}", quote_ident(&e.schema), quote_ident(&e.name));
    let row = client
        .query_opt(
            "SELECT array(SELECT enumlabel::text FROM pg_enum WHERE enumtypid = t.oid ORDER BY enumsortorder)
               FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
              WHERE n.nspname = $1 AND t.typname = $2",
            &[&e.schema, &e.name],
        )
        .await
        .map_err(|err| pg_error(format!("reading enum {name}"), err))?;
    let lit = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let Some(row) = row else {
        if schema_exists(client, &e.schema).await? {
            let labels: Vec<String> = e.labels.iter().map(|l| lit(l)).collect();
            sql.push(format!(
                "CREATE TYPE {name} AS ENUM ({})",
                labels.join(", ")
            ));
        }
        return Ok(());
    };
    let have: Vec<String> = row.get(0);
    for (i, l) in e.labels.iter().enumerate() {
        if have.contains(l) {
            continue;
        }
        // In source order: the label before it is on the target by now
        // (added just before if it was missing too).
        let place = match (i.checked_sub(1).map(|p| &e.labels[p]), e.labels.get(i + 1)) {
            (Some(p), _) => format!(" AFTER {}", lit(p)),
            (None, Some(n)) => format!(" BEFORE {}", lit(n)),
            (None, None) => String::new(),
        };
        sql.push(format!(
            "ALTER TYPE {name} ADD VALUE IF NOT EXISTS {}{place}",
            lit(l)
        ));
    }
    Ok(())
}

async fn sequence_sql(client: &Client, s: &SequenceState, sql: &mut Vec<String>) -> Result<()> {
    let name = seq_name(s);
    let params = format!(
        "AS {} INCREMENT BY {} MINVALUE {} MAXVALUE {} START WITH {} CACHE {} {}CYCLE",
        s.type_name,
        s.increment,
        s.min,
        s.max,
        s.start,
        s.cache,
        if s.cycle { "" } else { "NO " }
    );
    if exists(client, &name).await? {
        sql.push(format!("ALTER SEQUENCE {name} {params}"));
    } else if !s.identity && schema_exists(client, &s.schema).await? {
        // An identity's sequence comes with the column on the target.
        sql.push(format!("CREATE SEQUENCE {name} {params}"));
    }
    Ok(())
}
