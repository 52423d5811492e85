//! Typed configuration: every key under a prefix read into a serde type,
//! kept current by a watch.
//!
//! # Mapping
//!
//! The part of each key after the prefix (leading `/` removed) is split at
//! `/` into a path of object fields; empty segments are skipped. The value
//! is parsed as JSON if it is valid JSON, else taken as a UTF-8 string
//! (invalid UTF-8 is replaced). So under `app/`:
//!
//! | key | value | becomes |
//! | --- | --- | --- |
//! | `app/timeout_ms` | `2500` | `{"timeout_ms": 2500}` |
//! | `app/url` | `https://pay.internal` | `{"url": "https://pay.internal"}` |
//! | `app/db/pool` | `{"min":1,"max":8}` | `{"db": {"pool": {"min": 1, "max": 8}}}` |
//! | `app/version` | `"1.10"` (quoted) | `{"version": "1.10"}` |
//!
//! A value that looks like JSON but is meant as a string (`1.10`, `true`)
//! must be stored quoted, or the field declared with a type that accepts
//! it. When a key is both a value and the parent of other keys (`app/db`
//! and `app/db/pool`), the nested keys win and the value is ignored.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::kv::EventType;
use crate::watch::{WatchOptions, WatchStream};

/// Pause before re-reading after the watch failed for good (e.g. compacted).
const RELOAD_PAUSE: Duration = Duration::from_millis(500);

/// A configuration value of type `T` read from a key prefix and kept current.
///
/// The value is replaced (and receivers notified) after every change under
/// the prefix that changes the mapped JSON and still deserializes into `T`;
/// a change that does not fit `T` is logged, kept in
/// [`ConfigWatcher::last_error`], and the previous value stays. Receivers
/// from [`ConfigWatcher::subscribe`] keep working after this handle is
/// dropped; the background watch ends when the last receiver is gone.
#[derive(Debug)]
pub struct ConfigWatcher<T> {
    receiver: watch::Receiver<T>,
    revision: Arc<AtomicU64>,
    last_error: Arc<Mutex<Option<String>>>,
}

impl<T> ConfigWatcher<T> {
    /// The current value.
    pub fn get(&self) -> watch::Ref<'_, T> {
        self.receiver.borrow()
    }

    /// The store revision the current value was read at (or last changed in).
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Relaxed)
    }

    /// A receiver of the value; `changed()` on it wakes on every new value.
    pub fn subscribe(&self) -> watch::Receiver<T> {
        self.receiver.clone()
    }

    /// Waits for the next new value and returns it.
    pub async fn changed(&mut self) -> Result<watch::Ref<'_, T>> {
        self.receiver
            .changed()
            .await
            .map_err(|_| Error::Closed("the configuration watch stopped".into()))?;
        Ok(self.receiver.borrow_and_update())
    }

    /// Why the last change was not applied, if it was not.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
}

/// The raw keys under the prefix and the JSON built from them.
struct State<T> {
    prefix: String,
    keys: BTreeMap<String, Vec<u8>>,
    tree: Value,
    _type: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> State<T> {
    fn new(prefix: &str) -> State<T> {
        State {
            prefix: prefix.to_string(),
            keys: BTreeMap::new(),
            tree: Value::Object(Map::new()),
            _type: PhantomData,
        }
    }

    /// Rebuilds the tree; returns the new value if the tree changed and fits `T`.
    fn rebuild(&mut self) -> Result<Option<T>> {
        let tree = build_tree(&self.prefix, &self.keys);
        if tree == self.tree {
            return Ok(None);
        }
        let value = serde_json::from_value::<T>(tree.clone()).map_err(|e| Error::Config {
            prefix: self.prefix.clone(),
            reason: e.to_string(),
        })?;
        self.tree = tree;
        Ok(Some(value))
    }
}

/// The JSON object of the keys under `prefix` (see the module docs).
pub fn build_tree(prefix: &str, keys: &BTreeMap<String, Vec<u8>>) -> Value {
    let mut root = Map::new();
    'keys: for (key, raw) in keys {
        let Some(rest) = key.strip_prefix(prefix) else {
            continue;
        };
        let path: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let Some((last, parents)) = path.split_last() else {
            continue;
        };
        let value = parse_value(raw);
        let mut node = &mut root;
        for segment in parents {
            let slot = node
                .entry(segment.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if !slot.is_object() {
                // Nested keys win over a value at their parent's path.
                *slot = Value::Object(Map::new());
            }
            node = match slot {
                Value::Object(map) => map,
                _ => continue 'keys,
            };
        }
        match node.get(*last) {
            // Keep the nested keys that are already there.
            Some(Value::Object(_)) if !value.is_object() => {}
            _ => {
                node.insert(last.to_string(), value);
            }
        }
    }
    Value::Object(root)
}

fn parse_value(raw: &[u8]) -> Value {
    serde_json::from_slice(raw)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(raw).into_owned()))
}

impl Client {
    /// Reads every key under `prefix` into a `T` (see the mapping in
    /// [`crate::config`]) and keeps it current with a watch. Fails if the
    /// keys there now do not deserialize into `T`.
    pub async fn config<T>(&self, prefix: &str) -> Result<ConfigWatcher<T>>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        let mut state = State::<T>::new(prefix);
        let (value, stream) = load(self, &mut state).await?;
        let (sender, receiver) = watch::channel(value);
        let revision = Arc::new(AtomicU64::new(stream.start_revision().saturating_sub(1)));
        let last_error = Arc::new(Mutex::new(None));
        tokio::spawn(follow(
            self.clone(),
            state,
            stream,
            sender,
            revision.clone(),
            last_error.clone(),
        ));
        Ok(ConfigWatcher {
            receiver,
            revision,
            last_error,
        })
    }
}

/// Lists the prefix, builds the value, and starts a watch right after the list.
async fn load<T: DeserializeOwned>(
    client: &Client,
    state: &mut State<T>,
) -> Result<(T, WatchStream)> {
    let (revision, kvs) = client.list_all(&state.prefix).await?;
    state.keys = kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
    let tree = build_tree(&state.prefix, &state.keys);
    let value = serde_json::from_value::<T>(tree.clone()).map_err(|e| Error::Config {
        prefix: state.prefix.clone(),
        reason: e.to_string(),
    })?;
    state.tree = tree;
    // Later list pages may already hold changes after `revision`; replaying
    // them from the watch converges on the same keys.
    let stream = client
        .watch(WatchOptions::prefix(state.prefix.clone()).from_revision(revision + 1))
        .await?;
    Ok((value, stream))
}

async fn follow<T: DeserializeOwned>(
    client: Client,
    mut state: State<T>,
    mut stream: WatchStream,
    sender: watch::Sender<T>,
    revision: Arc<AtomicU64>,
    last_error: Arc<Mutex<Option<String>>>,
) {
    let set_error = |error: Option<String>| {
        if let Ok(mut slot) = last_error.lock() {
            *slot = error;
        }
    };
    loop {
        let item = tokio::select! {
            item = stream.next() => item,
            _ = sender.closed() => return,
        };
        match item {
            Some(Ok(batch)) => {
                for event in batch.events {
                    match event.kind {
                        EventType::Put => state.keys.insert(event.kv.key, event.kv.value),
                        EventType::Delete => state.keys.remove(&event.kv.key),
                    };
                }
                match state.rebuild() {
                    Ok(Some(value)) => {
                        revision.store(batch.revision, Ordering::Relaxed);
                        set_error(None);
                        sender.send_replace(value);
                    }
                    // Back to the value already published: nothing is wrong any more.
                    Ok(None) => set_error(None),
                    Err(e) => {
                        tracing::warn!(
                            revision = batch.revision,
                            "configuration change ignored: {e}"
                        );
                        set_error(Some(e.to_string()));
                    }
                }
            }
            end => {
                // The watch cannot go on (e.g. history compacted): read it all again.
                if let Some(Err(e)) = end {
                    tracing::warn!("configuration watch failed, re-reading: {e}");
                    set_error(Some(e.to_string()));
                }
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(RELOAD_PAUSE) => {}
                        _ = sender.closed() => return,
                    }
                    match load(&client, &mut state).await {
                        Ok((value, new_stream)) => {
                            stream = new_stream;
                            revision.store(
                                stream.start_revision().saturating_sub(1),
                                Ordering::Relaxed,
                            );
                            set_error(None);
                            sender.send_replace(value);
                            break;
                        }
                        Err(e) => {
                            tracing::warn!("configuration re-read failed: {e}");
                            set_error(Some(e.to_string()));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn keys_map_to_nested_json() {
        let tree = build_tree(
            "app/",
            &keys(&[
                ("app/timeout_ms", "2500"),
                ("app/url", "https://pay.internal"),
                ("app/db", "ignored"),
                ("app/db/pool/max", "8"),
                ("app/version", "\"1.10\""),
                ("app/flags", "{\"new\":true}"),
            ]),
        );
        assert_eq!(
            tree,
            json!({
                "timeout_ms": 2500,
                "url": "https://pay.internal",
                "db": {"pool": {"max": 8}},
                "version": "1.10",
                "flags": {"new": true},
            })
        );
    }
}
