//! The durable outbox: messages on their way to a destination that may be
//! down (a webhook, Kafka), and the dead letters of each destination.
//!
//! This is node-local data, not replicated: a message waits on the node that
//! accepted it. Entries are opaque bytes here; the messaging crate decides
//! what they hold. Keys are `destination ++ 0x00 ++ seq` (big-endian), so a
//! destination's entries come out in the order they were added.

use std::collections::BTreeMap;
use std::sync::{Mutex, RwLock, RwLockReadGuard};

use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch};

use crate::db::{CF_DEAD_LETTERS, CF_OUTBOX};
use crate::{StorageError, Store};

/// Where the next sequence number is kept (sorts before every destination).
const NEXT_SEQ: &[u8] = b"\x00next_seq";

/// One stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub seq: u64,
    pub value: Vec<u8>,
}

/// Which list of a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum List {
    Pending,
    Dead,
}

impl List {
    fn cf(self) -> &'static str {
        match self {
            List::Pending => CF_OUTBOX,
            List::Dead => CF_DEAD_LETTERS,
        }
    }
}

pub struct Outbox {
    store: Store,
    next_seq: Mutex<u64>,
    /// Pending entries per destination, counted at open and kept by every
    /// change, so the lag is known without scanning a long list.
    pending: Mutex<BTreeMap<String, u64>>,
    /// Taken shared around the check and write of every change but a
    /// delivered entry's removal (a new entry, a failed attempt, a dead
    /// letter, a replay), and exclusively by [`Outbox::purge`]: a publish,
    /// a deliverer's pass or a replay under way when its destination was
    /// deleted must not bring back an entry the purge removed.
    purge_gate: RwLock<()>,
}

fn entry_key(destination: &str, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(destination.len() + 9);
    key.extend_from_slice(destination.as_bytes());
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn split_key(key: &[u8]) -> Option<(&str, u64)> {
    let at = key.iter().position(|b| *b == 0)?;
    let destination = std::str::from_utf8(&key[..at]).ok()?;
    let seq = u64::from_be_bytes(key.get(at + 1..)?.try_into().ok()?);
    Some((destination, seq))
}

/// Pending entries per destination, by scanning every one.
fn count_by_destination(store: &Store) -> Result<BTreeMap<String, u64>, StorageError> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for item in store
        .db
        .iterator_cf(store.cf(CF_OUTBOX)?, IteratorMode::Start)
    {
        let (key, _) = item?;
        if let Some((destination, _)) = split_key(&key) {
            if !destination.is_empty() {
                *counts.entry(destination.to_string()).or_default() += 1;
            }
        }
    }
    Ok(counts)
}

impl Outbox {
    /// Blocking: reads the sequence counter.
    pub fn open(store: Store) -> Result<Outbox, StorageError> {
        let next = match store.db.get_cf(store.cf(CF_OUTBOX)?, NEXT_SEQ)? {
            Some(bytes) => u64::from_be_bytes(bytes.as_slice().try_into().map_err(|_| {
                StorageError::Corrupt {
                    cf: CF_OUTBOX,
                    detail: "bad sequence counter".into(),
                }
            })?),
            None => 1,
        };
        let pending = count_by_destination(&store)?;
        Ok(Outbox {
            store,
            next_seq: Mutex::new(next),
            pending: Mutex::new(pending),
            purge_gate: RwLock::new(()),
        })
    }

    /// How many entries wait in each destination's pending list.
    pub fn pending_counts(&self) -> Vec<(String, u64)> {
        self.lock_pending()
            .iter()
            .map(|(destination, count)| (destination.clone(), *count))
            .collect()
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u64>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count_pending(&self, destination: &str, added: u64, removed: u64) {
        let mut pending = self.lock_pending();
        let count = pending.entry(destination.to_string()).or_default();
        *count = (*count + added).saturating_sub(removed);
    }

    /// Add the entries, one per (destination, value), whose destination
    /// `wanted` keeps, in one synced write: once this returns they survive
    /// a crash. `wanted` is asked through the purge gate, so an entry for a
    /// destination deleted meanwhile is either refused or purged after.
    /// Returns the sequence numbers of the entries written, in order.
    pub fn add(
        &self,
        entries: &[(String, Vec<u8>)],
        mut wanted: impl FnMut(&str) -> bool,
    ) -> Result<Vec<u64>, StorageError> {
        let _gate = self.gate();
        let entries: Vec<&(String, Vec<u8>)> = entries.iter().filter(|(d, _)| wanted(d)).collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let cf = self.store.cf(CF_OUTBOX)?;
        // Held across the write so that sequence numbers reach the disk in order.
        let mut next = self.next_seq.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = WriteBatch::default();
        let mut seqs = Vec::with_capacity(entries.len());
        for (destination, value) in &entries {
            batch.put_cf(cf, entry_key(destination, *next), value);
            seqs.push(*next);
            *next += 1;
        }
        batch.put_cf(cf, NEXT_SEQ, next.to_be_bytes());
        self.store.write(batch, true)?;
        for (destination, _) in entries {
            self.count_pending(destination, 1, 0);
        }
        Ok(seqs)
    }

    /// Up to `limit` entries of a destination's list, oldest first, after `after`.
    pub fn scan(
        &self,
        list: List,
        destination: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Stored>, StorageError> {
        let cf = self.store.cf(list.cf())?;
        let start = entry_key(destination, after.map_or(0, |seq| seq.saturating_add(1)));
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(entry_key(destination, u64::MAX));
        let mut found = Vec::new();
        for item in
            self.store
                .db
                .iterator_cf_opt(cf, opts, IteratorMode::From(&start, Direction::Forward))
        {
            let (key, value) = item?;
            let Some((_, seq)) = split_key(&key) else {
                continue;
            };
            found.push(Stored {
                seq,
                value: value.to_vec(),
            });
            if found.len() >= limit {
                break;
            }
        }
        Ok(found)
    }

    /// Number of entries in a destination's list (counts by scanning keys).
    pub fn count(&self, list: List, destination: &str) -> Result<u64, StorageError> {
        let cf = self.store.cf(list.cf())?;
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(entry_key(destination, u64::MAX));
        let start = entry_key(destination, 0);
        let mut count = 0;
        for item in
            self.store
                .db
                .iterator_cf_opt(cf, opts, IteratorMode::From(&start, Direction::Forward))
        {
            item?;
            count += 1;
        }
        Ok(count)
    }

    /// Every destination with pending entries.
    pub fn destinations(&self) -> Result<Vec<String>, StorageError> {
        Ok(count_by_destination(&self.store)?.into_keys().collect())
    }

    fn gate(&self) -> RwLockReadGuard<'_, ()> {
        self.purge_gate.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a pending entry is still there (asked through the gate, so
    /// that no purge comes between the answer and the write it decides).
    fn is_pending(
        &self,
        _gate: &RwLockReadGuard<'_, ()>,
        key: &[u8],
    ) -> Result<bool, StorageError> {
        Ok(self
            .store
            .db
            .get_cf(self.store.cf(CF_OUTBOX)?, key)?
            .is_some())
    }

    /// Replace a pending entry (after a failed attempt), unless it is gone.
    pub fn update(&self, destination: &str, seq: u64, value: &[u8]) -> Result<(), StorageError> {
        let gate = self.gate();
        let key = entry_key(destination, seq);
        if !self.is_pending(&gate, &key)? {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        batch.put_cf(self.store.cf(CF_OUTBOX)?, key, value);
        self.store.write(batch, false)
    }

    /// Forget delivered entries, in one write. Not synced: after a crash
    /// they may be delivered again, which at-least-once allows.
    pub fn remove(&self, destination: &str, seqs: &[u64]) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        let cf = self.store.cf(CF_OUTBOX)?;
        for seq in seqs {
            batch.delete_cf(cf, entry_key(destination, *seq));
        }
        self.store.write(batch, false)?;
        self.count_pending(destination, 0, seqs.len() as u64);
        Ok(())
    }

    /// Move a pending entry to the dead letters, atomically, unless it is
    /// gone.
    pub fn kill(&self, destination: &str, seq: u64, value: &[u8]) -> Result<(), StorageError> {
        let gate = self.gate();
        let key = entry_key(destination, seq);
        if !self.is_pending(&gate, &key)? {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.store.cf(CF_OUTBOX)?, &key);
        batch.put_cf(self.store.cf(CF_DEAD_LETTERS)?, &key, value);
        self.store.write(batch, true)?;
        self.count_pending(destination, 0, 1);
        Ok(())
    }

    /// Move dead letters back to the pending list (all of them, or the given
    /// sequence numbers), each rewritten by `revive`, under new sequence
    /// numbers: a replayed entry joins the end of the list, after every
    /// entry a deliverer has taken off it. Returns how many moved.
    pub fn replay(
        &self,
        destination: &str,
        only: Option<&[u64]>,
        revive: impl Fn(&[u8]) -> Vec<u8>,
    ) -> Result<usize, StorageError> {
        let _gate = self.gate();
        let dead = self.scan(List::Dead, destination, None, usize::MAX)?;
        let pending = self.store.cf(CF_OUTBOX)?;
        // Held across the write, as in `add`.
        let mut next = self.next_seq.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = WriteBatch::default();
        let mut moved = 0;
        for entry in dead {
            if only.is_some_and(|seqs| !seqs.contains(&entry.seq)) {
                continue;
            }
            batch.delete_cf(
                self.store.cf(CF_DEAD_LETTERS)?,
                entry_key(destination, entry.seq),
            );
            batch.put_cf(pending, entry_key(destination, *next), revive(&entry.value));
            *next += 1;
            moved += 1;
        }
        batch.put_cf(pending, NEXT_SEQ, next.to_be_bytes());
        self.store.write(batch, true)?;
        self.count_pending(destination, moved as u64, 0);
        Ok(moved)
    }

    /// Drop every entry of a destination, pending and dead (when it is deleted).
    pub fn purge(&self, destination: &str) -> Result<(), StorageError> {
        let _gate = self.purge_gate.write().unwrap_or_else(|p| p.into_inner());
        let mut batch = WriteBatch::default();
        for list in [List::Pending, List::Dead] {
            batch.delete_range_cf(
                self.store.cf(list.cf())?,
                entry_key(destination, 0),
                entry_key(destination, u64::MAX),
            );
        }
        self.store.write(batch, true)?;
        // Kept at 0 rather than removed, so a gauge made from it drops to 0.
        self.lock_pending().insert(destination.to_string(), 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries `1` and `2` for `webhook:a`: their sequence numbers.
    fn add_two_for_a(outbox: &Outbox) -> Vec<u64> {
        let entries = [
            ("webhook:a".to_string(), b"1".to_vec()),
            ("webhook:a".to_string(), b"2".to_vec()),
        ];
        outbox.add(&entries, |_| true).unwrap()
    }

    #[test]
    fn a_purged_entry_is_not_brought_back_by_a_pass_under_way() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(Store::open(dir.path()).unwrap()).unwrap();
        let seqs = add_two_for_a(&outbox);
        // The destination is deleted while its deliverer holds both
        // entries; the deliverer then records a failed attempt and a dead
        // letter.
        outbox.purge("webhook:a").unwrap();
        outbox.update("webhook:a", seqs[0], b"1, tried").unwrap();
        outbox.kill("webhook:a", seqs[1], b"2, dead").unwrap();
        assert_eq!(outbox.count(List::Pending, "webhook:a").unwrap(), 0);
        assert_eq!(outbox.count(List::Dead, "webhook:a").unwrap(), 0);
        assert_eq!(outbox.pending_counts(), vec![("webhook:a".to_string(), 0)]);
    }

    #[test]
    fn entries_survive_reopen_and_move_between_lists() {
        let dir = tempfile::tempdir().unwrap();
        {
            let outbox = Outbox::open(Store::open(dir.path()).unwrap()).unwrap();
            let seqs = add_two_for_a(&outbox);
            assert_eq!(seqs, vec![1, 2]);
            outbox.kill("webhook:a", 1, b"1").unwrap();
        }
        let outbox = Outbox::open(Store::open(dir.path()).unwrap()).unwrap();
        // Counted again at open: one pending (the other is dead).
        assert_eq!(outbox.pending_counts(), vec![("webhook:a".to_string(), 1)]);
        assert_eq!(
            outbox
                .add(&[("kafka:t".into(), b"3".to_vec())], |_| true)
                .unwrap(),
            vec![3]
        );
        assert_eq!(
            outbox.destinations().unwrap(),
            vec!["kafka:t".to_string(), "webhook:a".to_string()]
        );
        let pending = outbox.scan(List::Pending, "webhook:a", None, 10).unwrap();
        assert_eq!(
            pending,
            vec![Stored {
                seq: 2,
                value: b"2".to_vec()
            }]
        );
        assert_eq!(outbox.count(List::Dead, "webhook:a").unwrap(), 1);
        assert_eq!(outbox.replay("webhook:a", None, |v| v.to_vec()).unwrap(), 1);
        assert_eq!(outbox.count(List::Pending, "webhook:a").unwrap(), 2);
        let counts = |outbox: &Outbox| {
            let mut counted = outbox.pending_counts();
            counted.retain(|(_, n)| *n > 0);
            counted
        };
        assert_eq!(
            counts(&outbox),
            vec![("kafka:t".to_string(), 1), ("webhook:a".to_string(), 2)]
        );
        outbox.remove("kafka:t", &[3]).unwrap();
        assert_eq!(counts(&outbox), vec![("webhook:a".to_string(), 2)]);
        // The replayed entry joins the end of the list under a new number,
        // so a deliverer that scans after the last entry it took (2) finds it.
        let after = outbox
            .scan(List::Pending, "webhook:a", Some(2), 10)
            .unwrap();
        assert_eq!(
            after,
            vec![Stored {
                seq: 4,
                value: b"1".to_vec()
            }]
        );
        assert_eq!(
            outbox
                .add(&[("webhook:a".into(), b"5".to_vec())], |_| true)
                .unwrap(),
            vec![5]
        );
        outbox.purge("webhook:a").unwrap();
        assert_eq!(outbox.count(List::Pending, "webhook:a").unwrap(), 0);
        assert_eq!(counts(&outbox), vec![]);
    }
}
