//! Deterministic application of commands. A run of committed Raft entries
//! is applied as one atomic RocksDB write, together with the applied Raft
//! position, without fsync: committed entries are on a quorum's disks, and
//! the shared WAL recovers writes in order. After a crash the state may be
//! behind the node's own log (the entries since are applied again) or, on a
//! leader, whose own log write runs beside replication, ahead of it (openraft
//! then purges the log up to what was applied, see `vendor/openraft/SHOAL.md`).
//! A run that holds a command reading beyond the overlays is written in
//! parts (see [`SmBatch`]); after a crash between parts the entries since the
//! recorded position are applied again, and every proposal already applied
//! is recognised by its id and answered as the first time. One write per run rather than per command: at
//! many concurrent clients an entry carries dozens of proposals, and a
//! RocksDB write and three point reads per proposal were a third of the
//! cluster's CPU.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::MutexGuard;

use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch};

use super::cache::KvCache;
use super::read::StoredBatch;
use super::{
    key_rev, lease_key, prefix_end, ChangeBatch, Command, Compare, CompareOp, CompareTarget, Event,
    EventType, KeyValue, Lease, OpResult, Proposal, Rejection, Response, Txn, TxnOp,
    META_APPLIED_PROPOSALS, META_COMPACT_REVISION, META_LAST_APPLIED, META_MEMBERSHIP,
    META_NEXT_LEASE_ID, META_REVISION, PROPOSAL_ID_PRUNE_STEP, PROPOSAL_ID_WINDOW,
};
use crate::db::{
    u64_key, Store, CF_EVENTS, CF_KEY_REVS, CF_KV, CF_LEASES, CF_LEASE_KEYS, CF_REQUESTS,
    CF_REQUEST_LOG, CF_SM_META,
};

use crate::error::StorageError;
use shoal_codec::{decode, decode_borrowed, encode};

/// The Raft position an apply records: the last entry's encoded log id, and
/// the encoded membership if the run changed it.
#[derive(Clone, Copy)]
pub struct Position<'a> {
    pub log_id: &'a [u8],
    pub membership: Option<&'a [u8]>,
}

/// Commands applied together and written at once by [`SmBatch::commit`].
/// Later commands see the effects of earlier ones: key/value pairs and
/// leases through the overlays here; a command that reads anything else
/// (history, the lease and compaction counters, key ranges) first writes
/// what is pending, so its reads of RocksDB are current.
pub struct SmBatch<'a> {
    store: &'a Store,
    batch: WriteBatch,
    kv: HashMap<String, Option<KeyValue>>,
    /// Pairs written by earlier runs (held for the whole run: the applier
    /// is its only user).
    cache: MutexGuard<'a, KvCache>,
    leases: HashMap<u64, Option<Lease>>,
    /// Outcomes of the proposals applied in this batch, by id.
    answered: HashMap<[u8; 16], Response>,
    /// The current revision, counting the pending changes.
    revision: u64,
    /// Change batches made, in order, for the watchers once written.
    changes: Vec<ChangeBatch>,
    /// Distinct proposals applied, counting the pending ones.
    applied_proposals: u64,
}

impl Store {
    /// Start applying commands; nothing is written before [`SmBatch::commit`].
    pub fn sm_batch(&self) -> Result<SmBatch<'_>, StorageError> {
        Ok(SmBatch {
            store: self,
            batch: WriteBatch::default(),
            kv: HashMap::new(),
            cache: self.lock_applied_kv(),
            leases: HashMap::new(),
            answered: HashMap::new(),
            revision: self.meta_u64(META_REVISION)?,
            changes: Vec::new(),
            applied_proposals: self.meta_u64(META_APPLIED_PROPOSALS)?,
        })
    }
}

impl SmBatch<'_> {
    /// Apply one proposal and return its answer. A proposal whose id was
    /// already applied (a client's retry, or an entry applied again after a
    /// crash) changes nothing and answers with the first outcome.
    pub fn apply(&mut self, proposal: &Proposal) -> Result<Response, StorageError> {
        // First the window, then the ids: an id may or may not be pruned yet
        // once the window has passed it, so only this order decides the same
        // way on every replica.
        if proposal.issued_at.saturating_add(PROPOSAL_ID_WINDOW) < self.applied_proposals {
            return Ok(Response::Rejected(Rejection::ProposalExpired));
        }
        if let Some(first) = self.answered.get(&proposal.id) {
            return Ok(first.clone());
        }
        if let Some(first) = self
            .store
            .db
            .get_cf(self.store.cf(CF_REQUESTS)?, proposal.id)?
        {
            return Ok(decode(&first)?);
        }
        let reads_only_overlays = only_keys_and_leases(&proposal.command);
        if !reads_only_overlays {
            self.write_pending()?;
        }
        let mut tx = ApplyTx {
            store: self.store,
            committed_kv: &self.kv,
            cache: &self.cache,
            committed_leases: &self.leases,
            ops: Vec::new(),
            kv: HashMap::new(),
            leases: HashMap::new(),
            events: Vec::new(),
            revision: self.revision + 1,
        };
        let response = tx.run(&proposal.command)?;
        let ApplyTx {
            ops,
            kv,
            leases,
            events,
            ..
        } = tx;
        for op in ops {
            op.add_to(self.store, &mut self.batch)?;
        }
        self.kv.extend(kv);
        self.leases.extend(leases);
        if !events.is_empty() {
            self.revision += 1;
            let changes = ChangeBatch {
                revision: self.revision,
                events,
            };
            self.batch.put_cf(
                self.store.cf(CF_EVENTS)?,
                u64_key(changes.revision),
                encode(&changes)?,
            );
            self.changes.push(changes);
        }
        self.remember(proposal, &response)?;
        if !reads_only_overlays {
            self.write_pending()?;
        }
        Ok(response)
    }

    /// Record the Raft position reached (written with the commands).
    pub fn set_position(&mut self, position: Position<'_>) -> Result<(), StorageError> {
        let meta = self.store.cf(CF_SM_META)?;
        self.batch.put_cf(meta, META_LAST_APPLIED, position.log_id);
        if let Some(membership) = position.membership {
            self.batch.put_cf(meta, META_MEMBERSHIP, membership);
        }
        Ok(())
    }

    /// Write everything applied; returns the change batches made, in order.
    pub fn commit(mut self) -> Result<Vec<ChangeBatch>, StorageError> {
        self.write_pending()?;
        Ok(self.changes)
    }

    /// Record the proposal's outcome under its id (answered again if the
    /// proposal is retried), numbered in the order applied; every
    /// [`PROPOSAL_ID_PRUNE_STEP`] proposals, forget the ids that left the
    /// window.
    fn remember(&mut self, proposal: &Proposal, response: &Response) -> Result<(), StorageError> {
        let seq = self.applied_proposals;
        self.batch
            .put_cf(self.store.cf(CF_REQUESTS)?, proposal.id, encode(response)?);
        self.batch
            .put_cf(self.store.cf(CF_REQUEST_LOG)?, u64_key(seq), proposal.id);
        self.answered.insert(proposal.id, response.clone());
        self.applied_proposals += 1;
        if self
            .applied_proposals
            .is_multiple_of(PROPOSAL_ID_PRUNE_STEP)
        {
            self.prune_ids()?;
        }
        Ok(())
    }

    /// Delete the ids numbered below the window. What is deleted depends on
    /// the count alone, so every replica holds the same ids.
    fn prune_ids(&mut self) -> Result<(), StorageError> {
        let Some(below) = self.applied_proposals.checked_sub(PROPOSAL_ID_WINDOW) else {
            return Ok(());
        };
        // RocksDB must hold every id numbered below `below` first.
        self.write_pending()?;
        let (requests, log) = (self.store.cf(CF_REQUESTS)?, self.store.cf(CF_REQUEST_LOG)?);
        let mut opts = ReadOptions::default();
        // Everything below the previous step's bound is gone already; not
        // walking over its deletions keeps each step's work to one step.
        opts.set_iterate_lower_bound(u64_key(below.saturating_sub(PROPOSAL_ID_PRUNE_STEP)));
        opts.set_iterate_upper_bound(u64_key(below));
        for item in self
            .store
            .db
            .iterator_cf_opt(log, opts, IteratorMode::Start)
        {
            let (seq, id) = item?;
            self.batch.delete_cf(requests, &id);
            self.batch.delete_cf(log, &seq);
        }
        Ok(())
    }

    /// Write what is pending (with the new revision), so that RocksDB
    /// reads see it.
    fn write_pending(&mut self) -> Result<(), StorageError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let meta = self.store.cf(CF_SM_META)?;
        self.batch
            .put_cf(meta, META_REVISION, self.revision.to_be_bytes());
        self.batch.put_cf(
            meta,
            META_APPLIED_PROPOSALS,
            self.applied_proposals.to_be_bytes(),
        );
        if let Err(e) = self.store.write(std::mem::take(&mut self.batch), false) {
            self.cache.clear();
            return Err(e);
        }
        self.store
            .applied_proposals
            .store(self.applied_proposals, Ordering::Relaxed);
        for (key, kv) in self.kv.drain() {
            self.cache.insert(key, kv);
        }
        self.leases.clear();
        Ok(())
    }
}

/// Whether a command reads nothing but key/value pairs and leases by key
/// (which the batch's overlays answer): plain puts, gets, single deletes and
/// comparisons, the commands of nearly every write.
fn only_keys_and_leases(command: &Command) -> bool {
    match command {
        Command::Txn(txn) => txn
            .success
            .iter()
            .chain(&txn.failure)
            .all(|op| !matches!(op, TxnOp::Delete { prefix: true, .. })),
        Command::LeaseKeepAlive { .. } => true,
        _ => false,
    }
}

/// One write of a command, added to the batch once the command succeeds.
enum Op {
    Put(&'static str, Vec<u8>, Vec<u8>),
    Delete(&'static str, Vec<u8>),
    DeleteRange(&'static str, Vec<u8>, Vec<u8>),
}

impl Op {
    fn add_to(self, store: &Store, batch: &mut WriteBatch) -> Result<(), StorageError> {
        match self {
            Op::Put(cf, key, value) => batch.put_cf(store.cf(cf)?, key, value),
            Op::Delete(cf, key) => batch.delete_cf(store.cf(cf)?, key),
            Op::DeleteRange(cf, from, to) => batch.delete_range_cf(store.cf(cf)?, from, to),
        }
        Ok(())
    }
}

/// One command's pending writes, with an overlay so later operations in a
/// transaction see the effects of earlier ones (and, below it, the batch's
/// overlay of the commands before).
struct ApplyTx<'a> {
    store: &'a Store,
    committed_kv: &'a HashMap<String, Option<KeyValue>>,
    cache: &'a KvCache,
    committed_leases: &'a HashMap<u64, Option<Lease>>,
    ops: Vec<Op>,
    kv: HashMap<String, Option<KeyValue>>,
    leases: HashMap<u64, Option<Lease>>,
    events: Vec<Event>,
    /// Revision the pending changes will get (current + 1).
    revision: u64,
}

impl ApplyTx<'_> {
    fn current_revision(&self) -> u64 {
        if self.events.is_empty() {
            self.revision - 1
        } else {
            self.revision
        }
    }

    fn run(&mut self, command: &Command) -> Result<Response, StorageError> {
        match command {
            Command::Txn(txn) => self.txn(txn),
            Command::LeaseGrant { ttl_seconds } => self.lease_grant(*ttl_seconds),
            Command::LeaseKeepAlive { id } => match self.lease(*id)? {
                None => Ok(self.reject(Rejection::LeaseNotFound(*id))),
                Some(mut lease) => {
                    lease.renewals += 1;
                    self.put_lease(&lease)?;
                    Ok(Response::Lease(lease))
                }
            },
            Command::LeaseRevoke { id } => match self.lease(*id)? {
                None => Ok(self.reject(Rejection::LeaseNotFound(*id))),
                Some(_) => {
                    let deleted = self.revoke(*id)?;
                    Ok(Response::Revoked {
                        revision: self.current_revision(),
                        deleted,
                    })
                }
            },
            Command::LeaseExpire { leases } => {
                let mut deleted = 0;
                for (id, renewals) in leases {
                    if self
                        .lease(*id)?
                        .is_some_and(|lease| lease.renewals == *renewals)
                    {
                        deleted += self.revoke(*id)?;
                    }
                }
                Ok(Response::Revoked {
                    revision: self.current_revision(),
                    deleted,
                })
            }
            Command::Rollback { key, revision } => self.rollback(key, *revision),
            Command::Compact { revision } => self.compact(*revision),
        }
    }

    /// Drop everything pending and answer with a rejection.
    fn reject(&mut self, rejection: Rejection) -> Response {
        self.ops.clear();
        self.kv.clear();
        self.leases.clear();
        self.events.clear();
        Response::Rejected(rejection)
    }

    fn txn(&mut self, txn: &Txn) -> Result<Response, StorageError> {
        let mut succeeded = true;
        for compare in &txn.compare {
            if !self.compare_holds(compare)? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            let result = match op {
                TxnOp::Put { key, value, lease } => {
                    if *lease != 0 && self.lease(*lease)?.is_none() {
                        return Ok(self.reject(Rejection::LeaseNotFound(*lease)));
                    }
                    let (kv, prev) = self.put(key, value.clone(), *lease)?;
                    OpResult::Put {
                        kv: kv.without_value(),
                        prev: prev.map(|p| p.without_value()),
                    }
                }
                TxnOp::Delete { key, prefix: false } => OpResult::Delete {
                    deleted: u64::from(self.delete(key)?),
                },
                TxnOp::Delete { key, prefix: true } => {
                    let mut deleted = 0;
                    for key in self.keys_with_prefix(key)? {
                        deleted += u64::from(self.delete(&key)?);
                    }
                    OpResult::Delete { deleted }
                }
                TxnOp::Get { key } => OpResult::Get { kv: self.get(key)? },
            };
            results.push(result);
        }
        Ok(Response::Txn {
            succeeded,
            revision: self.current_revision(),
            results,
        })
    }

    fn compare_holds(&self, compare: &Compare) -> Result<bool, StorageError> {
        let kv = self.get(&compare.key)?;
        let number = |f: fn(&KeyValue) -> u64| kv.as_ref().map(f).unwrap_or(0);
        let ordering = match &compare.target {
            CompareTarget::ModRevision(want) => number(|kv| kv.mod_revision).cmp(want),
            CompareTarget::CreateRevision(want) => number(|kv| kv.create_revision).cmp(want),
            CompareTarget::Version(want) => number(|kv| kv.version).cmp(want),
            CompareTarget::Value(want) => {
                let have: &[u8] = kv.as_ref().map(|kv| kv.value.as_slice()).unwrap_or(&[]);
                have.cmp(want.as_slice())
            }
        };
        Ok(match compare.op {
            CompareOp::Equal => ordering.is_eq(),
            CompareOp::NotEqual => ordering.is_ne(),
            CompareOp::Less => ordering.is_lt(),
            CompareOp::Greater => ordering.is_gt(),
        })
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>, StorageError> {
        if let Some(known) = self
            .kv
            .get(key)
            .or_else(|| self.committed_kv.get(key))
            .or_else(|| self.cache.get(key))
        {
            return Ok(known.clone());
        }
        match self.store.db.get_cf(self.store.cf(CF_KV)?, key)? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    fn put(
        &mut self,
        key: &str,
        value: Vec<u8>,
        lease: u64,
    ) -> Result<(KeyValue, Option<KeyValue>), StorageError> {
        let prev = self.get(key)?;
        let (create_revision, version) = match &prev {
            Some(p) => (p.create_revision, p.version + 1),
            None => (self.revision, 1),
        };
        let kv = KeyValue {
            key: key.to_string(),
            value,
            create_revision,
            mod_revision: self.revision,
            version,
            lease,
        };
        if let Some(p) = &prev {
            if p.lease != 0 && p.lease != lease {
                self.ops
                    .push(Op::Delete(CF_LEASE_KEYS, lease_key(p.lease, key)));
            }
        }
        if lease != 0 {
            self.ops
                .push(Op::Put(CF_LEASE_KEYS, lease_key(lease, key), Vec::new()));
        }
        self.ops
            .push(Op::Put(CF_KV, key.as_bytes().to_vec(), encode(&kv)?));
        self.ops.push(Op::Put(
            CF_KEY_REVS,
            key_rev(key, self.revision),
            Vec::new(),
        ));
        self.kv.insert(key.to_string(), Some(kv.clone()));
        self.events.push(Event {
            kind: EventType::Put,
            kv: kv.clone(),
        });
        Ok((kv, prev))
    }

    /// Delete one key; false if it did not exist.
    fn delete(&mut self, key: &str) -> Result<bool, StorageError> {
        let Some(prev) = self.get(key)? else {
            return Ok(false);
        };
        if prev.lease != 0 {
            self.ops
                .push(Op::Delete(CF_LEASE_KEYS, lease_key(prev.lease, key)));
        }
        self.ops.push(Op::Delete(CF_KV, key.as_bytes().to_vec()));
        self.ops.push(Op::Put(
            CF_KEY_REVS,
            key_rev(key, self.revision),
            Vec::new(),
        ));
        self.kv.insert(key.to_string(), None);
        let tombstone = KeyValue {
            key: key.to_string(),
            value: Vec::new(),
            create_revision: prev.create_revision,
            mod_revision: self.revision,
            version: 0,
            lease: 0,
        };
        self.events.push(Event {
            kind: EventType::Delete,
            kv: tombstone,
        });
        Ok(true)
    }

    /// Keys that currently exist (stored or pending) and start with `prefix`.
    fn keys_with_prefix(&self, prefix: &str) -> Result<BTreeSet<String>, StorageError> {
        let mut keys = BTreeSet::new();
        let mut opts = ReadOptions::default();
        if let Some(end) = prefix_end(prefix.as_bytes()) {
            opts.set_iterate_upper_bound(end);
        }
        let mode = IteratorMode::From(prefix.as_bytes(), Direction::Forward);
        for item in self
            .store
            .db
            .iterator_cf_opt(self.store.cf(CF_KV)?, opts, mode)
        {
            let (key, _) = item?;
            keys.insert(String::from_utf8_lossy(&key).into_owned());
        }
        for (key, pending) in &self.kv {
            if key.starts_with(prefix) {
                match pending {
                    Some(_) => keys.insert(key.clone()),
                    None => keys.remove(key),
                };
            }
        }
        Ok(keys)
    }

    fn lease(&self, id: u64) -> Result<Option<Lease>, StorageError> {
        if let Some(pending) = self
            .leases
            .get(&id)
            .or_else(|| self.committed_leases.get(&id))
        {
            return Ok(pending.clone());
        }
        match self
            .store
            .db
            .get_cf(self.store.cf(CF_LEASES)?, u64_key(id))?
        {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    fn put_lease(&mut self, lease: &Lease) -> Result<(), StorageError> {
        self.ops.push(Op::Put(
            CF_LEASES,
            u64_key(lease.id).to_vec(),
            encode(lease)?,
        ));
        self.leases.insert(lease.id, Some(lease.clone()));
        Ok(())
    }

    fn lease_grant(&mut self, ttl_seconds: u64) -> Result<Response, StorageError> {
        let id = self.store.meta_u64(META_NEXT_LEASE_ID)?.max(1);
        self.ops.push(Op::Put(
            CF_SM_META,
            META_NEXT_LEASE_ID.as_bytes().to_vec(),
            (id + 1).to_be_bytes().to_vec(),
        ));
        let lease = Lease {
            id,
            ttl_seconds,
            renewals: 0,
        };
        self.put_lease(&lease)?;
        Ok(Response::Lease(lease))
    }

    /// Remove a lease and delete its keys; returns how many keys were deleted.
    fn revoke(&mut self, id: u64) -> Result<u64, StorageError> {
        let lease_keys = self.store.cf(CF_LEASE_KEYS)?;
        let mut attached = Vec::new();
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(u64_key(id + 1));
        let mode = IteratorMode::From(&u64_key(id), Direction::Forward);
        for item in self.store.db.iterator_cf_opt(lease_keys, opts, mode) {
            let (raw, _) = item?;
            attached.push(String::from_utf8_lossy(&raw[8..]).into_owned());
        }
        let mut deleted = 0;
        for key in attached {
            // Only keys still on this lease: a pending put may have moved one.
            if self.get(&key)?.is_some_and(|kv| kv.lease == id) && self.delete(&key)? {
                deleted += 1;
            }
        }
        self.ops.push(Op::Delete(CF_LEASES, u64_key(id).to_vec()));
        self.leases.insert(id, None);
        Ok(deleted)
    }

    fn rollback(&mut self, key: &str, revision: u64) -> Result<Response, StorageError> {
        let current = self.revision - 1;
        if revision > current {
            return Ok(self.reject(Rejection::FutureRevision { revision, current }));
        }
        let compact_revision = self.store.meta_u64(META_COMPACT_REVISION)?;
        if revision < compact_revision {
            return Ok(self.reject(Rejection::Compacted { compact_revision }));
        }
        let revs = self.store.key_revisions(key)?;
        if revs.is_empty() && self.get(key)?.is_none() {
            return Ok(self.reject(Rejection::KeyNotFound));
        }
        let Some(then) = self.value_at(key, &revs, revision)? else {
            return Ok(self.reject(Rejection::Compacted { compact_revision }));
        };
        let kv = match then {
            Some(value) => Some(self.put(key, value, 0)?.0.without_value()),
            None => {
                self.delete(key)?;
                None
            }
        };
        Ok(Response::Rollback {
            revision: self.current_revision(),
            kv,
        })
    }

    /// The value of `key` as of `revision`, given the key's retained
    /// revisions `revs`: Some(Some(v)) if it existed, Some(None) if it did
    /// not, None if compaction has erased the answer.
    fn value_at(
        &self,
        key: &str,
        revs: &[u64],
        revision: u64,
    ) -> Result<Option<Option<Vec<u8>>>, StorageError> {
        if let Some(at) = revs.iter().rev().find(|r| **r <= revision) {
            return Ok(self
                .store
                .event_at(key, *at)?
                .map(|event| match event.kind {
                    EventType::Put => Some(event.kv.value),
                    EventType::Delete => None,
                }));
        }
        // No retained change at or before `revision`: decide from what follows.
        match revs.first() {
            None => Ok(Some(self.get(key)?.map(|kv| kv.value))),
            Some(next) => match self.store.event_at(key, *next)? {
                Some(Event {
                    kind: EventType::Put,
                    kv,
                }) if kv.version == 1 => Ok(Some(None)),
                _ => Ok(None),
            },
        }
    }

    fn compact(&mut self, revision: u64) -> Result<Response, StorageError> {
        let current = self.revision - 1;
        if revision > current + 1 {
            return Ok(self.reject(Rejection::FutureRevision { revision, current }));
        }
        let old = self.store.meta_u64(META_COMPACT_REVISION)?;
        if revision <= old {
            return Ok(Response::Compacted {
                compact_revision: old,
            });
        }
        let events = self.store.cf(CF_EVENTS)?;
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(u64_key(revision));
        let mode = IteratorMode::From(&u64_key(old), Direction::Forward);
        for item in self.store.db.iterator_cf_opt(events, opts, mode) {
            let (_, value) = item?;
            let batch: StoredBatch<'_> = decode_borrowed(&value)?;
            for event in &batch.events {
                self.ops.push(Op::Delete(
                    CF_KEY_REVS,
                    key_rev(event.kv.key, batch.revision),
                ));
            }
        }
        self.ops.push(Op::DeleteRange(
            CF_EVENTS,
            u64_key(0).to_vec(),
            u64_key(revision).to_vec(),
        ));
        self.ops.push(Op::Put(
            CF_SM_META,
            META_COMPACT_REVISION.as_bytes().to_vec(),
            revision.to_be_bytes().to_vec(),
        ));
        Ok(Response::Compacted {
            compact_revision: revision,
        })
    }
}

impl Store {
    /// How many distinct proposals this replica has applied: a new proposal
    /// carries it as `issued_at`.
    pub fn applied_proposals(&self) -> u64 {
        self.applied_proposals.load(Ordering::Relaxed)
    }

    /// Read the count from the state (at open, and after a snapshot replaced it).
    pub(crate) fn load_applied_proposals(&self) -> Result<(), StorageError> {
        self.applied_proposals
            .store(self.meta_u64(META_APPLIED_PROPOSALS)?, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn meta_u64(&self, name: &str) -> Result<u64, StorageError> {
        match self.db.get_cf(self.cf(CF_SM_META)?, name)? {
            None => Ok(0),
            Some(bytes) => crate::db::key_u64(&bytes, CF_SM_META),
        }
    }
}
