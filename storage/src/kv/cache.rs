//! The key/value pairs the state machine wrote last, so that applying a
//! write to a hot key does not search RocksDB for its previous version.
//! Such a search walks the memtable's skip list, which holds every version
//! written since the last flush: in a profile of 128 clients putting 1 000
//! keys, those lookups were a tenth of every node's CPU.
//!
//! Only the state machine's applier uses it, under the lock it holds for a
//! whole run of entries; it is filled after each successful write, emptied
//! when a write fails or a snapshot replaces the state, and emptied whole
//! when it outgrows its budget (hot keys come back with their next write).

use std::collections::HashMap;
use std::sync::MutexGuard;

use super::KeyValue;
use crate::Store;

/// Bytes of keys and values the cache may hold: tens of thousands of small
/// hot keys. Workflow instances are written a few times each and then left
/// waiting, so a larger budget only held them for nothing.
const BUDGET_BYTES: usize = 8 << 20;
/// Rough per-entry bookkeeping on top of key and value bytes.
const ENTRY_OVERHEAD: usize = 96;

#[derive(Default)]
pub(crate) struct KvCache {
    /// Key -> its current pair, or None if it was deleted.
    entries: HashMap<String, Option<KeyValue>>,
    bytes: usize,
}

fn cost(key: &str, kv: &Option<KeyValue>) -> usize {
    ENTRY_OVERHEAD + 2 * key.len() + kv.as_ref().map_or(0, |kv| kv.value.len())
}

impl KvCache {
    pub(crate) fn get(&self, key: &str) -> Option<&Option<KeyValue>> {
        self.entries.get(key)
    }

    /// Record what was just written for `key`.
    pub(crate) fn insert(&mut self, key: String, kv: Option<KeyValue>) {
        self.bytes += cost(&key, &kv);
        if let Some(old) = self.entries.get(&key) {
            self.bytes -= cost(&key, old);
        }
        self.entries.insert(key, kv);
        if self.bytes > BUDGET_BYTES {
            self.clear();
        }
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

impl Store {
    /// The applier's cache, locked (by the applier for a run of entries, or
    /// by a snapshot install to empty it).
    pub(crate) fn lock_applied_kv(&self) -> MutexGuard<'_, KvCache> {
        self.applied_kv
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
