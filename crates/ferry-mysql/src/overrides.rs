//! `[tables.columns."db.table.column"] type`: a target column type chosen by
//! the operator instead of the one the type mapping infers.
//!
//! The catalog schema carries the override as the column's `pg_type` (the
//! DDL, `ferry plan`, the applier and validation all see the target type).
//! Values are still converted exactly by the mapping's natural type
//! ([`Overrides::conversion`]) and then handed to the target as their
//! PostgreSQL text ([`retarget`]): the loader and the applier write text
//! COPY, so PostgreSQL parses the text into the override type, and a value
//! the type cannot take is the target's error. Tables without an override
//! take no other path (nothing is allocated per value for them).

use std::sync::Arc;

use ferry_core::config::{MySqlSourceConfig, TablesConfig};
use ferry_core::{TableSchema, Value};

use crate::typemap;

/// The column type overrides of a run (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct Overrides(Option<Arc<(MySqlSourceConfig, TablesConfig)>>);

/// How a table with overridden columns is converted.
#[derive(Debug, Clone)]
pub struct Conversion {
    /// The table with each column's natural (mapped) type: conversion follows it.
    pub schema: TableSchema,
    /// Per column, the override type its values are handed over as.
    pub targets: Vec<Option<String>>,
}

impl Overrides {
    pub fn new(mysql: &MySqlSourceConfig, tables: &TablesConfig) -> Self {
        let any = tables.columns.values().any(|o| o.pg_type.is_some());
        Overrides(any.then(|| Arc::new((mysql.clone(), tables.clone()))))
    }

    fn target(&self, schema: &TableSchema, column: &str) -> Option<String> {
        let (_, tables) = self.0.as_deref()?;
        let t = tables
            .column_override(&schema.id, column)?
            .pg_type
            .as_deref()?;
        Some(t.trim().to_owned())
    }

    /// Gives the overridden columns of `schema` (types already mapped and
    /// policies applied) their override type.
    pub fn apply(&self, schema: &mut TableSchema) {
        if self.0.is_none() {
            return;
        }
        let targets: Vec<Option<String>> = schema
            .columns
            .iter()
            .map(|c| self.target(schema, &c.name))
            .collect();
        for (c, t) in schema.columns.iter_mut().zip(targets) {
            if let Some(t) = t {
                c.pg_type = t;
            }
        }
    }

    /// `None` when no column of `schema` is overridden (convert as is).
    pub fn conversion(&self, schema: &TableSchema) -> Option<Conversion> {
        let (mysql, _) = self.0.as_deref()?;
        let targets: Vec<Option<String>> = schema
            .columns
            .iter()
            .map(|c| self.target(schema, &c.name))
            .collect();
        if targets.iter().all(Option::is_none) {
            return None;
        }
        let mut natural = schema.clone();
        for (c, t) in natural.columns.iter_mut().zip(&targets) {
            if t.is_some() {
                c.pg_type = typemap::map_column_type(&c.source_type).pg_type;
            }
        }
        typemap::apply_policies(mysql, &mut natural);
        Some(Conversion {
            schema: natural,
            targets,
        })
    }
}

/// `v`, converted by the column's natural type, as the text of `target`.
pub fn retarget(v: Value, target: &str) -> Value {
    match v {
        Value::Null | Value::Unchanged => v,
        v => Value::Other {
            type_name: target.to_owned(),
            text: v.to_pg_text().unwrap_or_default(),
        },
    }
}
