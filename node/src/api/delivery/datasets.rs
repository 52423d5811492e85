//! Dataset definitions (stored in Raft like sinks), their files on this
//! node, and their dead letters.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shoal_datasets::{Dataset, DatasetStats, DATASETS_PREFIX};
use utoipa::ToSchema;

use super::definitions::{self as shared, DefinitionDeleted, Kind};
use super::{gather_dead_letters, replay_dead_letters, DeadLetter, ReplayRequest};
use crate::api::auth::Caller;
use crate::api::error::{ApiError, ApiResult, ErrorBody};
use crate::api::extract::{Body, JsonBody, Params, PathText};
use crate::services::shoal::Shoal;

/// A column keeps its type for good: files written before hold the old
/// one, and a query reads every file as one table.
pub async fn check_dataset(shoal: &Arc<Shoal>, stored: &Value) -> ApiResult<()> {
    let dataset: Dataset =
        serde_json::from_value(stored.clone()).map_err(|e| ApiError::internal(e.to_string()))?;
    shoal.read_barrier(false).await?;
    let key = format!("{DATASETS_PREFIX}{}", dataset.name);
    let (_, kv) = shoal.read(move |store| store.kv_get(&key)).await?;
    let Some(old) = kv.and_then(|kv| serde_json::from_slice::<Dataset>(&kv.value).ok()) else {
        return Ok(());
    };
    for column in &dataset.columns {
        if let Some(before) = old.columns.iter().find(|c| c.name == column.name) {
            if before.kind != column.kind {
                return Err(ApiError::bad_request(format!(
                    "column {:?} is {} in the files written so far and cannot become {}: add a column with another name",
                    column.name,
                    shoal_datasets::definition::type_name(before.kind),
                    shoal_datasets::definition::type_name(column.kind)
                )));
            }
        }
    }
    Ok(())
}

/// The answer of `GET /v1/datasets`.
#[derive(Serialize, ToSchema)]
pub struct DatasetList {
    /// Every dataset, by name (each as `PUT /v1/datasets/{name}` stored it)
    #[schema(value_type = Vec<shoal_datasets::Dataset>)]
    pub datasets: Vec<Value>,
}

/// A dataset's files on the node that answers.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"dataset": "orders", "node_id": 1, "directory": "/var/lib/shoal/datasets/orders",
    "stats": {"files": 3, "bytes": 48213, "partitions": ["2026-12-04", "2026-12-05"]}}))]
pub struct DatasetFiles {
    pub dataset: String,
    pub node_id: u64,
    /// Where the Parquet files are (`date=YYYY-MM-DD/*.parquet`).
    pub directory: String,
    pub stats: DatasetStats,
}

pub mod definition {
    use super::*;

    #[utoipa::path(
        put,
        path = "/v1/datasets/{name}",
        tag = "delivery",
        operation_id = "putDataset",
        summary = "Create or replace a dataset",
        description = "An append-only columnar dataset: each message a route sends to `dataset:<name>` becomes a row of a Parquet file (ZSTD) on the node that accepted it, under `<data dir>/datasets/<name>/date=YYYY-MM-DD/` by the row's time (UTC), so DuckDB, Spark, Trino or ClickHouse read the directory as it is (Hive partitioning). Every row has `_id` (the message id) and `_time` (from `time`, default the message's time) besides `columns` (each a name, a type: `string`, `int64`, `float64`, `bool`, `timestamp` or `json`, and a JSON Pointer into the CloudEvent envelope; nothing there stores NULL). Rows are written in batches (up to 20000 messages, or what arrived within 1 s), at least once from the durable outbox; a batch replayed after a crash adds only the rows no file holds. A message whose value does not fit its column's type becomes a dead letter with the reason. Each minute a node merges a partition's files once there are 16 (dropping rows with a duplicate `_id`) and applies `retention` (`max_age_days` by partition date, `max_bytes` oldest files first). Columns may be added; a column's type cannot change. Stored in Raft.",
        params(
            ("name" = String, Path, description = "1-128 letters, digits, '-', '_' or '.'"),
        ),
        request_body(
            content = shoal_datasets::Dataset,
            content_type = "application/json",
            example = json!({"columns": [{"name": "order_id", "type": "string", "from": "/data/order_id"}, {"name": "total", "type": "float64", "from": "/data/total"}], "retention": {"max_age_days": 400}}),
        ),
        responses(
            (status = 200, description = "The stored definition, defaults filled in. ", body = shoal_datasets::Dataset),
            (status = 400, description = "The name, or a definition that does not parse or is invalid (a reserved or repeated column, a pointer that is not a JSON Pointer, a zero retention limit, a column whose type differs from the stored definition's). Error codes: `bad_request`.", body = ErrorBody),
            (status = 413, description = "The body is over the request size limit (`payload_too_large`), or the stored definition would be over the value limit, --max-value-bytes (`value_too_large`). Error codes: `payload_too_large`, `value_too_large`.", body = ErrorBody),
            (status = 500, response = crate::api::doc::Internal),
            (status = 503, response = crate::api::doc::Unavailable),
            (status = 504, response = crate::api::doc::Timeout),
        )
    )]
    pub async fn put(
        State(shoal): State<Arc<Shoal>>,
        PathText(name): PathText,
        JsonBody(body): JsonBody<Value>,
    ) -> ApiResult<Json<Value>> {
        shared::put(shoal, Kind::Dataset, name, body).await
    }

    #[utoipa::path(
        get,
        path = "/v1/datasets/{name}",
        tag = "delivery",
        operation_id = "getDataset",
        summary = "Read a dataset",
        description = "Linearizable read.",
        params(
            ("name" = String, Path, description = "Name"),
        ),
        responses(
            (status = 200, description = "The definition. ", body = shoal_datasets::Dataset),
            (status = 400, description = "The name is not 1-128 letters, digits, `-`, `_` or `.`. Error codes: `bad_request`.", body = ErrorBody),
            (status = 404, description = "No dataset has this name. Error codes: `not_found`.", body = ErrorBody),
            (status = 500, response = crate::api::doc::Internal),
            (status = 503, response = crate::api::doc::Unavailable),
            (status = 504, response = crate::api::doc::Timeout),
        )
    )]
    pub async fn get(
        State(shoal): State<Arc<Shoal>>,
        PathText(name): PathText,
    ) -> ApiResult<Json<Value>> {
        shared::get(shoal, Kind::Dataset, name).await
    }

    #[utoipa::path(
        get,
        path = "/v1/datasets",
        tag = "delivery",
        operation_id = "listDatasets",
        summary = "List datasets",
        description = "Linearizable read.",
        responses(
            (status = 200, description = "All datasets, by name. ", body = DatasetList),
            (status = 500, response = crate::api::doc::Internal),
            (status = 503, response = crate::api::doc::Unavailable),
            (status = 504, response = crate::api::doc::Timeout),
        )
    )]
    pub async fn list(State(shoal): State<Arc<Shoal>>) -> ApiResult<Json<DatasetList>> {
        Ok(Json(DatasetList {
            datasets: shared::list(shoal, Kind::Dataset).await?,
        }))
    }

    #[utoipa::path(
        delete,
        path = "/v1/datasets/{name}",
        tag = "delivery",
        operation_id = "deleteDataset",
        summary = "Delete a dataset",
        description = "Removes the definition and the rows still waiting in the outbox. The files stay on each node (under `<data dir>/datasets/<name>/`, listed by `GET /v1/datasets/{name}/files` before the deletion); defining the dataset again takes them up again.",
        params(
            ("name" = String, Path, description = "Name"),
        ),
        responses(
            (status = 200, description = "Deleted.", body = DefinitionDeleted),
            (status = 400, description = "The name is not 1-128 letters, digits, `-`, `_` or `.`. Error codes: `bad_request`.", body = ErrorBody),
            (status = 404, description = "No dataset has this name. Error codes: `not_found`.", body = ErrorBody),
            (status = 500, response = crate::api::doc::Internal),
            (status = 503, response = crate::api::doc::Unavailable),
            (status = 504, response = crate::api::doc::Timeout),
        )
    )]
    pub async fn delete(
        State(shoal): State<Arc<Shoal>>,
        PathText(name): PathText,
    ) -> ApiResult<Json<DefinitionDeleted>> {
        shared::delete(shoal, Kind::Dataset, name).await
    }
}

/// `GET /v1/datasets/{name}/files`.
#[utoipa::path(
    get,
    path = "/v1/datasets/{name}/files",
    tag = "delivery",
    operation_id = "datasetFiles",
    summary = "A dataset's files on this node",
    description = "The directory, the number and size of the files a query reads (files a compaction replaced are not counted) and the day partitions, on the node that answers (each node keeps the rows it accepted).",
    params(
        ("name" = String, Path, description = "Dataset name"),
    ),
    responses(
        (status = 200, description = "This node's files.", body = DatasetFiles),
        (status = 400, description = "The name is not 1-128 letters, digits, `-`, `_` or `.`. Error codes: `bad_request`.", body = ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
    )
)]
pub async fn dataset_files(
    State(shoal): State<Arc<Shoal>>,
    PathText(name): PathText,
) -> ApiResult<Json<DatasetFiles>> {
    shared::check_name(Kind::Dataset, &name)?;
    let store = shoal.messaging.deliveries.datasets().clone();
    let directory = store.dir(&name).display().to_string();
    let dataset = name.clone();
    let stats = tokio::task::spawn_blocking(move || store.stats(&dataset))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(DatasetFiles {
        dataset: name,
        node_id: shoal.node_id,
        directory,
        stats,
    }))
}

/// A dataset's dead letters, from every node that answered.
#[derive(Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "dataset": "orders",
    "dead_letters": [{"node_id": 1, "seq": 12, "id": "5f1c...", "topic": "orders.created",
                      "attempts": 1, "last_error": "column total: \"abc\" is not a valid float64", "message": {}}],
    "unreachable": []
}))]
pub struct DatasetDeadLetters {
    pub dataset: String,
    /// The dead letters, node by node (at most `limit` per node)
    pub dead_letters: Vec<DeadLetter>,
    /// Nodes that did not answer (their dead letters are missing)
    pub unreachable: Vec<u64>,
}

/// How many of a dataset's dead letters went back to the outbox.
#[derive(Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"dataset": "orders", "replayed": 3, "unreachable": []}))]
pub struct DatasetReplayed {
    pub dataset: String,
    /// Dead letters put back in the outbox, on every node that answered
    pub replayed: u64,
    /// Nodes that did not answer (their dead letters were not replayed)
    pub unreachable: Vec<u64>,
}

/// `GET /v1/datasets/{name}/dead-letters`.
#[utoipa::path(
    get,
    path = "/v1/datasets/{name}/dead-letters",
    tag = "delivery",
    operation_id = "datasetDeadLetters",
    summary = "A dataset's dead letters",
    description = "Messages that could not be rows (a value that does not fit its column's type, no time), with the reason in `last_error`, from every node. A write that fails (the disk) makes no dead letters: the rows wait.",
    params(
        ("name" = String, Path, description = "Dataset name"),
        ("scope" = Option<String>, Query, description = "cluster (default: ask every live node) or local"),
        ("limit" = Option<u64>, Query, description = "Per node, 1-10000 (default 100)"),
    ),
    responses(
        (status = 200, description = "Dead letters.", body = DatasetDeadLetters),
        (status = 400, description = "Malformed request. Error codes: `bad_request`.", body = ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
    )
)]
pub async fn dataset_dead_letters(
    caller: Caller,
    State(shoal): State<Arc<Shoal>>,
    PathText(name): PathText,
    params: Params,
) -> ApiResult<Json<DatasetDeadLetters>> {
    let (dead_letters, unreachable) =
        gather_dead_letters(&shoal, &caller, Kind::Dataset, &name, &params).await?;
    Ok(Json(DatasetDeadLetters {
        dataset: name,
        dead_letters,
        unreachable,
    }))
}

/// `POST /v1/datasets/{name}/dead-letters/replay`.
#[utoipa::path(
    post,
    path = "/v1/datasets/{name}/dead-letters/replay",
    tag = "delivery",
    operation_id = "replayDatasetDeadLetters",
    summary = "Replay a dataset's dead letters",
    description = "Put dead letters back in the outbox (after the definition was fixed), on every node. Body (optional): `{\"only\": [{\"node_id\": 1, \"seq\": 12}]}`.",
    params(
        ("name" = String, Path, description = "Dataset name"),
        ("scope" = Option<String>, Query, description = "cluster (default: ask every live node) or local"),
    ),
    request_body(
        content = Option<ReplayRequest>,
        content_type = "application/json",
        description = "Optional: without a body (or with `null`), every dead letter of the dataset is replayed.",
    ),
    responses(
        (status = 200, description = "Replayed.", body = DatasetReplayed),
        (status = 400, description = "Malformed request. Error codes: `bad_request`.", body = ErrorBody),
        (status = 413, description = "The body is too large. Error codes: `payload_too_large`.", body = ErrorBody),
        (status = 500, response = crate::api::doc::Internal),
    )
)]
pub async fn dataset_replay(
    caller: Caller,
    State(shoal): State<Arc<Shoal>>,
    PathText(name): PathText,
    params: Params,
    Body(body): Body,
) -> ApiResult<Json<DatasetReplayed>> {
    let (replayed, unreachable) =
        replay_dead_letters(&shoal, &caller, Kind::Dataset, &name, &params, &body).await?;
    Ok(Json(DatasetReplayed {
        dataset: name,
        replayed,
        unreachable,
    }))
}
