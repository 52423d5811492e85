//! Consistent reads: each read runs against one RocksDB snapshot, so the
//! revision it reports matches exactly the data it returns.

use std::sync::{MutexGuard, TryLockError};

use rocksdb::{Direction, IteratorMode, ReadOptions, SnapshotWithThreadMode, DB};

use super::{
    key_rev, prefix_end, ChangeBatch, Event, EventType, KeyValue, Lease, META_COMPACT_REVISION,
    META_LAST_APPLIED, META_MEMBERSHIP, META_REVISION,
};
use crate::db::{
    key_u64, u64_key, Store, CF_EVENTS, CF_KEY_REVS, CF_KV, CF_LEASES, CF_LEASE_KEYS, CF_SM_META,
};
use crate::error::StorageError;
use serde::Deserialize;
use shoal_codec::{decode, decode_borrowed};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Revision of the last change.
    pub revision: u64,
    /// History before this revision has been dropped.
    pub compact_revision: u64,
}

/// Change batches read from history.
#[derive(Debug)]
pub struct Changes {
    pub counters: Counters,
    pub batches: Vec<ChangeBatch>,
    /// Where to continue reading: every revision below it has been looked at.
    pub next_revision: u64,
}

#[derive(Debug)]
pub struct LeaseDetail {
    pub lease: Lease,
    pub keys: Vec<String>,
}

type Snapshot<'a> = SnapshotWithThreadMode<'a, DB>;

impl Store {
    fn counters_in(&self, snap: &Snapshot<'_>) -> Result<Counters, StorageError> {
        let meta = self.cf(CF_SM_META)?;
        let read = |name: &str| -> Result<u64, StorageError> {
            match snap.get_cf(meta, name)? {
                None => Ok(0),
                Some(bytes) => key_u64(&bytes, CF_SM_META),
            }
        };
        Ok(Counters {
            revision: read(META_REVISION)?,
            compact_revision: read(META_COMPACT_REVISION)?,
        })
    }

    pub fn counters(&self) -> Result<Counters, StorageError> {
        self.counters_in(&self.view())
    }

    /// The counters without waiting for a snapshot import: while one
    /// replaces the state, the counters of the state it replaces and
    /// `true`. Status and metrics read this way, so that they answer while
    /// an import of gigabytes holds every other reader off.
    pub fn counters_unless_importing(&self) -> Result<(Counters, bool), StorageError> {
        let snap = match self.sm_gate.try_read() {
            Ok(_gate) => self.db.snapshot(),
            Err(TryLockError::Poisoned(_gate)) => self.db.snapshot(),
            Err(TryLockError::WouldBlock) => match *self.lock_importing() {
                Some(replaced) => return Ok((replaced, true)),
                None => self.view(),
            },
        };
        Ok((self.counters_in(&snap)?, false))
    }

    /// Whether a snapshot import is replacing the state machine now.
    pub fn importing_snapshot(&self) -> bool {
        self.lock_importing().is_some()
    }

    pub(crate) fn lock_importing(&self) -> MutexGuard<'_, Option<Counters>> {
        self.importing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The encoded last applied log id and membership, as recorded by `SmBatch::set_position`.
    pub fn sm_applied(&self) -> Result<(Option<Vec<u8>>, Option<Vec<u8>>), StorageError> {
        let meta = self.cf(CF_SM_META)?;
        let snap = self.view();
        Ok((
            snap.get_cf(meta, META_LAST_APPLIED)?,
            snap.get_cf(meta, META_MEMBERSHIP)?,
        ))
    }

    pub fn kv_get(&self, key: &str) -> Result<(Counters, Option<KeyValue>), StorageError> {
        let snap = self.view();
        let kv = match snap.get_cf(self.cf(CF_KV)?, key)? {
            Some(bytes) => Some(decode(&bytes)?),
            None => None,
        };
        Ok((self.counters_in(&snap)?, kv))
    }

    /// Up to `limit` keys starting with `prefix`, after `after` (exclusive),
    /// in byte order; the flag tells whether more follow.
    pub fn kv_range(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Counters, Vec<KeyValue>, bool), StorageError> {
        let snap = self.view();
        let mut opts = ReadOptions::default();
        if let Some(end) = prefix_end(prefix.as_bytes()) {
            opts.set_iterate_upper_bound(end);
        }
        let start = match after {
            Some(after) if after.as_bytes() >= prefix.as_bytes() => {
                let mut start = after.as_bytes().to_vec();
                start.push(0);
                start
            }
            _ => prefix.as_bytes().to_vec(),
        };
        let mut kvs = Vec::new();
        let mut more = false;
        let mode = IteratorMode::From(&start, Direction::Forward);
        for item in snap.iterator_cf_opt(self.cf(CF_KV)?, opts, mode) {
            let (_, value) = item?;
            if kvs.len() == limit {
                more = true;
                break;
            }
            kvs.push(decode(&value)?);
        }
        Ok((self.counters_in(&snap)?, kvs, more))
    }

    /// Every key starting with `prefix`, in byte order, handed to `each`,
    /// all from one snapshot, with that snapshot's counters. Whoever loads
    /// a prefix whole and then watches it from `revision + 1` must load it
    /// this way: pages of [`Store::kv_range`] come from one snapshot each,
    /// so a key written between two pages that sorts before the second is
    /// in neither, yet older than the revision the last page reports.
    pub fn kv_scan_prefix(
        &self,
        prefix: &str,
        each: &mut dyn FnMut(KeyValue),
    ) -> Result<Counters, StorageError> {
        let snap = self.view();
        let mut opts = ReadOptions::default();
        if let Some(end) = prefix_end(prefix.as_bytes()) {
            opts.set_iterate_upper_bound(end);
        }
        let mode = IteratorMode::From(prefix.as_bytes(), Direction::Forward);
        for item in snap.iterator_cf_opt(self.cf(CF_KV)?, opts, mode) {
            let (_, value) = item?;
            each(decode(&value)?);
        }
        self.counters_in(&snap)
    }

    /// Retained revisions that changed `key`, oldest first.
    pub(crate) fn key_revisions(&self, key: &str) -> Result<Vec<u64>, StorageError> {
        key_revisions_in(&self.view(), self.cf(CF_KEY_REVS)?, key)
    }

    /// The last event for `key` in revision `revision`, if that revision is retained.
    pub(crate) fn event_at(&self, key: &str, revision: u64) -> Result<Option<Event>, StorageError> {
        event_at_in(&self.view(), self.cf(CF_EVENTS)?, key, revision)
    }

    /// Changes to `key`, newest first, with revision < `before` (if given).
    pub fn kv_history(
        &self,
        key: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<(Counters, Vec<Event>), StorageError> {
        let snap = self.view();
        let events_cf = self.cf(CF_EVENTS)?;
        let mut out = Vec::new();
        for revision in key_revisions_in(&snap, self.cf(CF_KEY_REVS)?, key)?
            .into_iter()
            .rev()
        {
            if before.is_some_and(|before| revision >= before) {
                continue;
            }
            if out.len() == limit {
                break;
            }
            if let Some(event) = event_at_in(&snap, events_cf, key, revision)? {
                out.push(event);
            }
        }
        Ok((self.counters_in(&snap)?, out))
    }

    /// Change batches with revision >= `from`, keeping only events for which
    /// `matches(key)` holds and batches with at least one such event; stops
    /// after `max_batches` batches or `max_scan` revisions looked at. The
    /// caller must check `from` against `counters.compact_revision`.
    pub fn kv_changes(
        &self,
        from: u64,
        matches: &dyn Fn(&str) -> bool,
        max_batches: usize,
        max_scan: usize,
    ) -> Result<Changes, StorageError> {
        let snap = self.view();
        let counters = self.counters_in(&snap)?;
        let mut batches = Vec::new();
        let mut next_revision = from.max(1);
        let mut exhausted = true;
        // A raw iterator and a borrowing decode: batches are looked at where
        // RocksDB holds them, and only the kept events are copied.
        let mut stored = snap.raw_iterator_cf(self.cf(CF_EVENTS)?);
        stored.seek(u64_key(next_revision));
        let mut scanned = 0;
        while let Some(value) = stored.value() {
            if batches.len() == max_batches || scanned == max_scan {
                exhausted = false;
                break;
            }
            scanned += 1;
            let batch: StoredBatch<'_> = decode_borrowed(value)?;
            next_revision = batch.revision + 1;
            let events: Vec<Event> = batch
                .events
                .into_iter()
                .filter(|event| matches(event.kv.key))
                .map(StoredEvent::into_event)
                .collect();
            if !events.is_empty() {
                batches.push(ChangeBatch {
                    revision: batch.revision,
                    events,
                });
            }
            stored.next();
        }
        stored.status()?;
        if exhausted {
            next_revision = next_revision.max(counters.revision + 1);
        }
        Ok(Changes {
            counters,
            batches,
            next_revision,
        })
    }

    pub fn lease_get(&self, id: u64) -> Result<Option<LeaseDetail>, StorageError> {
        let snap = self.view();
        let Some(bytes) = snap.get_cf(self.cf(CF_LEASES)?, u64_key(id))? else {
            return Ok(None);
        };
        let lease: Lease = decode(&bytes)?;
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(u64_key(id + 1));
        let mode = IteratorMode::From(&u64_key(id), Direction::Forward);
        let mut keys = Vec::new();
        for item in snap.iterator_cf_opt(self.cf(CF_LEASE_KEYS)?, opts, mode) {
            let (raw, _) = item?;
            keys.push(String::from_utf8_lossy(raw.get(8..).unwrap_or_default()).into_owned());
        }
        Ok(Some(LeaseDetail { lease, keys }))
    }

    pub fn lease_list(&self) -> Result<Vec<Lease>, StorageError> {
        let view = self.view();
        let mut out = Vec::new();
        for item in view.iterator_cf(self.cf(CF_LEASES)?, IteratorMode::Start) {
            let (_, value) = item?;
            out.push(decode(&value)?);
        }
        Ok(out)
    }
}

fn key_revisions_in(
    snap: &Snapshot<'_>,
    cf: &rocksdb::ColumnFamily,
    key: &str,
) -> Result<Vec<u64>, StorageError> {
    let start = key_rev(key, 0);
    let mut opts = ReadOptions::default();
    if let Some(end) = prefix_end(&start[..key.len() + 1]) {
        opts.set_iterate_upper_bound(end);
    }
    let mut out = Vec::new();
    let mode = IteratorMode::From(&start, Direction::Forward);
    for item in snap.iterator_cf_opt(cf, opts, mode) {
        let (raw, _) = item?;
        out.push(key_u64(
            raw.get(key.len() + 1..).unwrap_or_default(),
            CF_KEY_REVS,
        )?);
    }
    Ok(out)
}

fn event_at_in(
    snap: &Snapshot<'_>,
    cf: &rocksdb::ColumnFamily,
    key: &str,
    revision: u64,
) -> Result<Option<Event>, StorageError> {
    let Some(bytes) = snap.get_cf(cf, u64_key(revision))? else {
        return Ok(None);
    };
    let batch: StoredBatch<'_> = decode_borrowed(&bytes)?;
    Ok(batch
        .events
        .into_iter()
        .rev()
        .find(|event| event.kv.key == key)
        .map(StoredEvent::into_event))
}

/// A stored [`ChangeBatch`] decoded in place: the same fields in the same
/// order (so the same encoding), with keys and values borrowed. Readers
/// that keep a few events of a batch (a watch of some keys, one key's
/// history, compaction's keys) copy only those.
#[derive(Deserialize)]
pub(super) struct StoredBatch<'a> {
    pub(super) revision: u64,
    #[serde(borrow)]
    pub(super) events: Vec<StoredEvent<'a>>,
}

#[derive(Deserialize)]
pub(super) struct StoredEvent<'a> {
    kind: EventType,
    #[serde(borrow)]
    pub(super) kv: StoredKeyValue<'a>,
}

#[derive(Deserialize)]
pub(super) struct StoredKeyValue<'a> {
    pub(super) key: &'a str,
    value: &'a [u8],
    create_revision: u64,
    mod_revision: u64,
    version: u64,
    lease: u64,
}

impl StoredEvent<'_> {
    pub(super) fn into_event(self) -> Event {
        let kv = self.kv;
        Event {
            kind: self.kind,
            kv: KeyValue {
                key: kv.key.to_owned(),
                value: kv.value.to_vec(),
                create_revision: kv.create_revision,
                mod_revision: kv.mod_revision,
                version: kv.version,
                lease: kv.lease,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `StoredBatch` must keep decoding what `ChangeBatch` encodes: every
    /// reader of the history (watches, a key's history, compaction) reads
    /// the stored batches through it.
    #[test]
    fn a_stored_batch_decodes_in_place_as_the_batch_written() {
        let batch = ChangeBatch {
            revision: 7,
            events: vec![
                Event {
                    kind: EventType::Put,
                    kv: KeyValue {
                        key: "a/κλειδί".into(),
                        value: vec![0, 1, 255, 7],
                        create_revision: 3,
                        mod_revision: 7,
                        version: 2,
                        lease: 9,
                    },
                },
                Event {
                    kind: EventType::Delete,
                    kv: KeyValue {
                        key: "b".into(),
                        value: Vec::new(),
                        create_revision: 0,
                        mod_revision: 7,
                        version: 0,
                        lease: 0,
                    },
                },
            ],
        };
        let bytes = shoal_codec::encode(&batch).expect("encodes");
        let stored: StoredBatch<'_> = decode_borrowed(&bytes).expect("decodes in place");
        let read = ChangeBatch {
            revision: stored.revision,
            events: stored
                .events
                .into_iter()
                .map(StoredEvent::into_event)
                .collect(),
        };
        assert_eq!(read, batch);
    }
}
