//! Datasets: messages appended to Parquet files, partitioned by day
//! (`date=YYYY-MM-DD/`) under each node's data dir, so any engine that
//! reads Parquet reads a dataset's directory as it is; and SQL (Polars)
//! over every node's files, beside the built-in tables (`logs`,
//! `workflow_instances`).

pub mod days;
pub mod definition;
pub mod files;
pub mod instances;
pub mod ipc;
mod join_filter;
pub mod partial;
pub mod query;
pub mod report;
pub mod run;
pub mod small_files;
pub mod store;

pub use definition::{Dataset, DATASETS_PREFIX};
pub use query::{Format, QueryError, QueryPlan, TableScan};
pub use store::{DatasetError, DatasetStats, Datasets};
