//! Watch fan-out. Each watcher registers a filter (one key or a prefix) and
//! a bounded channel. A change batch is offered only to the watchers whose
//! filter matches one of its keys: exact keys are found by hash lookup and
//! prefixes by looking up the event key's own prefixes at the lengths that
//! registered prefixes have, so a write costs O(matching watchers), not
//! O(all watchers).
//!
//! Delivery never blocks the state machine: when a watcher's channel is full
//! it is dropped from the hub, and the watcher re-reads the missed changes
//! from the stored history (see `services::watch::Watcher`), so nothing is lost.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use shoal_raft::ChangeSink;
use shoal_storage::kv::ChangeBatch;
use tokio::sync::mpsc;

/// Batches buffered per watcher before it falls back to reading history.
const WATCHER_BUFFER: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    Key(String),
    Prefix(String),
}

impl Filter {
    pub fn matches(&self, key: &str) -> bool {
        match self {
            Filter::Key(k) => k == key,
            Filter::Prefix(p) => key.starts_with(p.as_str()),
        }
    }

    /// The batch restricted to matching events, or None if none match.
    /// When every event matches, the shared batch itself is returned, so
    /// its rendering is shared by all the watchers it reaches.
    pub fn select(&self, shared: &Arc<SharedBatch>) -> Option<Arc<SharedBatch>> {
        let batch = &shared.batch;
        let matching = batch
            .events
            .iter()
            .filter(|e| self.matches(&e.kv.key))
            .count();
        if matching == batch.events.len() {
            return Some(shared.clone());
        }
        let events: Vec<_> = batch
            .events
            .iter()
            .filter(|e| self.matches(&e.kv.key))
            .cloned()
            .collect();
        (!events.is_empty()).then(|| {
            SharedBatch::new(ChangeBatch {
                revision: batch.revision,
                events,
            })
        })
    }
}

/// A change batch on its way to watchers, rendered (e.g. to JSON) at most
/// once however many watchers receive it.
pub struct SharedBatch {
    pub batch: ChangeBatch,
    rendered: OnceLock<String>,
}

impl SharedBatch {
    pub fn new(batch: ChangeBatch) -> Arc<SharedBatch> {
        Arc::new(SharedBatch {
            batch,
            rendered: OnceLock::new(),
        })
    }

    pub fn rendered(&self, render: impl FnOnce(&ChangeBatch) -> String) -> &str {
        self.rendered.get_or_init(|| render(&self.batch))
    }
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    senders: HashMap<u64, (Filter, mpsc::Sender<Arc<SharedBatch>>)>,
    by_key: HashMap<String, Vec<u64>>,
    by_prefix: HashMap<String, Vec<u64>>,
    /// Length of registered prefixes -> how many prefixes have it.
    prefix_lens: BTreeMap<usize, usize>,
}

impl Registry {
    fn remove(&mut self, id: u64) {
        let Some((filter, _)) = self.senders.remove(&id) else {
            return;
        };
        let (map, name) = match &filter {
            Filter::Key(k) => (&mut self.by_key, k),
            Filter::Prefix(p) => (&mut self.by_prefix, p),
        };
        if let Some(ids) = map.get_mut(name) {
            ids.retain(|other| *other != id);
            if ids.is_empty() {
                map.remove(name);
            }
        }
        if let Filter::Prefix(p) = &filter {
            if let Some(count) = self.prefix_lens.get_mut(&p.len()) {
                *count -= 1;
                if *count == 0 {
                    self.prefix_lens.remove(&p.len());
                }
            }
        }
    }

    fn matching(&self, batch: &ChangeBatch) -> Vec<u64> {
        let mut ids = Vec::new();
        for event in &batch.events {
            let key = event.kv.key.as_str();
            if let Some(found) = self.by_key.get(key) {
                ids.extend_from_slice(found);
            }
            for len in self.prefix_lens.keys().take_while(|len| **len <= key.len()) {
                if let Some(found) = key.get(..*len).and_then(|p| self.by_prefix.get(p)) {
                    ids.extend_from_slice(found);
                }
            }
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

#[derive(Default)]
pub struct WatchHub {
    registry: Mutex<Registry>,
}

/// A live registration; unregisters when dropped.
pub struct Registration {
    hub: Arc<WatchHub>,
    id: u64,
    pub receiver: mpsc::Receiver<Arc<SharedBatch>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.lock().remove(self.id);
    }
}

impl WatchHub {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock cannot leave the maps inconsistent
        // in a way that matters more than losing watches, so keep going.
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn register(self: &Arc<Self>, filter: Filter) -> Registration {
        let (sender, receiver) = mpsc::channel(WATCHER_BUFFER);
        let mut registry = self.lock();
        registry.next_id += 1;
        let id = registry.next_id;
        match &filter {
            Filter::Key(k) => registry.by_key.entry(k.clone()).or_default().push(id),
            Filter::Prefix(p) => {
                registry.by_prefix.entry(p.clone()).or_default().push(id);
                *registry.prefix_lens.entry(p.len()).or_default() += 1;
            }
        }
        registry.senders.insert(id, (filter, sender));
        drop(registry);
        Registration {
            hub: self.clone(),
            id,
            receiver,
        }
    }

    pub fn watcher_count(&self) -> usize {
        self.lock().senders.len()
    }
}

impl ChangeSink for WatchHub {
    fn changed(&self, batch: &ChangeBatch) {
        let mut registry = self.lock();
        let ids = registry.matching(batch);
        if ids.is_empty() {
            return;
        }
        let batch = SharedBatch::new(batch.clone());
        let mut overflowed = Vec::new();
        for id in ids {
            if let Some((_, sender)) = registry.senders.get(&id) {
                if sender.try_send(batch.clone()).is_err() {
                    overflowed.push(id);
                }
            }
        }
        for id in overflowed {
            // Dropping the sender closes the channel: the watcher drains what
            // it has, then catches up from history and registers again.
            registry.remove(id);
            metrics::counter!("shoal_watch_overflows_total").increment(1);
        }
    }

    fn replaced(&self) {
        let mut registry = self.lock();
        let ids: Vec<u64> = registry.senders.keys().copied().collect();
        for id in ids {
            registry.remove(id);
        }
    }
}
