//! Snapshot export and import of the state machine column families.
//!
//! Format: magic, then records `cf index (u8) | key len (u32 BE) | key |
//! value len (u32 BE) | value`. The export reads one RocksDB snapshot, so it
//! is consistent with the applied position it contains. Both directions
//! stream: the state can be larger than memory. An import replaces the
//! state in write batches of bounded size, so it is not atomic on disk:
//! check the data first ([`Store::sm_check_export`]), and after a crash part
//! way through, import the same data again (the Raft layer keeps a marker
//! for that). Readers are held off while it runs ([`Store::view`]).

use std::io::{Read, Write};

use rocksdb::{IteratorMode, SnapshotWithThreadMode, WriteBatch, DB};

use super::{META_LAST_APPLIED, META_MEMBERSHIP, META_REVISION};
use crate::db::{Store, CF_SM_META, STATE_MACHINE_CFS};
use crate::error::StorageError;

/// The Raft position an export reflects, read from the same consistent view.
pub struct ExportPosition {
    /// The encoded log id of the last applied entry, if any.
    pub last_applied: Option<Vec<u8>>,
    /// The encoded membership, if any.
    pub membership: Option<Vec<u8>>,
}

const MAGIC: &[u8; 8] = b"SHOALSM1";

/// How many bytes of records an import writes per RocksDB write batch.
const IMPORT_BATCH_BYTES: usize = 16 << 20;

fn write_error(e: std::io::Error) -> StorageError {
    StorageError::Io(format!("writing a snapshot: {e}"))
}

impl Store {
    /// Write the whole state machine to `out`, record by record. Returns the
    /// applied log id and membership of the same consistent view.
    pub fn sm_export(&self, out: &mut impl Write) -> Result<ExportPosition, StorageError> {
        let snap = self.view();
        let meta = self.cf(CF_SM_META)?;
        let position = ExportPosition {
            last_applied: snap.get_cf(meta, META_LAST_APPLIED)?,
            membership: snap.get_cf(meta, META_MEMBERSHIP)?,
        };
        out.write_all(MAGIC).map_err(write_error)?;
        self.visit_records(&snap, |index, key, value| {
            out.write_all(&[index]).map_err(write_error)?;
            for part in [key, value] {
                out.write_all(&(part.len() as u32).to_be_bytes())
                    .map_err(write_error)?;
                out.write_all(part).map_err(write_error)?;
            }
            Ok(())
        })?;
        Ok(position)
    }

    /// Every record of every state machine column family in `snap`, in
    /// export order, with its column family's index.
    fn visit_records(
        &self,
        snap: &SnapshotWithThreadMode<'_, DB>,
        mut visit: impl FnMut(u8, &[u8], &[u8]) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        for (index, name) in STATE_MACHINE_CFS.iter().enumerate() {
            for item in snap.iterator_cf(self.cf(name)?, IteratorMode::Start) {
                let (key, value) = item?;
                visit(index as u8, &key, &value)?;
            }
        }
        Ok(())
    }

    /// Check that `data` is a whole export: the magic, every record
    /// complete, only known column families. Writes nothing.
    pub fn sm_check_export(&self, data: impl Read) -> Result<(), StorageError> {
        read_records(data, |_, _, _| Ok(()))
    }

    /// Replace the whole state machine with an export read from `data`, in
    /// write batches of bounded size, the last one fsynced. Readers wait
    /// meanwhile. Not atomic on disk: a failure or a crash part way leaves
    /// part of the old state and part of the new, which only importing the
    /// whole export again repairs. Check the data first.
    pub fn sm_import(&self, data: impl Read) -> Result<(), StorageError> {
        self.sm_import_in_batches(data, IMPORT_BATCH_BYTES)
    }

    pub(crate) fn sm_import_in_batches(
        &self,
        data: impl Read,
        batch_bytes: usize,
    ) -> Result<(), StorageError> {
        // The applier's cache describes the state being replaced. Locked
        // before the readers' gate: the applier reads with its cache locked.
        let mut cache = self.lock_applied_kv();
        cache.clear();
        // Noted before the gate is asked for, cleared after it is let go:
        // whenever the gate refuses a reader, the note is there.
        let replaced = self.counters()?;
        *self.lock_importing() = Some(replaced);
        let imported = self.replace_state(data, batch_bytes);
        *self.lock_importing() = None;
        imported
    }

    fn replace_state(&self, data: impl Read, batch_bytes: usize) -> Result<(), StorageError> {
        let _readers_wait = self
            .sm_gate
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(delay) = self.import_delay {
            std::thread::sleep(delay);
        }
        let mut batch = WriteBatch::default();
        for name in STATE_MACHINE_CFS {
            let cf = self.cf(name)?;
            let mut last = self.db.raw_iterator_cf(cf);
            last.seek_to_last();
            if let Some(key) = last.key() {
                let end: Vec<u8> = key.iter().copied().chain([0]).collect();
                batch.delete_range_cf(cf, b"".as_slice(), end.as_slice());
            }
            last.status()?;
        }
        read_records(data, |index, key, value| {
            batch.put_cf(self.cf(STATE_MACHINE_CFS[index])?, key, value);
            if batch.size_in_bytes() >= batch_bytes {
                self.write(std::mem::take(&mut batch), false)?;
            }
            Ok(())
        })?;
        self.write(batch, true)?;
        self.load_applied_proposals()
    }

    /// A digest of the whole replicated state (every record of every state
    /// machine column family, the applied position included), read from one
    /// consistent view: replicas that applied the same log have the same
    /// digest. Returns it with the revision and the number of records.
    pub fn sm_digest(&self) -> Result<Digest, StorageError> {
        let snap = self.view();
        let meta = self.cf(CF_SM_META)?;
        let last_applied = snap.get_cf(meta, META_LAST_APPLIED)?;
        let revision = match snap.get_cf(meta, META_REVISION)? {
            Some(bytes) => crate::db::key_u64(&bytes, CF_SM_META)?,
            None => 0,
        };
        let mut hasher = blake3::Hasher::new();
        let mut records = 0u64;
        self.visit_records(&snap, |index, key, value| {
            hasher.update(&[index]);
            for part in [key, value] {
                hasher.update(&(part.len() as u32).to_be_bytes());
                hasher.update(part);
            }
            records += 1;
            Ok(())
        })?;
        Ok(Digest {
            hash: *hasher.finalize().as_bytes(),
            revision,
            records,
            last_applied,
        })
    }
}

/// See [`Store::sm_digest`].
#[derive(Clone)]
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

fn corrupt(detail: &str) -> StorageError {
    StorageError::Corrupt {
        cf: "snapshot",
        detail: detail.into(),
    }
}

/// Read an export record by record, handing each to `each` with its
/// column family's index (within [`STATE_MACHINE_CFS`]).
fn read_records(
    data: impl Read,
    mut each: impl FnMut(usize, &[u8], &[u8]) -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    let mut data = std::io::BufReader::with_capacity(1 << 20, data);
    let mut magic = [0u8; 8];
    read_exact(&mut data, &mut magic, "truncated magic")?;
    if &magic != MAGIC {
        return Err(corrupt("bad magic"));
    }
    let (mut key, mut value) = (Vec::new(), Vec::new());
    let mut index = [0u8; 1];
    loop {
        match data.read(&mut index) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(StorageError::Io(format!("reading a snapshot: {e}"))),
        }
        let index = usize::from(index[0]);
        if index >= STATE_MACHINE_CFS.len() {
            return Err(corrupt("bad column family"));
        }
        read_part(&mut data, &mut key, "truncated key")?;
        read_part(&mut data, &mut value, "truncated value")?;
        each(index, &key, &value)?;
    }
}

fn read_exact(data: &mut impl Read, buf: &mut [u8], truncated: &str) -> Result<(), StorageError> {
    data.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => corrupt(truncated),
        _ => StorageError::Io(format!("reading a snapshot: {e}")),
    })
}

/// A length-prefixed part, into `part`. Read as far as the data goes, so a
/// damaged length costs no allocation of its size.
fn read_part(
    data: &mut impl Read,
    part: &mut Vec<u8>,
    truncated: &str,
) -> Result<(), StorageError> {
    let mut len = [0u8; 4];
    read_exact(data, &mut len, truncated)?;
    let len = u64::from(u32::from_be_bytes(len));
    part.clear();
    data.take(len)
        .read_to_end(part)
        .map_err(|e| StorageError::Io(format!("reading a snapshot: {e}")))?;
    if part.len() as u64 != len {
        return Err(corrupt(truncated));
    }
    Ok(())
}
