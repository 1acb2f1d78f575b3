//! Reading `ferry validate --json` results in tests.

use std::collections::BTreeMap;

use serde_json::Value;

/// A table result's differences: key text (parts joined by `,`) → kind and
/// the changed columns.
pub fn differences(v: &Value) -> BTreeMap<String, (String, Vec<String>)> {
    v["differences"]
        .as_array()
        .expect("differences")
        .iter()
        .map(|d| {
            let key: Vec<&str> = d["key"]
                .as_array()
                .expect("key")
                .iter()
                .map(|k| k.as_str().expect("key text"))
                .collect();
            let cols = d["columns"]
                .as_array()
                .expect("columns")
                .iter()
                .map(|c| c.as_str().expect("column").to_owned())
                .collect();
            (
                key.join(","),
                (d["kind"].as_str().expect("kind").to_owned(), cols),
            )
        })
        .collect()
}

/// Planted differences as [`differences`] reports them.
pub fn expected(planted: &[(&str, &str, &[&str])]) -> BTreeMap<String, (String, Vec<String>)> {
    planted
        .iter()
        .map(|(k, kind, cols)| {
            (
                (*k).to_owned(),
                (
                    (*kind).to_owned(),
                    cols.iter().map(|c| (*c).to_owned()).collect(),
                ),
            )
        })
        .collect()
}

/// `ferry validate --json` output: the results by table name.
pub fn by_table(stdout: &str) -> Result<BTreeMap<String, Value>, serde_json::Error> {
    let results: Vec<Value> = serde_json::from_str(stdout)?;
    Ok(results
        .into_iter()
        .map(|v| (v["table"].as_str().unwrap_or_default().to_owned(), v))
        .collect())
}
