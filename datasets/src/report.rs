//! Saved reports: a query over datasets with a schedule and targets.

use serde::{Deserialize, Serialize};
use shoal_sinks::definition::{validate_name, DefinitionError};
use utoipa::ToSchema;

use crate::query::MAX_SQL_BYTES;

/// Keys of the configuration store that hold the definitions.
pub const REPORTS_PREFIX: &str = "_shoal/reports/";
/// Most runs a report keeps (older ones are deleted as new ones finish).
pub const MAX_KEEP_RUNS: u32 = 1000;

/// The format of a report's result file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    Csv,
    Parquet,
}

impl FileFormat {
    pub fn extension(self) -> &'static str {
        match self {
            FileFormat::Csv => "csv",
            FileFormat::Parquet => "parquet",
        }
    }
}

/// A saved query, run on a schedule or on demand. Each run is recorded
/// (with the result itself when it is small); its result can also go to a
/// file in the running node's reports directory and to a topic (a message
/// routes, webhooks and Kafka bridges take like any other).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "daily-sales",
    "query": "SELECT date, count(*) AS orders, sum(total) AS revenue FROM orders GROUP BY date ORDER BY date",
    "schedule": "5 0 * * *", "file": "csv", "topic": "reports.daily-sales", "keep_runs": 30}))]
pub struct Report {
    /// Read-only: the name in the path.
    #[serde(default)]
    pub name: String,
    /// One SELECT over datasets (as `POST /v1/sql` takes it).
    pub query: String,
    /// A cron expression (five fields: minute, hour, day of month, month,
    /// day of week; UTC). Without one, the report runs only when asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Write each run's result to `<data dir>/reports/<name>/<run>.<csv|parquet>`
    /// on the node that ran it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileFormat>,
    /// Publish each run's result (columns and rows, JSON) on this topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Runs kept (1-1000).
    #[serde(default = "default_keep_runs")]
    #[schema(default = default_keep_runs)]
    pub keep_runs: u32,
}

fn default_keep_runs() -> u32 {
    30
}

impl Report {
    /// Checks what needs nothing but the definition (the query's datasets,
    /// the cron expression and the topic are checked by the node).
    pub fn validate(mut self, name: &str) -> Result<Report, DefinitionError> {
        validate_name("report", name)?;
        self.name = name.to_string();
        if self.query.trim().is_empty() || self.query.len() > MAX_SQL_BYTES {
            return Err(DefinitionError(format!(
                "query must be 1 to {MAX_SQL_BYTES} bytes of SQL"
            )));
        }
        if self.keep_runs == 0 || self.keep_runs > MAX_KEEP_RUNS {
            return Err(DefinitionError(format!(
                "keep_runs must be 1 to {MAX_KEEP_RUNS}"
            )));
        }
        Ok(self)
    }
}
