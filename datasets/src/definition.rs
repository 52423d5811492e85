//! Dataset definitions as users write them, their checks, and how a
//! message's CloudEvent envelope becomes a row.

use chrono::{DateTime, NaiveDate, NaiveDateTime};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shoal_sinks::definition::{validate_identifier, validate_name, DefinitionError};
use utoipa::ToSchema;

/// Keys of the configuration store that hold the definitions.
pub const DATASETS_PREFIX: &str = "_shoal/datasets/";
/// Most columns a dataset maps.
pub const MAX_COLUMNS: usize = 64;
/// Columns every dataset has besides its own: the message id (duplicates
/// are dropped by it at compaction) and the row's time (UTC).
pub const ID_COLUMN: &str = "_id";
pub const TIME_COLUMN: &str = "_time";
/// The day partition, as a Hive-style directory (`date=YYYY-MM-DD`): a
/// column of the table for readers, not stored in the files.
pub const DATE_COLUMN: &str = "date";

fn invalid(message: impl Into<String>) -> DefinitionError {
    DefinitionError(message.into())
}

/// The type of a dataset column, as stored in Parquet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    /// Text; numbers and booleans are stored as their JSON text.
    String,
    /// A 64-bit integer (a JSON number without a fraction).
    Int64,
    /// A 64-bit float (any JSON number).
    Float64,
    Bool,
    /// Microseconds, UTC (Parquet TIMESTAMP): an RFC 3339 text, a date
    /// (`YYYY-MM-DD`, midnight UTC) or milliseconds since the epoch.
    Timestamp,
    /// Any JSON value, stored as its text.
    Json,
}

/// One column: its name, type and where its value is in the message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetColumn {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ColumnType,
    /// JSON Pointer into the message's CloudEvent envelope (`/data/total`,
    /// `/subject`, ...). A pointer that finds nothing (or `null`) stores NULL.
    pub from: String,
}

/// How long a node keeps a dataset's files. Unset: forever.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Day partitions older than this many days (by their date, UTC) are deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_days: Option<u32>,
    /// Past this many bytes of files on a node, its oldest files are deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

/// An append-only columnar dataset: each message a route sends to
/// `dataset:<name>` becomes one row of a Parquet file under the receiving
/// node's data dir, in the day partition of the row's time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "orders", "columns": [
    {"name": "order_id", "type": "string", "from": "/data/order_id"},
    {"name": "customer_id", "type": "string", "from": "/data/customer_id"},
    {"name": "total", "type": "float64", "from": "/data/total"}],
    "time": "/time", "retention": {"max_age_days": 400}}))]
pub struct Dataset {
    /// Read-only: the name in the path.
    #[serde(default)]
    pub name: String,
    pub columns: Vec<DatasetColumn>,
    /// JSON Pointer to the row's time (`_time`, which picks its day
    /// partition): an RFC 3339 text, a date or epoch milliseconds. A row
    /// without one is refused (a dead letter).
    #[serde(default = "default_time")]
    pub time: String,
    #[serde(default)]
    pub retention: Retention,
}

fn default_time() -> String {
    "/time".to_string()
}

/// One cell of a row.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    Null,
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Microseconds since the epoch, UTC.
    Micros(i64),
}

/// A message as a dataset row.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub id: String,
    /// Microseconds since the epoch, UTC.
    pub time: i64,
    pub cells: Vec<Cell>,
}

impl Row {
    /// The day partition of the row (`YYYY-MM-DD`).
    pub fn date(&self) -> String {
        DateTime::from_timestamp_micros(self.time)
            .map(|t| t.format("%Y-%m-%d").to_string())
            .unwrap_or_else(|| "1970-01-01".into())
    }
}

impl Dataset {
    pub fn validate(mut self, name: &str) -> Result<Dataset, DefinitionError> {
        validate_name("dataset", name)?;
        if crate::query::BUILTIN_TABLES.contains(&name) {
            return Err(invalid(format!(
                "{name:?} is the name of a built-in table of SQL queries; choose another"
            )));
        }
        self.name = name.to_string();
        if self.columns.is_empty() || self.columns.len() > MAX_COLUMNS {
            return Err(invalid(format!(
                "a dataset maps 1 to {MAX_COLUMNS} columns"
            )));
        }
        for (i, column) in self.columns.iter().enumerate() {
            validate_identifier("column", &column.name)?;
            if [ID_COLUMN, TIME_COLUMN, DATE_COLUMN].contains(&column.name.as_str()) {
                return Err(invalid(format!(
                    "column {:?} is reserved (every dataset has {ID_COLUMN}, {TIME_COLUMN} and {DATE_COLUMN})",
                    column.name
                )));
            }
            if self.columns[..i].iter().any(|c| c.name == column.name) {
                return Err(invalid(format!("column {:?} is named twice", column.name)));
            }
            check_pointer(&format!("column {:?}", column.name), &column.from)?;
        }
        check_pointer("time", &self.time)?;
        if self.retention.max_age_days == Some(0) || self.retention.max_bytes == Some(0) {
            return Err(invalid(
                "retention limits are at least 1 (leave one out to keep files forever)",
            ));
        }
        Ok(self)
    }

    /// A message's CloudEvent envelope as a row; the reason it cannot be one.
    pub fn row(&self, envelope: &Value) -> Result<Row, String> {
        let id = envelope
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let time = match envelope.pointer(&self.time) {
            Some(value) if !value.is_null() => {
                micros(value).ok_or_else(|| format!("time {}: {value} is not a time", self.time))?
            }
            _ => {
                return Err(format!(
                    "time {}: the message has no value there",
                    self.time
                ))
            }
        };
        let cells = self
            .columns
            .iter()
            .map(|column| match envelope.pointer(&column.from) {
                None | Some(Value::Null) => Ok(Cell::Null),
                Some(value) => cell(column.kind, value).ok_or_else(|| {
                    format!(
                        "column {}: {} is not a valid {}",
                        column.name,
                        shorten(value),
                        type_name(column.kind)
                    )
                }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Row { id, time, cells })
    }
}

fn check_pointer(what: &str, pointer: &str) -> Result<(), DefinitionError> {
    if pointer.starts_with('/') {
        Ok(())
    } else {
        Err(invalid(format!(
            "{what}: {pointer:?} is not a JSON Pointer (it starts with '/', e.g. /data/id)"
        )))
    }
}

pub fn type_name(kind: ColumnType) -> &'static str {
    match kind {
        ColumnType::String => "string",
        ColumnType::Int64 => "int64",
        ColumnType::Float64 => "float64",
        ColumnType::Bool => "bool",
        ColumnType::Timestamp => "timestamp",
        ColumnType::Json => "json",
    }
}

fn shorten(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(64) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text,
    }
}

fn cell(kind: ColumnType, value: &Value) -> Option<Cell> {
    Some(match kind {
        ColumnType::String => match value {
            Value::String(text) => Cell::Text(text.clone()),
            Value::Number(_) | Value::Bool(_) => Cell::Text(value.to_string()),
            _ => return None,
        },
        ColumnType::Int64 => Cell::Int(value.as_i64().or_else(|| {
            value
                .as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        })?),
        ColumnType::Float64 => Cell::Float(value.as_f64()?),
        ColumnType::Bool => Cell::Bool(value.as_bool()?),
        ColumnType::Timestamp => Cell::Micros(micros(value)?),
        ColumnType::Json => Cell::Text(value.to_string()),
    })
}

/// A time as microseconds since the epoch: RFC 3339, `YYYY-MM-DD HH:MM:SS`
/// (UTC), `YYYY-MM-DD`, or a number of milliseconds.
pub fn micros(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().and_then(|ms| ms.checked_mul(1000)),
        Value::String(text) => {
            if let Ok(time) = DateTime::parse_from_rfc3339(text) {
                return Some(time.timestamp_micros());
            }
            if let Ok(time) = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f") {
                return Some(time.and_utc().timestamp_micros());
            }
            NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .ok()
                .and_then(|day| day.and_hms_opt(0, 0, 0))
                .map(|time| time.and_utc().timestamp_micros())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn orders() -> Dataset {
        serde_json::from_value(json!({"columns": [
            {"name": "order_id", "type": "string", "from": "/data/id"},
            {"name": "total", "type": "float64", "from": "/data/total"},
            {"name": "items", "type": "int64", "from": "/data/items"},
            {"name": "paid", "type": "bool", "from": "/data/paid"},
            {"name": "placed", "type": "timestamp", "from": "/data/placed"},
            {"name": "meta", "type": "json", "from": "/data/meta"}]}))
        .expect("definition")
    }

    #[test]
    fn an_envelope_becomes_a_row() {
        let dataset = orders().validate("orders").expect("valid");
        let row = dataset
            .row(
                &json!({"id": "m1", "time": "2026-12-05T10:00:00Z", "data": {
                "id": 7, "total": 12, "items": 3.0, "paid": true,
                "placed": "2026-12-04", "meta": {"a": [1]}}}),
            )
            .expect("row");
        assert_eq!(row.id, "m1");
        assert_eq!(row.date(), "2026-12-05");
        assert_eq!(
            row.cells,
            vec![
                Cell::Text("7".into()),
                Cell::Float(12.0),
                Cell::Int(3),
                Cell::Bool(true),
                Cell::Micros(1_796_342_400_000_000),
                Cell::Text("{\"a\":[1]}".into()),
            ]
        );
        let missing = dataset
            .row(&json!({"id": "m2", "time": "2026-12-05T10:00:00+02:00", "data": {}}))
            .expect("row");
        assert!(missing.cells.iter().all(|c| *c == Cell::Null));
        assert_eq!(missing.time, 1_796_457_600_000_000);
    }

    #[test]
    fn values_of_the_wrong_type_are_refused_with_the_column() {
        let dataset = orders().validate("orders").expect("valid");
        let refused = dataset
            .row(&json!({"id": "m", "time": "2026-12-05T10:00:00Z", "data": {"items": 1.5}}))
            .expect_err("refused");
        assert_eq!(refused, "column items: 1.5 is not a valid int64");
        let refused = dataset
            .row(&json!({"id": "m", "time": "yesterday"}))
            .expect_err("refused");
        assert!(refused.contains("not a time"), "{refused}");
        let refused = dataset.row(&json!({"id": "m"})).expect_err("refused");
        assert!(refused.contains("no value"), "{refused}");
    }

    #[test]
    fn bad_definitions_are_refused_with_the_reason() {
        let mut reserved = orders();
        reserved.columns[0].name = "_id".into();
        let mut twice = orders();
        twice.columns[1].name = "order_id".into();
        let mut pointer = orders();
        pointer.columns[0].from = "data.id".into();
        let mut retention = orders();
        retention.retention.max_bytes = Some(0);
        let mut none = orders();
        none.columns.clear();
        for (dataset, reason) in [
            (reserved, "reserved"),
            (twice, "named twice"),
            (pointer, "not a JSON Pointer"),
            (retention, "at least 1"),
            (none, "1 to 64 columns"),
        ] {
            let error = dataset.validate("orders").expect_err("refused");
            assert!(error.0.contains(reason), "{error}");
        }
        assert!(orders().validate("a/b").is_err());
        for builtin in crate::query::BUILTIN_TABLES {
            let error = orders().validate(builtin).expect_err(builtin);
            assert!(error.0.contains("built-in table"), "{error}");
        }
    }
}
