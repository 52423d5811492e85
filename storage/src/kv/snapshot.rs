//! Snapshot export and import of the state machine column families.
//!
//! Format: magic, then records `cf index (u8) | key len (u32 BE) | key |
//! value len (u32 BE) | value`. The export reads one RocksDB snapshot, so it
//! is consistent with the applied position it contains.

use rocksdb::{IteratorMode, WriteBatch};

use super::{META_LAST_APPLIED, META_MEMBERSHIP, META_REVISION};
use crate::db::{Store, CF_SM_META, STATE_MACHINE_CFS};
use crate::error::StorageError;

/// A serialized state machine with the Raft position it reflects.
pub struct Export {
    pub data: Vec<u8>,
    pub last_applied: Option<Vec<u8>>,
    pub membership: Option<Vec<u8>>,
}

const MAGIC: &[u8; 8] = b"SHOALSM1";

impl Store {
    /// Serialize the whole state machine. Also returns the encoded applied
    /// log id and membership read from the same consistent view.
    pub fn sm_export(&self) -> Result<Export, StorageError> {
        let snap = self.db.snapshot();
        let meta = self.cf(CF_SM_META)?;
        let last_applied = snap.get_cf(meta, META_LAST_APPLIED)?;
        let membership = snap.get_cf(meta, META_MEMBERSHIP)?;
        let mut out = MAGIC.to_vec();
        for (index, name) in STATE_MACHINE_CFS.iter().enumerate() {
            for item in snap.iterator_cf(self.cf(name)?, IteratorMode::Start) {
                let (key, value) = item?;
                out.push(index as u8);
                for part in [&key[..], &value[..]] {
                    out.extend_from_slice(&(part.len() as u32).to_be_bytes());
                    out.extend_from_slice(part);
                }
            }
        }
        Ok(Export {
            data: out,
            last_applied,
            membership,
        })
    }

    /// Replace the whole state machine with an export, atomically and durably.
    pub fn sm_import(&self, data: &[u8]) -> Result<(), StorageError> {
        let corrupt = |detail: &str| StorageError::Corrupt {
            cf: "snapshot",
            detail: detail.into(),
        };
        let body = data
            .strip_prefix(MAGIC.as_slice())
            .ok_or_else(|| corrupt("bad magic"))?;
        let mut batch = WriteBatch::default();
        for name in STATE_MACHINE_CFS {
            let cf = self.cf(name)?;
            for item in self.db.iterator_cf(cf, IteratorMode::Start) {
                batch.delete_cf(cf, item?.0);
            }
        }
        let mut rest = body;
        while let Some((&index, tail)) = rest.split_first() {
            let name = STATE_MACHINE_CFS
                .get(index as usize)
                .ok_or_else(|| corrupt("bad column family"))?;
            let (key, tail) = take_part(tail).ok_or_else(|| corrupt("truncated key"))?;
            let (value, tail) = take_part(tail).ok_or_else(|| corrupt("truncated value"))?;
            batch.put_cf(self.cf(name)?, key, value);
            rest = tail;
        }
        // The applier's cache describes the state being replaced.
        let mut cache = self.lock_applied_kv();
        cache.clear();
        self.write(batch, true)?;
        self.load_applied_proposals()
    }

    /// A digest of the whole replicated state (every record of every state
    /// machine column family, the applied position included), read from one
    /// consistent view: replicas that applied the same log have the same
    /// digest. Returns it with the revision and the number of records.
    pub fn sm_digest(&self) -> Result<Digest, StorageError> {
        let snap = self.db.snapshot();
        let meta = self.cf(CF_SM_META)?;
        let last_applied = snap.get_cf(meta, META_LAST_APPLIED)?;
        let revision = match snap.get_cf(meta, META_REVISION)? {
            Some(bytes) => crate::db::key_u64(&bytes, CF_SM_META)?,
            None => 0,
        };
        let mut hasher = blake3::Hasher::new();
        let mut records = 0u64;
        for (index, name) in STATE_MACHINE_CFS.iter().enumerate() {
            for item in snap.iterator_cf(self.cf(name)?, IteratorMode::Start) {
                let (key, value) = item?;
                hasher.update(&[index as u8]);
                for part in [&key[..], &value[..]] {
                    hasher.update(&(part.len() as u32).to_be_bytes());
                    hasher.update(part);
                }
                records += 1;
            }
        }
        Ok(Digest {
            hash: *hasher.finalize().as_bytes(),
            revision,
            records,
            last_applied,
        })
    }
}

/// See [`Store::sm_digest`].
pub struct Digest {
    pub hash: [u8; 32],
    pub revision: u64,
    pub records: u64,
    /// The encoded log id of the last applied entry, if any.
    pub last_applied: Option<Vec<u8>>,
}

impl Digest {
    /// The hash in lower-case hex.
    pub fn hex(&self) -> String {
        blake3::Hash::from(self.hash).to_hex().to_string()
    }
}

fn take_part(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let len_bytes: [u8; 4] = data.get(..4)?.try_into().ok()?;
    let len = u32::from_be_bytes(len_bytes) as usize;
    let part = data.get(4..4 + len)?;
    Some((part, &data[4 + len..]))
}
