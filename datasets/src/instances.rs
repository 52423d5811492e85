//! The SQL table `workflow_instances`: one row per workflow instance, as
//! the replicated store holds them (the node reads them; the SQL worker
//! makes the table).

use polars::prelude::{
    Column, DataFrame, IntoColumn, NamedFrom, PolarsResult, Series, TimeUnit, TimeZone,
};
use serde::{Deserialize, Serialize};

/// The table's name in SQL.
pub const TABLE: &str = "workflow_instances";

/// One instance, as the table shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceRow {
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub version: String,
    /// As the API spells it: `running`, `completed`, ...
    pub status: String,
    pub current_task: Option<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// JSON text.
    pub input: String,
    /// JSON text, once completed.
    pub output: Option<String>,
    /// JSON text (the DSL's error object), once faulted.
    pub error: Option<String>,
    pub retries: u32,
}

/// The table of these rows: `id`, `namespace`, `name`, `version`,
/// `status`, `current_task`, `created_at`, `updated_at` (UTC timestamps),
/// `input`, `output`, `error` (JSON text) and `retries`.
pub fn frame(rows: &[InstanceRow]) -> PolarsResult<DataFrame> {
    let strings = |name: &str, get: &dyn Fn(&InstanceRow) -> String| {
        Column::new(name.into(), rows.iter().map(get).collect::<Vec<String>>())
    };
    let optional = |name: &str, get: &dyn Fn(&InstanceRow) -> Option<String>| {
        Column::new(
            name.into(),
            rows.iter().map(get).collect::<Vec<Option<String>>>(),
        )
    };
    let time = |name: &str, get: &dyn Fn(&InstanceRow) -> i64| {
        Series::new(name.into(), rows.iter().map(get).collect::<Vec<i64>>())
            .into_datetime(TimeUnit::Milliseconds, Some(TimeZone::UTC))
            .into_column()
    };
    DataFrame::new(
        rows.len(),
        vec![
            strings("id", &|r| r.id.clone()),
            strings("namespace", &|r| r.namespace.clone()),
            strings("name", &|r| r.name.clone()),
            strings("version", &|r| r.version.clone()),
            strings("status", &|r| r.status.clone()),
            optional("current_task", &|r| r.current_task.clone()),
            time("created_at", &|r| r.created_ms),
            time("updated_at", &|r| r.updated_ms),
            strings("input", &|r| r.input.clone()),
            optional("output", &|r| r.output.clone()),
            optional("error", &|r| r.error.clone()),
            Column::new(
                "retries".into(),
                rows.iter().map(|r| r.retries).collect::<Vec<u32>>(),
            ),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, status: &str, output: Option<&str>) -> InstanceRow {
        InstanceRow {
            id: id.into(),
            namespace: "commerce".into(),
            name: "order".into(),
            version: "1.0.0".into(),
            status: status.into(),
            current_task: None,
            created_ms: 1_764_900_000_000,
            updated_ms: 1_764_900_001_000,
            input: r#"{"total":10}"#.into(),
            output: output.map(str::to_string),
            error: None,
            retries: 0,
        }
    }

    /// The table runs in a query beside nothing else, with its times as
    /// UTC timestamps.
    #[test]
    fn instances_are_a_table() {
        let rows = vec![
            row("a", "completed", Some("{}")),
            row("b", "running", None),
            row("c", "completed", Some("{}")),
        ];
        let frame = frame(&rows).expect("frame");
        let result = crate::run::execute(
            "SELECT status, count(*) AS n, max(updated_at) > min(created_at) AS later \
             FROM workflow_instances GROUP BY status ORDER BY status",
            None,
            Vec::new(),
            vec![(TABLE, frame)],
        )
        .expect("query");
        assert_eq!(result.height(), 2);
        let status = result.column("status").expect("status");
        assert_eq!(format!("{:?}", status.get(0)), "Ok(String(\"completed\"))");
        let n = result.column("n").expect("n");
        assert_eq!(format!("{:?}", n.get(0)), "Ok(UInt32(2))");
        let later = result.column("later").expect("later");
        assert_eq!(format!("{:?}", later.get(0)), "Ok(Boolean(true))");
    }
}
