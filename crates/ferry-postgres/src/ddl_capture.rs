//! DDL capture on the source (`postgres.capture_ddl = true`): event
//! triggers that write every schema change into the WAL as a transactional
//! logical message, so it reaches the applier at its exact place between
//! the data changes (DESIGN.md §9).
//!
//! What [`install`] creates (and `ferry plan` lists, [`describe`]), in the
//! state schema on the source (`state.schema`, default `ferry`, which the
//! catalog never carries and `pg_dump` never dumps):
//!
//! | object | fires | does |
//! |---|---|---|
//! | function `ddl_before()`, event trigger `ferry_ddl_before` | `ddl_command_start` of `ALTER TABLE`, `ALTER INDEX` | remembers, for the command's transaction, the names of every table, column, index and constraint of the user schemas by oid/attnum (a transaction-local setting): how a rename is told from a drop and an add |
//! | function `ddl_end()`, event trigger `ferry_ddl_end` | `ddl_command_end` | for each collected command (`pg_event_trigger_ddl_commands()`), the resulting state of each table it touched (columns by attnum with type, default, NOT NULL (and its constraint name, 18+), identity, generated expression, the value existing rows got (`attmissingval`), comments; constraints; indexes; partitions), enums and sequences; a new table the `tables` filter selects that has a key (or `REPLICA IDENTITY FULL`) is added to ferry's publication in the same transaction, so its rows are captured from its creation, and so is a table an `ALTER TABLE` gives a key, `REPLICA IDENTITY FULL` or `SET LOGGED` (the applier then copies the rows it held from a new snapshot); then `pg_logical_emit_message(true, 'ferry.ddl', json)` |
//! | function `ddl_publish(oid)` | called by `ddl_end` | adds a table the filter selects and that has a key (or `REPLICA IDENTITY FULL`) to ferry's publication (the insert-only one for `tables.insert_only`): new tables, tables altered into qualifying, and partitions detached by the command |
//! | function `ddl_drop()`, event trigger `ferry_ddl_drop` | `sql_drop` | the dropped tables, indexes, constraints, sequences, types, … (`pg_event_trigger_dropped_objects()`), as a message too |
//!
//! Why catalog state and not the statement text: core PostgreSQL has no
//! deparser for a collected command, `current_query()` may hold several
//! statements or be a function call, and the applier has to rename tables
//! (`tables.rename`) anyway. The state is exact whatever the statement
//! looked like; the applier compares it with the target and runs what makes
//! them equal. The one thing the catalog cannot say — the `USING`
//! expression of a column type change, which rewrote the rows — is read
//! from `current_query()` (sent for `ALTER TABLE` commands only, never
//! logged) and parsed in [`crate::ddl_text`].
//!
//! The functions are `SECURITY DEFINER` (they run as the role that
//! installed them: it may write logical messages and alter the
//! publication) with a fixed `search_path = pg_catalog, pg_temp` (every
//! deparsed name comes out schema-qualified, and nothing the application
//! defines is called) and pinned `DateStyle`/`IntervalStyle`/`TimeZone`/
//! `extra_float_digits`/`bytea_output` (missing values are text of one
//! fixed form). Commands inside extensions, on temporary objects and on
//! the state schema are skipped. Creating event triggers needs superuser
//! (on RDS/Aurora `rds_superuser`); the messages need PostgreSQL 14+
//! (pgoutput `messages`). `ferry cutover` and `ferry cleanup` remove
//! everything ([`remove`]).
//!
//! The functions do not make the application's statement fail: an error
//! while describing it is caught and sent instead (`error`), which
//! the applier records as not carried (the Relation check then stops the
//! run with the fix if the table's shape no longer matches).
//!
//! Cost on the source: nothing for DML; for each DDL statement a few
//! catalog queries, and for `ALTER TABLE`/`ALTER INDEX` one read of the
//! names of every user table, column, index and constraint.

use ferry_core::Error;
use ferry_core::config::Config;
use ferry_core::ddl::DDL_PREFIX;
use ferry_core::schema::quote_ident;
use tokio_postgres::Client;

use crate::connect::query_error;
use crate::slot::insert_only_publication;

/// Event trigger names (database-wide).
pub const TRIGGERS: [&str; 3] = ["ferry_ddl_before", "ferry_ddl_end", "ferry_ddl_drop"];

/// What `ferry plan` shows before the user consents.
pub fn describe(config: &Config) -> String {
    let s = quote_ident(&config.state.schema);
    format!(
        "installs on the source: schema {s} (if missing), functions {s}.ddl_before(), {s}.ddl_end(), {s}.ddl_drop() \
         (SECURITY DEFINER, owned by the ferry role) and event triggers ferry_ddl_before (ddl_command_start: ALTER TABLE, ALTER INDEX), \
         ferry_ddl_end (ddl_command_end) and ferry_ddl_drop (sql_drop); each DDL statement writes its resulting catalog state into the WAL \
         (pg_logical_emit_message(true, '{DDL_PREFIX}', …)) and new tables the filter selects join publication '{}'; \
         removed by `ferry cutover` and `ferry cleanup`",
        config.postgres.publication
    )
}

/// Publish every table the filter selects that the capture would have
/// published had it been created with the capture installed (`ddl_publish`;
/// already published ones are left alone).
pub async fn publish_new(client: &Client, config: &Config) -> Result<(), Error> {
    let s = quote_ident(&config.state.schema);
    client
        .query(
            &format!(
                "SELECT {s}.ddl_publish(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
                    AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'"
            ),
            &[],
        )
        .await
        .map_err(|e| query_error("publishing the tables created while ferry started", e))?;
    Ok(())
}

/// A glob of `tables.include`/`exclude` as a PostgreSQL regular
/// expression (`*` any text, `?` one character, `[…]`, `{a,b}`), anchored.
pub fn glob_regex(glob: &str) -> String {
    let mut out = String::from("^");
    let mut chars = glob.chars().peekable();
    let mut in_alt = 0usize;
    while let Some(c) = chars.next() {
        match c {
            '*' => {
                while chars.peek() == Some(&'*') {
                    chars.next();
                }
                out.push_str(".*");
            }
            '?' => out.push('.'),
            '[' => {
                out.push('[');
                if chars.peek() == Some(&'!') {
                    chars.next();
                    out.push('^');
                }
                for c in chars.by_ref() {
                    if c == ']' {
                        break;
                    }
                    if c == '\\' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push(']');
            }
            '{' => {
                in_alt += 1;
                out.push('(');
            }
            '}' if in_alt > 0 => {
                in_alt -= 1;
                out.push(')');
            }
            ',' if in_alt > 0 => out.push('|'),
            '\\' => {
                if let Some(n) = chars.next() {
                    push_escaped(&mut out, n);
                }
            }
            other => push_escaped(&mut out, other),
        }
    }
    out.push('$');
    out
}

fn push_escaped(out: &mut String, c: char) {
    if "\\.^$|()[]{}*+?".contains(c) {
        out.push('\\');
    }
    out.push(c);
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// SQL boolean over `raw` (`schema.table`) and `quoted` (the quoted form):
/// any of `globs` matches either.
fn any_glob(globs: &[String], raw: &str, quoted: &str) -> String {
    if globs.is_empty() {
        return "false".into();
    }
    globs
        .iter()
        .map(|g| {
            let re = literal(&glob_regex(g));
            format!("({raw} ~ {re} OR {quoted} ~ {re})")
        })
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// The statements [`install`] runs (pure, for tests and `plan`).
pub fn install_sql(config: &Config) -> String {
    let s = quote_ident(&config.state.schema);
    let state_lit = literal(&config.state.schema);
    let raw = "(n.nspname || '.' || c.relname)";
    let quoted = "(quote_ident(n.nspname) || '.' || quote_ident(c.relname))";
    let t = &config.tables;
    let selected = format!(
        "(({}) AND NOT ({}))",
        any_glob(&t.include, raw, quoted),
        any_glob(&t.exclude, raw, quoted)
    );
    let insert_only = any_glob(&t.insert_only, raw, "''");
    let publication = literal(&config.postgres.publication);
    let insert_only_publication = literal(&insert_only_publication(&config.postgres.publication));
    let user_schema = format!(
        "n.nspname NOT IN ('pg_catalog', 'information_schema', {state_lit}) AND n.nspname NOT LIKE 'pg\\_temp\\_%' AND n.nspname NOT LIKE 'pg\\_toast%'"
    );
    let settings = "SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET datestyle = 'ISO, MDY' \
                    SET intervalstyle = 'postgres' SET timezone = 'UTC' SET extra_float_digits = 3 SET bytea_output = 'hex'";
    format!(
        r#"CREATE SCHEMA IF NOT EXISTS {s};
CREATE OR REPLACE FUNCTION {s}.ddl_before() RETURNS event_trigger LANGUAGE plpgsql {settings} AS $ferry$
BEGIN
  PERFORM set_config('ferry.ddl_before', coalesce((
    SELECT jsonb_object_agg(c.oid::text, jsonb_build_object(
      'schema', n.nspname, 'name', c.relname,
      'parent', (SELECT h.inhparent::bigint FROM pg_inherits h WHERE h.inhrelid = c.oid AND c.relispartition),
      'columns', coalesce((SELECT jsonb_object_agg(a.attnum::text, a.attname) FROM pg_attribute a
                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '{{}}'::jsonb),
      'objects', coalesce((SELECT jsonb_object_agg(o.oid::text, o.name) FROM (
                    SELECT i.indexrelid AS oid, ic.relname::text AS name FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid WHERE i.indrelid = c.oid
                    UNION ALL SELECT co.oid, co.conname::text FROM pg_constraint co WHERE co.conrelid = c.oid) o), '{{}}'::jsonb)))
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND {user_schema})::text, '{{}}'), true);
EXCEPTION WHEN OTHERS THEN
  -- Never fail the application's DDL (the applier then stops rather than
  -- guess whether a column was renamed).
  PERFORM set_config('ferry.ddl_before', '{{}}', true);
END
$ferry$;
CREATE OR REPLACE FUNCTION {s}.ddl_table(rel oid) RETURNS jsonb LANGUAGE sql STABLE {settings} AS $ferry$
  SELECT jsonb_build_object(
    'oid', c.oid::bigint, 'schema', n.nspname, 'name', c.relname, 'kind', c.relkind::text,
    'persistence', c.relpersistence::text, 'replident', c.relreplident::text,
    'published', EXISTS (SELECT 1 FROM pg_publication p WHERE p.pubname IN ({publication}, {insert_only_publication})
                           AND (p.puballtables OR EXISTS (SELECT 1 FROM pg_publication_rel pr WHERE pr.prpubid = p.oid AND pr.prrelid = c.oid))),
    'comment', obj_description(c.oid, 'pg_class'),
    'partkey', CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END,
    'parent', (SELECT jsonb_build_object('schema', pn.nspname, 'name', pc.relname, 'bound', pg_get_expr(c.relpartbound, c.oid))
               FROM pg_inherits h JOIN pg_class pc ON pc.oid = h.inhparent JOIN pg_namespace pn ON pn.oid = pc.relnamespace
               WHERE h.inhrelid = c.oid AND c.relispartition),
    'partitions', coalesce((SELECT jsonb_agg(jsonb_build_object('schema', pn.nspname, 'name', pc.relname, 'bound', pg_get_expr(pc.relpartbound, pc.oid)) ORDER BY pn.nspname, pc.relname)
               FROM pg_inherits h JOIN pg_class pc ON pc.oid = h.inhrelid JOIN pg_namespace pn ON pn.oid = pc.relnamespace
               WHERE h.inhparent = c.oid AND pc.relispartition), '[]'::jsonb),
    'columns', coalesce((SELECT jsonb_agg(jsonb_build_object(
        'attnum', a.attnum, 'name', a.attname, 'type', format_type(a.atttypid, a.atttypmod), 'not_null', a.attnotnull,
        'not_null_name', (SELECT nn.conname FROM pg_constraint nn WHERE nn.conrelid = c.oid AND nn.contype = 'n' AND nn.conkey[1] = a.attnum),
        'not_null_not_valid', EXISTS (SELECT 1 FROM pg_constraint nn WHERE nn.conrelid = c.oid AND nn.contype = 'n' AND nn.conkey[1] = a.attnum AND NOT nn.convalidated),
        'default', CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid) END,
        'generated', CASE WHEN a.attgenerated <> '' THEN pg_get_expr(d.adbin, d.adrelid) END,
        'identity', nullif(a.attidentity::text, ''),
        'missing', CASE WHEN a.atthasmissing THEN (a.attmissingval::text::text[])[1] END,
        'collation', CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
                          THEN (SELECT quote_ident(cn.nspname) || '.' || quote_ident(cl.collname) FROM pg_collation cl
                                JOIN pg_namespace cn ON cn.oid = cl.collnamespace WHERE cl.oid = a.attcollation) END,
        'comment', col_description(c.oid, a.attnum)) ORDER BY a.attnum)
      FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
      LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
      WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '[]'::jsonb),
    'constraints', coalesce((SELECT jsonb_agg(jsonb_build_object('oid', co.oid::bigint, 'name', co.conname, 'type', co.contype::text,
                   'def', pg_get_constraintdef(co.oid),
                   'references', CASE WHEN co.contype = 'f' THEN (SELECT jsonb_build_object('schema', rn.nspname, 'name', rc.relname)
                                      FROM pg_class rc JOIN pg_namespace rn ON rn.oid = rc.relnamespace WHERE rc.oid = co.confrelid) END) ORDER BY co.conname)
      FROM pg_constraint co WHERE co.conrelid = c.oid AND co.contype IN ('p', 'u', 'f', 'c', 'x') AND co.conislocal), '[]'::jsonb),
    'indexes', coalesce((SELECT jsonb_agg(jsonb_build_object('oid', i.indexrelid::bigint, 'name', ic.relname, 'def', pg_get_indexdef(i.indexrelid),
                   'comment', obj_description(i.indexrelid, 'pg_class')) ORDER BY ic.relname)
      FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
      WHERE i.indrelid = c.oid AND NOT ic.relispartition
        AND NOT EXISTS (SELECT 1 FROM pg_constraint co WHERE co.conindid = i.indexrelid AND co.conrelid = c.oid AND co.contype IN ('p', 'u', 'x'))), '[]'::jsonb),
    'before', current_setting('ferry.ddl_before', true)::jsonb -> c.oid::text)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = rel
$ferry$;
CREATE OR REPLACE FUNCTION {s}.ddl_publish(rel oid) RETURNS void LANGUAGE plpgsql {settings} AS $ferry$
DECLARE
  pub text;
  kind "char";
BEGIN
  SELECT CASE WHEN {insert_only} THEN {insert_only_publication} ELSE {publication} END, c.relkind INTO pub, kind
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = rel AND c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relpersistence = 'p'
      AND {selected}
      AND ({insert_only} OR c.relreplident = 'f'
           OR EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND (i.indisprimary OR i.indisreplident)));
  IF pub IS NOT NULL AND EXISTS (SELECT 1 FROM pg_publication p WHERE p.pubname = pub AND NOT p.puballtables)
     AND NOT EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                     WHERE p.pubname = pub AND pr.prrelid = rel) THEN
    -- ONLY: a new inheritance parent's children are tables of their own.
    EXECUTE format('ALTER PUBLICATION %I ADD TABLE %s%s', pub, CASE WHEN kind = 'r' THEN 'ONLY ' ELSE '' END, rel::regclass);
  END IF;
END
$ferry$;
CREATE OR REPLACE FUNCTION {s}.ddl_end() RETURNS event_trigger LANGUAGE plpgsql {settings} AS $ferry$
DECLARE
  r record;
  cmds jsonb := '[]';
  rels oid[] := '{{}}';
  seqs oid[] := '{{}}';
  enums oid[] := '{{}}';
  alter_text boolean := false;
  rel oid;
  payload text;
BEGIN
  -- Described inside a block that catches errors; the message itself is
  -- written outside it (a message written in a subtransaction can reach
  -- the stream after rows written later by the same transaction).
  BEGIN
  FOR r IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
    CONTINUE WHEN r.in_extension OR r.schema_name IS NULL
      OR r.schema_name IN ('pg_catalog', 'information_schema', {state_lit})
      OR r.schema_name LIKE 'pg\_temp\_%' OR r.schema_name LIKE 'pg\_toast%';
    cmds := cmds || jsonb_build_object('tag', r.command_tag, 'type', r.object_type, 'schema', r.schema_name, 'identity', r.object_identity);
    IF r.command_tag = 'ALTER TABLE' THEN alter_text := true; END IF;
    IF r.classid = 'pg_class'::regclass THEN
      SELECT CASE WHEN c.relkind IN ('i', 'I') THEN i.indrelid WHEN c.relkind = 'S' THEN NULL ELSE c.oid END
        INTO rel FROM pg_class c LEFT JOIN pg_index i ON i.indexrelid = c.oid WHERE c.oid = r.objid;
      IF rel IS NOT NULL AND NOT rel = ANY (rels) THEN rels := rels || rel; END IF;
      IF EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = r.objid AND c.relkind = 'S') AND NOT r.objid = ANY (seqs) THEN
        seqs := seqs || r.objid;
      END IF;
      -- A new table the filter selects is published from its creation.
      IF r.command_tag = 'CREATE TABLE' AND r.object_type = 'table' THEN
        PERFORM {s}.ddl_publish(r.objid);
      END IF;
    ELSIF r.classid = 'pg_constraint'::regclass THEN
      -- RENAME CONSTRAINT, COMMENT ON CONSTRAINT: the table's state.
      SELECT nullif(co.conrelid, 0) INTO rel FROM pg_constraint co WHERE co.oid = r.objid;
      IF rel IS NOT NULL AND NOT rel = ANY (rels) THEN rels := rels || rel; END IF;
    ELSIF r.classid = 'pg_type'::regclass THEN
      IF EXISTS (SELECT 1 FROM pg_type t WHERE t.oid = r.objid AND t.typtype = 'e') AND NOT r.objid = ANY (enums) THEN
        enums := enums || r.objid;
      END IF;
    END IF;
  END LOOP;
  -- A partition detached by this command: published from now on (its
  -- rows came through its parent until here).
  IF alter_text THEN
    FOR rel IN SELECT b.key::oid FROM jsonb_each(coalesce(current_setting('ferry.ddl_before', true), '{{}}')::jsonb) b
                JOIN pg_class c ON c.oid = b.key::oid
               WHERE b.value->>'parent' IS NOT NULL AND NOT c.relispartition LOOP
      PERFORM {s}.ddl_publish(rel);
      IF NOT rel = ANY (rels) THEN rels := rels || rel; END IF;
    END LOOP;
  END IF;
  -- A table given a key or REPLICA IDENTITY FULL, or made logged, by this
  -- command: published from now on (the applier copies its earlier rows).
  IF alter_text THEN
    FOREACH rel IN ARRAY rels LOOP
      PERFORM {s}.ddl_publish(rel);
    END LOOP;
  END IF;
  IF jsonb_array_length(cmds) = 0 THEN RETURN; END IF;
  payload := jsonb_build_object(
    'commands', cmds,
    'query', CASE WHEN alter_text THEN current_query() END,
    'tables', coalesce((SELECT jsonb_agg({s}.ddl_table(x)) FROM unnest(rels) x
                        WHERE EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = x AND c.relkind IN ('r', 'p'))), '[]'::jsonb),
    'enums', coalesce((SELECT jsonb_agg(jsonb_build_object('schema', n.nspname, 'name', t.typname,
                 'labels', (SELECT jsonb_agg(e.enumlabel ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid)))
               FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.oid = ANY (enums)), '[]'::jsonb),
    'sequences', coalesce((SELECT jsonb_agg(jsonb_build_object('schema', n.nspname, 'name', c.relname,
                 'type', format_type(s.seqtypid, NULL), 'start', s.seqstart, 'increment', s.seqincrement,
                 'min', s.seqmin, 'max', s.seqmax, 'cache', s.seqcache, 'cycle', s.seqcycle,
                 'identity', EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                                       AND d.objid = c.oid AND d.deptype = 'i'),
                 'owned_by', (SELECT jsonb_build_object('schema', tn.nspname, 'table', tc.relname, 'column', a.attname)
                              FROM pg_depend d JOIN pg_class tc ON tc.oid = d.refobjid JOIN pg_namespace tn ON tn.oid = tc.relnamespace
                              JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                              WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.refclassid = 'pg_class'::regclass
                                AND d.deptype IN ('a', 'i') AND d.refobjsubid > 0 LIMIT 1)))
               FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE s.seqrelid = ANY (seqs)), '[]'::jsonb))::text;
  EXCEPTION WHEN OTHERS THEN
    -- Never fail the application's DDL: say what could not be described.
    payload := jsonb_build_object('error', SQLERRM, 'tag', tg_tag)::text;
  END;
  PERFORM pg_logical_emit_message(true, {prefix}, payload);
END
$ferry$;
CREATE OR REPLACE FUNCTION {s}.ddl_drop() RETURNS event_trigger LANGUAGE plpgsql {settings} AS $ferry$
DECLARE
  dropped jsonb;
  payload text;
BEGIN
  BEGIN
  SELECT jsonb_agg(jsonb_build_object('type', o.object_type, 'schema', o.schema_name, 'name', o.object_name,
           'identity', o.object_identity, 'names', to_jsonb(o.address_names), 'original', o.original))
    INTO dropped FROM pg_event_trigger_dropped_objects() o
    WHERE NOT o.is_temporary AND o.schema_name IS NOT NULL
      AND o.schema_name NOT IN ('pg_catalog', 'information_schema', {state_lit}) AND o.schema_name NOT LIKE 'pg\_toast%'
      AND o.object_type NOT IN ('toast table', 'table column', 'default value', 'type', 'index column')
      OR (o.object_type = 'type' AND o.original AND o.schema_name IS NOT NULL AND o.schema_name NOT IN ('pg_catalog', {state_lit}));
  IF dropped IS NULL THEN RETURN; END IF;
  payload := jsonb_build_object('dropped', dropped)::text;
  EXCEPTION WHEN OTHERS THEN
    payload := jsonb_build_object('error', SQLERRM, 'tag', tg_tag)::text;
  END;
  PERFORM pg_logical_emit_message(true, {prefix}, payload);
END
$ferry$;
-- Helpers run as their owner: nobody else calls them.
REVOKE ALL ON FUNCTION {s}.ddl_table(oid), {s}.ddl_publish(oid) FROM PUBLIC;
DO $ferry$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'ferry_ddl_before') THEN
    CREATE EVENT TRIGGER ferry_ddl_before ON ddl_command_start WHEN TAG IN ('ALTER TABLE', 'ALTER INDEX') EXECUTE PROCEDURE {s}.ddl_before();
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'ferry_ddl_end') THEN
    CREATE EVENT TRIGGER ferry_ddl_end ON ddl_command_end EXECUTE PROCEDURE {s}.ddl_end();
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'ferry_ddl_drop') THEN
    CREATE EVENT TRIGGER ferry_ddl_drop ON sql_drop EXECUTE PROCEDURE {s}.ddl_drop();
  END IF;
END $ferry$;
"#,
        prefix = literal(DDL_PREFIX),
    )
}

/// The statements [`remove`] runs.
pub fn remove_sql(config: &Config) -> String {
    let s = quote_ident(&config.state.schema);
    let mut out: Vec<String> = TRIGGERS
        .iter()
        .map(|t| format!("DROP EVENT TRIGGER IF EXISTS {t}"))
        .collect();
    for f in [
        "ddl_before()",
        "ddl_end()",
        "ddl_drop()",
        "ddl_table(oid)",
        "ddl_publish(oid)",
    ] {
        out.push(format!("DROP FUNCTION IF EXISTS {s}.{f}"));
    }
    out.join(";\n")
}

/// Install (or refresh: the functions carry the current filter) the DDL
/// capture on the source. Idempotent.
pub async fn install(source: &Client, config: &Config) -> Result<(), Error> {
    source
        .batch_execute(&install_sql(config))
        .await
        .map_err(|e| {
            query_error("installing DDL capture (event triggers) on the source", e).with_fix(
                "event triggers need superuser (RDS/Aurora: rds_superuser); grant it to the ferry role or set postgres.capture_ddl = false",
            )
        })?;
    Ok(())
}

/// Remove the event triggers and functions [`install`] created (the state
/// schema on the source is dropped when it is left empty). Idempotent;
/// returns whether any trigger was there.
pub async fn remove(source: &Client, config: &Config) -> Result<bool, Error> {
    let row = source
        .query_one(
            "SELECT (SELECT count(*) FROM pg_event_trigger WHERE evtname = ANY($1)),
                    (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                      WHERE n.nspname = $2 AND p.proname IN ('ddl_before', 'ddl_end', 'ddl_drop', 'ddl_table', 'ddl_publish'))",
            &[&TRIGGERS.to_vec(), &config.state.schema],
        )
        .await
        .map_err(|e| query_error("looking up ferry's event triggers", e))?;
    let (triggers, functions): (i64, i64) = (row.get(0), row.get(1));
    if triggers == 0 && functions == 0 {
        return Ok(false);
    }
    source
        .batch_execute(&remove_sql(config))
        .await
        .map_err(|e| query_error("removing DDL capture (event triggers) from the source", e))?;
    let s = quote_ident(&config.state.schema);
    // Only if empty: a schema of that name with other objects stays.
    let _ = source
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {s} RESTRICT"))
        .await;
    Ok(triggers > 0)
}

/// Whether the source has ferry's event triggers.
pub async fn installed(source: &Client) -> Result<bool, Error> {
    let n: i64 = source
        .query_one(
            "SELECT count(*) FROM pg_event_trigger WHERE evtname = ANY($1)",
            &[&TRIGGERS.to_vec()],
        )
        .await
        .map_err(|e| query_error("looking up ferry's event triggers", e))?
        .get(0);
    Ok(n as usize == TRIGGERS.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_become_anchored_regexes() {
        assert_eq!(glob_regex("*.*"), "^.*\\..*$");
        assert_eq!(glob_regex("app.audit_?"), "^app\\.audit_.$");
        assert_eq!(glob_regex("{a,b}.t[!x]"), "^(a|b)\\.t[^x]$");
        assert_eq!(glob_regex("\"S\".\"O I\""), "^\"S\"\\.\"O I\"$");
    }

    #[test]
    fn install_sql_names_every_object_and_the_filter() {
        let config = Config::from_parts(
            "[source]\nurl = \"postgres://a@h/d\"\n[target]\nurl = \"postgres://a@h/e\"\n[tables]\ninclude = [\"public.*\"]\nexclude = [\"public.tmp_*\"]\n",
            "test",
            Vec::new(),
        )
        .unwrap();
        let sql = install_sql(&config);
        for t in TRIGGERS {
            assert!(sql.contains(&format!("CREATE EVENT TRIGGER {t}")), "{t}");
        }
        assert!(sql.contains("'^public\\..*$'"), "{sql}");
        assert!(sql.contains("'^public\\.tmp_.*$'"), "{sql}");
        assert!(sql.contains("pg_logical_emit_message(true, 'ferry.ddl'"));
        let rm = remove_sql(&config);
        assert!(rm.contains("DROP EVENT TRIGGER IF EXISTS ferry_ddl_end"));
    }
}
