//! Passes that write the due entries at the head of a list together: SQL
//! sinks (one statement per batch) and datasets (one Parquet file per day
//! partition).

use shoal_storage::now_ms;
use shoal_storage::outbox::List;

use super::{
    delivered, failed, next_delay, AttemptError, Entry, Next, PassError, State, FOREVER_RETRY_MS,
};
use crate::message::Message;

/// A SQL sink takes the due entries at the head of its list in batches of
/// up to this many rows, one statement each.
const SQL_BATCH: usize = shoal_sinks::MAX_BATCH_ROWS;
/// Most entries written into one dataset file.
const DATASET_BATCH: usize = 20_000;
/// How long a dataset's entries wait for a fuller batch.
const DATASET_LINGER_MS: u64 = 1_000;

/// The entries at the head of a destination's list that are due now (at
/// most `limit`); when the next one is due, if it is not; whether the list
/// had more.
struct Batch {
    due: Vec<(u64, Entry)>,
    next_at: Option<u64>,
    full: bool,
}

async fn due_batch(state: &State, limit: usize) -> Result<Batch, PassError> {
    let outbox = state.shared.outbox.clone();
    let destination = state.destination.clone();
    let after = state.cursor;
    let stored =
        tokio::task::spawn_blocking(move || outbox.scan(List::Pending, &destination, after, limit))
            .await??;
    let full = stored.len() == limit;
    let mut due: Vec<(u64, Entry)> = Vec::with_capacity(stored.len());
    let mut next_at = None;
    for stored in stored {
        let entry: Entry = shoal_codec::decode(&stored.value)?;
        if entry.next_attempt_ms > now_ms() {
            next_at = Some(entry.next_attempt_ms);
            break;
        }
        due.push((stored.seq, entry));
    }
    Ok(Batch { due, next_at, full })
}

/// A SQL sink's pass: the due entries at the head of its list are written
/// in one statement. When the database refuses the batch, its entries are
/// written one by one, so only the rows it refuses become dead letters
/// (with the database's reason); when it is unavailable, the head entry
/// waits for its next attempt and the rest wait behind it, forever.
pub(super) async fn pass_sql(state: &mut State, sink: &str) -> Result<Next, PassError> {
    let Batch { due, next_at, full } = due_batch(state, SQL_BATCH).await?;
    if due.is_empty() {
        return Ok(next_at.map_or(Next::Idle, Next::At));
    }
    let messages: Vec<&Message> = due.iter().map(|(_, entry)| &entry.message).collect();
    match write_sql(state, sink, &messages).await {
        Ok(()) => {
            delivered(state, &due).await?;
            state.cursor = due.last().map(|(seq, _)| *seq);
        }
        Err(AttemptError::Sql(shoal_sinks::WriteError::Refused(_))) if due.len() > 1 => {
            for (seq, entry) in due {
                match write_sql(state, sink, &[&entry.message]).await {
                    Ok(()) => delivered(state, &[(seq, entry)]).await?,
                    Err(error) => {
                        if let Some(at) = sql_failed(state, seq, entry, &error).await? {
                            return Ok(Next::At(at));
                        }
                    }
                }
                state.cursor = Some(seq);
            }
        }
        Err(error) => {
            let Some((seq, entry)) = due.into_iter().next() else {
                return Ok(Next::Idle);
            };
            if let Some(at) = sql_failed(state, seq, entry, &error).await? {
                return Ok(Next::At(at));
            }
            state.cursor = Some(seq);
            return Ok(Next::More);
        }
    }
    Ok(match next_at {
        Some(at) => Next::At(at),
        None if full => Next::More,
        None => Next::Idle,
    })
}

/// A dataset's pass: the due entries at the head of its list become one
/// Parquet file per day partition. Entries wait up to
/// [`DATASET_LINGER_MS`] for a fuller batch (a file per message would make
/// queries slow). A message that cannot be a row becomes a dead letter; a
/// write that fails (the disk) leaves the batch waiting, forever.
pub(super) async fn pass_dataset(state: &mut State, name: &str) -> Result<Next, PassError> {
    // Lingering: messages that arrive meanwhile wake the deliverer, but
    // the list is not read again until the linger ends.
    if let Some(until) = state.linger_until.filter(|until| now_ms() < *until) {
        return Ok(Next::At(until));
    }
    let Batch { due, next_at, full } = due_batch(state, DATASET_BATCH).await?;
    let (Some(first), Some(last)) = (due.first().map(|d| d.0), due.last().map(|d| d.0)) else {
        state.linger_until = None;
        return Ok(next_at.map_or(Next::Idle, Next::At));
    };
    let retrying = due.iter().any(|(_, entry)| entry.attempts > 0);
    if !full && next_at.is_none() && !retrying && state.linger_until.is_none() {
        let until = now_ms() + DATASET_LINGER_MS;
        state.linger_until = Some(until);
        return Ok(Next::At(until));
    }
    state.linger_until = None;
    let dataset = state.shared.config.borrow().datasets.get(name).cloned();
    let written = match dataset {
        None => Err(AttemptError::UnknownDestination(state.destination.clone())),
        Some(dataset) => {
            let mut rows = Vec::with_capacity(due.len());
            let mut refused = Vec::new();
            for (seq, entry) in &due {
                match dataset.row(&entry.message.envelope()) {
                    Ok(row) => rows.push((*seq, row)),
                    Err(reason) => refused.push((*seq, reason)),
                }
            }
            let datasets = state.shared.datasets.clone();
            tokio::task::spawn_blocking(move || datasets.write(&dataset, first, last, rows))
                .await?
                .map(|_| refused)
                .map_err(AttemptError::from)
        }
    };
    match written {
        Ok(refused) => {
            let mut accepted = Vec::with_capacity(due.len());
            for (seq, mut entry) in due {
                match refused.iter().find(|(at, _)| *at == seq) {
                    Some((_, reason)) => {
                        let error = AttemptError::NotARow(reason.clone());
                        entry.attempts += 1;
                        entry.last_error = Some(error.to_string());
                        failed(state, seq, entry, &error, None).await?;
                    }
                    None => accepted.push((seq, entry)),
                }
            }
            delivered(state, &accepted).await?;
            state.cursor = Some(last);
        }
        Err(error) => {
            let Some((seq, mut entry)) = due.into_iter().next() else {
                return Ok(Next::Idle);
            };
            entry.attempts += 1;
            entry.last_error = Some(error.to_string());
            let delay = next_delay(&FOREVER_RETRY_MS, entry.attempts, true);
            if let Some(at) = failed(state, seq, entry, &error, delay).await? {
                return Ok(Next::At(at));
            }
        }
    }
    Ok(match next_at {
        Some(at) => Next::At(at),
        None if full => Next::More,
        None => Next::Idle,
    })
}

/// Record a failed attempt to write `entry`'s row: a row the database
/// refused is dead at once; anything else waits. When it waits: until when.
async fn sql_failed(
    state: &State,
    seq: u64,
    mut entry: Entry,
    error: &AttemptError,
) -> Result<Option<u64>, PassError> {
    entry.attempts += 1;
    entry.last_error = Some(error.to_string());
    let delay = match error {
        AttemptError::Sql(shoal_sinks::WriteError::Refused(_)) => None,
        _ => next_delay(&FOREVER_RETRY_MS, entry.attempts, true),
    };
    failed(state, seq, entry, error, delay).await
}

/// Write messages as rows of a sink. A sink or database this node does
/// not know (yet) is retried like a database that is down.
async fn write_sql(state: &State, name: &str, messages: &[&Message]) -> Result<(), AttemptError> {
    let (sink, database) = {
        let config = state.shared.config.borrow();
        let sink = config.sinks.get(name).cloned();
        let database = sink
            .as_ref()
            .and_then(|sink| config.databases.get(&sink.database).cloned());
        (sink, database)
    };
    let Some(sink) = sink else {
        return Err(AttemptError::UnknownDestination(state.destination.clone()));
    };
    if database.is_none() && sink.database != shoal_sinks::definition::LOCAL_DATABASE {
        return Err(AttemptError::UnknownDestination(format!(
            "database {}",
            sink.database
        )));
    }
    let password = match database.as_ref().and_then(|d| d.password_key.clone()) {
        Some(key) => Some(read_password(&state.shared.store, key).await?),
        None => None,
    };
    let databases = &state.shared.databases;
    // A migration this node cannot run is the definition's fault, not the
    // rows': they wait (as for a database that is down) until it is fixed.
    let pool = databases
        .pool(database.as_ref(), password)
        .await
        .map_err(|e| shoal_sinks::WriteError::Unavailable(e.to_string()))?;
    let rows: Vec<Vec<serde_json::Value>> = messages
        .iter()
        .map(|message| sink.row(&message.envelope()))
        .collect();
    databases.write(&pool, &sink, &rows).await?;
    Ok(())
}

/// A database password from the node's replica of the store.
async fn read_password(
    store: &shoal_storage::Store,
    key: String,
) -> Result<String, shoal_sinks::WriteError> {
    let store = store.clone();
    let unavailable = shoal_sinks::WriteError::Unavailable;
    let read = tokio::task::spawn_blocking(move || store.kv_get(&key).map(|(_, kv)| (key, kv)))
        .await
        .map_err(|e| unavailable(format!("reading the password: {e}")))?;
    let (key, kv) = read.map_err(|e| unavailable(format!("reading the password: {e}")))?;
    shoal_sinks::definition::password(&key, kv.map(|kv| kv.value)).map_err(|e| unavailable(e.0))
}
