//! Running a planned query: each node's part of a scan (its rows that
//! pass the filter, or its groups and distinct rows when the scan is
//! partial) and the query over every node's parts.

use std::path::PathBuf;

use polars::prelude::{
    col, concat, lit, DataFrame, DataType, Engine, IntoLazy, LazyFrame, Null, PlRefPath,
    PolarsError, ScanArgsParquet, UnionArgs,
};
use polars::sql::SQLContext;
use polars_core::query_result::QueryResult;

use crate::definition::{Dataset, DATE_COLUMN, TIME_COLUMN};
use crate::partial::{is_distinct_name, PartialQueries};
use crate::query::{invalid, QueryError, TableScan, MAX_RESULT_ROWS, NARROW_IT};
use crate::small_files::{self, Batch};

/// The rows of Parquet files (their own columns; none of a file's
/// missing columns is an error: it reads as NULL).
pub fn scan_files(paths: &[PathBuf]) -> Result<LazyFrame, PolarsError> {
    let paths: Vec<PlRefPath> = paths
        .iter()
        .map(|p| PlRefPath::new(p.to_string_lossy().as_ref()))
        .collect();
    let args = ScanArgsParquet {
        allow_missing_columns: true,
        ..Default::default()
    };
    LazyFrame::scan_parquet_files(paths.into_iter().collect(), args)
}

/// A dataset's table on this node: its files, with `date` from `_time`,
/// reduced to `columns`.
pub fn local_table(
    dataset: &Dataset,
    files: &[PathBuf],
    columns: &[String],
) -> Result<LazyFrame, QueryError> {
    let table = if files.is_empty() {
        crate::store::frame(dataset, &[])
            .map_err(|e| QueryError::Invalid(e.to_string()))?
            .lazy()
    } else {
        scan_files(files)?
    };
    Ok(shaped(table, columns))
}

/// A table of stored columns with `date` from `_time`, reduced to
/// `columns`.
fn shaped(table: LazyFrame, columns: &[String]) -> LazyFrame {
    table
        .with_column(col(TIME_COLUMN).cast(DataType::Date).alias(DATE_COLUMN))
        .select(columns.iter().map(|c| col(c.as_str())).collect::<Vec<_>>())
}

/// The lazy frames of one node's part of a scan over `table` (its
/// [`local_table`], or some of it): when the scan is partial, its groups
/// and its distinct rows (those of [`PartialQueries`] it has, in that
/// order); else its rows that pass the filter (the columns it sends).
fn part_lazy(scan: &TableScan, table: LazyFrame) -> Result<Vec<LazyFrame>, QueryError> {
    let Some(partial) = &scan.partial else {
        return Ok(vec![rows_lazy(scan, table)?]);
    };
    [&partial.groups, &partial.distinct_rows]
        .into_iter()
        .flatten()
        .map(|query| Ok(run_over(&scan.dataset.name, table.clone(), query)?))
        .collect()
}

/// The rows of `table` that pass the scan's filter, the columns it sends.
fn rows_lazy(scan: &TableScan, table: LazyFrame) -> Result<LazyFrame, QueryError> {
    let sent: Vec<_> = scan.sent.iter().map(|c| col(c.as_str())).collect();
    Ok(match &scan.filter {
        Some(filter) => run_over(
            &scan.dataset.name,
            table,
            &format!("SELECT * FROM \"{}\" WHERE {filter}", scan.dataset.name),
        )?
        .select(sent),
        None => table.select(sent),
    })
}

/// A query over one table, registered under the dataset's own name (the
/// SQL may name it: orders.total).
fn run_over(name: &str, table: LazyFrame, query: &str) -> Result<LazyFrame, PolarsError> {
    let mut context = SQLContext::new();
    context.register(name, table);
    context.execute(query)
}

/// Frames one under the other, matched by column name: a column a frame
/// lacks is NULL in its rows.
fn stack_by_name(mut parts: Vec<LazyFrame>) -> Result<LazyFrame, QueryError> {
    if parts.len() == 1 {
        return Ok(parts.remove(0));
    }
    let mut schemas = Vec::with_capacity(parts.len());
    for part in &mut parts {
        schemas.push(part.collect_schema()?);
    }
    let mut all: Vec<(String, DataType)> = Vec::new();
    for schema in &schemas {
        for (name, dtype) in schema.iter() {
            if !all.iter().any(|(n, _)| n == name.as_str()) {
                all.push((name.to_string(), dtype.clone()));
            }
        }
    }
    let parts: Vec<LazyFrame> = parts
        .into_iter()
        .zip(&schemas)
        .map(|(part, schema)| {
            part.select(
                all.iter()
                    .map(|(name, dtype)| match schema.contains(name) {
                        true => col(name.as_str()),
                        false => lit(Null {}).cast(dtype.clone()).alias(name.as_str()),
                    })
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    Ok(concat(
        parts,
        UnionArgs {
            to_supertypes: true,
            ..Default::default()
        },
    )?)
}

/// What the merge of a partial scan reads: every node's groups, with the
/// counts of distinct values per group (from every node's distinct rows)
/// stacked under them.
fn merge_input(
    name: &str,
    partial: &PartialQueries,
    frames: Vec<DataFrame>,
) -> Result<LazyFrame, QueryError> {
    let mut frames = frames.into_iter();
    let mut inputs = Vec::with_capacity(2);
    if partial.groups.is_some() {
        inputs.extend(frames.next().map(IntoLazy::lazy));
    }
    if let (Some(_), Some(counts), Some(rows)) = (
        &partial.distinct_rows,
        &partial.distinct_counts,
        frames.next(),
    ) {
        inputs.push(run_over(name, rows.lazy(), counts)?);
    }
    if inputs.len() != partial.frames() {
        return Err(invalid("a partial scan is missing a frame"));
    }
    stack_by_name(inputs)
}

/// One node's part of a scan: its groups and distinct rows when the scan
/// is partial, else its rows that pass the filter (the columns it sends).
/// Small files are read whole, in batches ([`crate::small_files`]), and
/// each batch's part is stacked under the others' (the merge takes a
/// group's rows from several batches as from several nodes).
pub fn scan(scan: &TableScan, files: &[PathBuf]) -> Result<Vec<DataFrame>, QueryError> {
    scan_batches(scan, small_files::batches(files, small_files::BATCH_BYTES))
}

fn scan_batches(scan: &TableScan, batches: Vec<Batch>) -> Result<Vec<DataFrame>, QueryError> {
    let max_rows = scan.max_rows.min(u64::from(u32::MAX) - 1);
    let mut frames: Vec<DataFrame> = Vec::new();
    for batch in batches {
        let table = match batch {
            Batch::Small(files) => shaped(
                small_files::read(&scan.dataset, &files, &scan.columns)?.lazy(),
                &scan.columns,
            ),
            Batch::Scanned(files) => local_table(&scan.dataset, &files, &scan.columns)?,
        };
        let part = collect_part(scan, table, max_rows)?;
        if frames.is_empty() {
            frames = part;
        } else {
            for (into, frame) in frames.iter_mut().zip(part) {
                into.vstack_mut_owned(frame)?;
            }
        }
        if frames.iter().any(|frame| frame.height() as u64 > max_rows) {
            return Err(QueryError::TooBig(format!(
                "the query needs more than {max_rows} rows of {} from one node; {NARROW_IT}",
                scan.dataset.name
            )));
        }
    }
    if scan
        .partial
        .as_ref()
        .is_some_and(|p| p.distinct_rows.is_some())
    {
        if let Some(rows) = frames.last_mut() {
            strings_as_binary(rows)?;
        }
    }
    Ok(frames)
}

/// The frames of a node's part of a scan over `table`, at most
/// `max_rows` + 1 rows each.
fn collect_part(
    scan: &TableScan,
    table: LazyFrame,
    max_rows: u64,
) -> Result<Vec<DataFrame>, QueryError> {
    // Polars' streaming engine: a filter, a projection and a partial
    // aggregation are what it does fastest (the query itself runs on the
    // in-memory engine, which is faster for count(DISTINCT x)).
    let lazy: Vec<LazyFrame> = part_lazy(scan, table)?
        .into_iter()
        .map(|lazy| lazy.limit(max_rows as u32 + 1))
        .collect();
    Ok(match <[LazyFrame; 1]>::try_from(lazy) {
        Ok([one]) => match one.collect_with_engine(Engine::Streaming)? {
            QueryResult::Single(frame) => vec![frame],
            QueryResult::Multiple(_) => {
                return Err(QueryError::Invalid("the scan gave several tables".into()))
            }
        },
        // In one plan, so that the files are read once for all.
        Err(several) => {
            let optimizations = several[0].get_current_optimizations();
            LazyFrame::collect_all_with_engine(
                several.into_iter().map(|lazy| lazy.logical_plan).collect(),
                Engine::Streaming,
                optimizations,
            )?
        }
    })
}

/// The text columns of distinct arguments as bytes (the same buffers):
/// their values are only counted, and a reader of Arrow IPC checks every
/// string of a text column for UTF-8, which the asking node paid for each
/// value of every other node's part.
fn strings_as_binary(frame: &mut DataFrame) -> Result<(), PolarsError> {
    let text: Vec<String> = frame
        .schema()
        .iter()
        .filter(|(name, dtype)| **dtype == DataType::String && is_distinct_name(name))
        .map(|(name, _)| name.to_string())
        .collect();
    for name in text {
        let binary = frame.column(&name)?.cast(&DataType::Binary)?;
        frame.replace(&name, binary)?;
    }
    Ok(())
}

/// This node's part of a table in a query.
pub enum Local {
    /// Its files, read when the query runs (on this node alone, with the
    /// query's filters and projection pushed into the read).
    Files(Vec<PathBuf>),
    /// Its files already read by [`scan`], as the other nodes read theirs.
    Scanned(Vec<DataFrame>),
}

/// The query over every node's part: per dataset, this node's part and
/// the parts the other nodes sent (each the frames [`scan`] made); and the
/// built-in tables it reads, by name. `merge` runs instead of `plan_sql`
/// when the scan is partial (every part, this node's too, is then its
/// groups and distinct rows).
pub fn execute(
    plan_sql: &str,
    merge: Option<&str>,
    tables: Vec<(TableScan, Local, Vec<Vec<DataFrame>>)>,
    builtins: Vec<(&str, DataFrame)>,
) -> Result<DataFrame, QueryError> {
    let mut sql = plan_sql;
    let mut context = SQLContext::new();
    for (name, frame) in builtins {
        context.register(name, frame.lazy());
    }
    for (scan, local, parts) in tables {
        let table = match local {
            Local::Files(files)
                if parts.is_empty()
                    && scan
                        .partial
                        .as_ref()
                        .is_none_or(|p| p.distinct_rows.is_some()) =>
            {
                // Lazy: Polars pushes the filter and the query's projection
                // into the read of the files. On one node, a query with
                // count(DISTINCT x) runs whole: split, its rows would be
                // gathered into a frame only to be grouped again.
                rows_lazy(&scan, local_table(&scan.dataset, &files, &scan.columns)?)?
            }
            local => {
                // This node's part as the other nodes sent theirs, so every
                // part is frames of the same columns, each stacked with the
                // others' (a lazy union would have Polars count rows
                // through a 128-bit cast this build does not carry).
                let mut all = match local {
                    Local::Files(files) => self::scan(&scan, &files)?,
                    Local::Scanned(frames) => frames,
                };
                for part in &parts {
                    if part.len() != all.len() {
                        return Err(invalid(format!(
                            "a node sent {} frames of {}; this node made {}",
                            part.len(),
                            scan.dataset.name,
                            all.len()
                        )));
                    }
                    for (into, frame) in all.iter_mut().zip(part) {
                        into.vstack_mut(frame)?;
                    }
                }
                match (merge, &scan.partial) {
                    (Some(merge), Some(partial)) => {
                        sql = merge;
                        merge_input(&scan.dataset.name, partial, all)?
                    }
                    _ => match <[DataFrame; 1]>::try_from(all) {
                        Ok([rows]) => rows.lazy(),
                        Err(_) => return Err(invalid("a scan of rows is one frame")),
                    },
                }
            }
        };
        context.register(&scan.dataset.name, table);
    }
    let frame = context
        .execute(sql)?
        .limit(MAX_RESULT_ROWS as u32 + 1)
        .collect()?;
    if frame.height() > MAX_RESULT_ROWS {
        return Err(QueryError::TooBig(format!(
            "the result has more than {MAX_RESULT_ROWS} rows; add LIMIT or aggregate"
        )));
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ipc::{decode_parts, part_from_ipc, part_to_ipc};
    use crate::query;
    use crate::query::tests::datasets;
    use crate::store::tests::live_paths;

    #[test]
    fn a_query_runs_over_local_files_and_frames_from_other_nodes() {
        let temp = tempfile::tempdir().expect("temp");
        let datasets = datasets();
        let dataset = &datasets["orders"];
        let store = crate::store::Datasets::new(temp.path().to_path_buf(), 1);
        let row = |id: &str, customer: &str, total: f64, time: &str| {
            dataset
                .row(&json!({"id": id, "time": time,
                    "data": {"id": id, "customer": customer, "total": total}}))
                .expect("row")
        };
        store
            .write(
                dataset,
                1,
                2,
                vec![
                    (1, row("a", "c1", 10.0, "2026-12-04T10:00:00Z")),
                    (2, row("b", "c2", 30.0, "2026-12-05T10:00:00Z")),
                ],
            )
            .expect("write");
        let sql = "SELECT date, count(*) AS orders, sum(total) AS revenue, \
                   count(DISTINCT customer) AS customers FROM orders \
                   WHERE total >= 10 GROUP BY date ORDER BY date";
        let plan = query::plan(sql, &datasets).expect("plan");
        // Another node's part, as it would arrive.
        let remote_files: Vec<PathBuf> = Vec::new();
        let remote_store = crate::store::Datasets::new(temp.path().join("other"), 2);
        remote_store
            .write(
                dataset,
                1,
                1,
                vec![(1, row("c", "c1", 5.0, "2026-12-05T11:00:00Z"))],
            )
            .expect("write");
        let mut remote_paths = live_paths(&remote_store, "orders");
        remote_paths.extend(remote_files);
        let mut part = scan(&plan.scans[0], &remote_paths).expect("scan");
        assert_eq!(part.len(), 2, "groups and distinct rows");
        assert!(
            part.iter().all(|frame| frame.height() == 0),
            "the filter ran on the remote node"
        );
        let part =
            part_from_ipc(&part_to_ipc(&mut part, &plan.scans[0]).expect("ipc")).expect("from ipc");
        let local_paths = live_paths(&store, "orders");
        let result = execute(
            &plan.sql,
            plan.merge.as_deref(),
            vec![(
                plan.scans[0].clone(),
                Local::Files(local_paths.clone()),
                vec![part],
            )],
            Vec::new(),
        )
        .expect("run");
        assert_eq!(result.height(), 2);
        let revenue = result
            .column("revenue")
            .expect("revenue")
            .f64()
            .expect("f64");
        assert_eq!(revenue.get(0), Some(10.0));
        assert_eq!(revenue.get(1), Some(30.0));
        let counted = query::plan("SELECT count(*) AS n FROM orders", &datasets).expect("plan");
        let part = scan(&counted.scans[0], &remote_paths).expect("scan");
        let mut parts = decode_parts(vec![vec![part_to_ipc(
            &mut part.clone(),
            &counted.scans[0],
        )
        .expect("ipc")]])
        .expect("decode");
        assert_eq!(parts[0][0].len(), 1, "groups alone");
        // A part cut short or with a length past its end is refused.
        let bytes = part_to_ipc(&mut part.clone(), &counted.scans[0]).expect("ipc");
        for bad in [&bytes[..3], &bytes[..bytes.len() - 1], &[0xff; 12][..]] {
            assert!(part_from_ipc(bad).is_err(), "{} bytes", bad.len());
        }
        // This node's files read first, as a worker does while the other
        // nodes' parts come.
        let local = scan(&counted.scans[0], &local_paths).expect("local scan");
        let result = execute(
            &counted.sql,
            counted.merge.as_deref(),
            vec![(
                counted.scans[0].clone(),
                Local::Scanned(local),
                parts.remove(0),
            )],
            Vec::new(),
        )
        .expect("count");
        assert_eq!(
            format!("{:?}", result.column("n").expect("n").get(0)),
            "Ok(UInt32(3))"
        );
    }

    #[test]
    fn a_nodes_part_read_in_several_batches_merges_as_read_in_one() {
        let temp = tempfile::tempdir().expect("temp");
        let datasets = datasets();
        let dataset = &datasets["orders"];
        let store = crate::store::Datasets::new(temp.path().to_path_buf(), 1);
        // Three files (three delivered batches), two of them on one day.
        let orders = [
            ("a", "c1", 10.0, "2026-12-04T10:00:00Z"),
            ("b", "c2", 30.0, "2026-12-05T10:00:00Z"),
            ("c", "c1", 5.0, "2026-12-05T11:00:00Z"),
            ("d", "c2", 1.0, "2026-12-05T12:00:00Z"),
        ];
        for (seq, (id, customer, total, time)) in orders.iter().enumerate() {
            let row = dataset
                .row(&json!({"id": id, "time": time,
                    "data": {"id": id, "customer": customer, "total": total}}))
                .expect("row");
            let seq = seq as u64 + 1;
            store
                .write(dataset, seq, seq, vec![(seq, row)])
                .expect("write");
        }
        let files = live_paths(&store, "orders");
        assert_eq!(files.len(), 4);
        let each_alone = small_files::batches(&files, 1);
        assert_eq!(each_alone.len(), 4, "{each_alone:?}");
        for (sql, expected) in [
            (
                "SELECT CAST(date AS VARCHAR) AS day, count(*) AS orders, sum(total) AS revenue, \
                 count(DISTINCT customer) AS customers FROM orders WHERE total >= 5 \
                 GROUP BY date ORDER BY date",
                "day,orders,revenue,customers\n2026-12-04,1,10.0,1\n2026-12-05,2,35.0,2\n",
            ),
            (
                "SELECT order_id FROM orders WHERE total < 20 ORDER BY order_id",
                "order_id\na\nc\nd\n",
            ),
        ] {
            let plan = query::plan(sql, &datasets).expect("plan");
            let scan = &plan.scans[0];
            let run = |batches| {
                let local = scan_batches(scan, batches).expect("scan");
                let result = execute(
                    &plan.sql,
                    plan.merge.as_deref(),
                    vec![(scan.clone(), Local::Scanned(local), Vec::new())],
                    Vec::new(),
                )
                .expect("run");
                let mut result = result;
                let csv = crate::ipc::encode(&mut result, crate::Format::Csv).expect("csv");
                String::from_utf8(csv).expect("utf-8")
            };
            assert_eq!(run(small_files::batches(&files, 1)), expected, "{sql}");
            assert_eq!(run(vec![Batch::Scanned(files.clone())]), expected, "{sql}");
        }
    }
}
