//! The snapshot directory: `current.meta` names the current snapshot's data
//! file with its length and blake3 hash (replaced atomically, by rename);
//! `data-*` are data files, each written once under a name of its own, and
//! every one but the current one is removed once the current one changes.
//! `importing.meta`, present only while a snapshot is imported into the
//! state machine, names the data file being imported: after a crash the
//! import is done again from it. A snapshot's data is written, hashed and
//! read as a stream: it is never held in memory whole.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::SnapshotMeta;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use shoal_codec::{decode, encode};
use shoal_storage::StorageError;

use crate::{NodeAddr, NodeId};

pub(crate) type Meta = SnapshotMeta<NodeId, NodeAddr>;

pub(crate) const CURRENT_FILE: &str = "current.meta";
const IMPORTING_FILE: &str = "importing.meta";
const DATA_PREFIX: &str = "data-";

/// `current.meta`: magic, blake3 of the body, body (the bincode of
/// [`CurrentSnapshot`]). A torn or corrupted file is reported, never loaded.
const CURRENT_MAGIC: &[u8; 8] = b"SHOALSN3";
/// `importing.meta`: the same layout, the body the bincode of a [`DataFile`].
const IMPORTING_MAGIC: &[u8; 8] = b"SHOALIM1";

/// What `current.meta` holds.
#[derive(Serialize, Deserialize)]
struct CurrentSnapshot {
    meta: Meta,
    data: DataFile,
}

/// A data file in the snapshot directory, as written.
#[derive(Serialize, Deserialize)]
pub(crate) struct DataFile {
    name: String,
    len: u64,
    hash: [u8; 32],
}

impl DataFile {
    pub(crate) fn len(&self) -> u64 {
        self.len
    }
}

#[derive(Clone)]
pub(crate) struct SnapshotDir {
    path: PathBuf,
    /// The data file whose bytes this process hashed: it wrote the file, or
    /// checked it when it first loaded it (openraft loads the current
    /// snapshot at start). Serving it checks its length only: hashing the
    /// whole file before every send holds
    /// openraft's replication task to that follower (its heartbeats
    /// included) for as long as reading the file takes.
    hashed: Arc<Mutex<Option<String>>>,
}

impl SnapshotDir {
    /// Create the directory if need be, and remove what a crash left
    /// behind: temporary files, data files neither the current snapshot
    /// nor an interrupted import names, and the single file of the earlier
    /// format.
    pub(crate) fn open(path: PathBuf) -> std::io::Result<SnapshotDir> {
        shoal_durable::create_dir_all(&path)?;
        let dir = SnapshotDir {
            path,
            hashed: Arc::default(),
        };
        for name in dir.file_names() {
            // A meta file being written when the node stopped (its
            // temporary name; `current.tmp-*` from earlier versions).
            if name.contains(shoal_durable::TEMPORARY_PREFIX) || name == "current.snap" {
                let _ = std::fs::remove_file(dir.path.join(name));
            }
        }
        let current = dir.read_current().ok().flatten();
        let importing = dir.read_importing().ok().flatten();
        let keep: Vec<&str> = [current.as_ref().map(|c| &c.data), importing.as_ref()]
            .into_iter()
            .flatten()
            .map(|data| data.name.as_str())
            .collect();
        dir.remove_data_files_but(&keep);
        Ok(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn current_path(&self) -> PathBuf {
        self.path.join(CURRENT_FILE)
    }

    fn importing_path(&self) -> PathBuf {
        self.path.join(IMPORTING_FILE)
    }

    fn read_current(&self) -> Result<Option<CurrentSnapshot>, StorageError> {
        read_file(&self.current_path(), CURRENT_MAGIC)
    }

    fn read_importing(&self) -> Result<Option<DataFile>, StorageError> {
        read_file(&self.importing_path(), IMPORTING_MAGIC)
    }

    fn file_names(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// The current snapshot's meta, from `current.meta` alone (its data
    /// file is not read).
    pub(crate) fn current_meta(&self) -> Result<Option<Meta>, StorageError> {
        Ok(self.read_current()?.map(|current| current.meta))
    }

    /// The current snapshot's meta and its data file (positioned at its
    /// start), after checking the data's length, and its hash unless this
    /// process hashed it before.
    pub(crate) fn open_current(&self) -> Result<Option<(Meta, File)>, StorageError> {
        let Some(current) = self.read_current()? else {
            return Ok(None);
        };
        let hashed = self.lock_hashed().as_deref() == Some(current.data.name.as_str());
        let file = if hashed {
            self.open_with_length(&current.data)?
        } else {
            let file = self.open_checked(&current.data)?;
            *self.lock_hashed() = Some(current.data.name.clone());
            file
        };
        Ok(Some((current.meta, file)))
    }

    fn lock_hashed(&self) -> MutexGuard<'_, Option<String>> {
        self.hashed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A data file, after checking its length against what was written.
    fn open_with_length(&self, data: &DataFile) -> Result<File, StorageError> {
        let path = self.path.join(&data.name);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(corrupt("the data file is missing"))
            }
            Err(e) => return Err(file_error(&path, e)),
        };
        let len = file.metadata().map_err(|e| file_error(&path, e))?.len();
        if len != data.len {
            return Err(corrupt("the data file's length does not match"));
        }
        Ok(file)
    }

    /// A data file, positioned at its start, after checking its length and
    /// hash against what was written.
    fn open_checked(&self, data: &DataFile) -> Result<File, StorageError> {
        let path = self.path.join(&data.name);
        let mut file = self.open_with_length(data)?;
        let mut summed = Summing::new(std::io::sink());
        std::io::copy(&mut file, &mut summed).map_err(|e| file_error(&path, e))?;
        if (summed.len, *summed.hasher.finalize().as_bytes()) != (data.len, data.hash) {
            return Err(corrupt("the data file's length or hash does not match"));
        }
        file.seek(SeekFrom::Start(0))
            .map_err(|e| file_error(&path, e))?;
        Ok(file)
    }

    /// A data file just written by [`SnapshotDir::write_data`], at its start.
    pub(crate) fn open_data(&self, data: &DataFile) -> Result<File, StorageError> {
        let path = self.path.join(&data.name);
        File::open(&path).map_err(|e| file_error(&path, e))
    }

    /// Note durably that `data` is being imported into the state machine.
    pub(crate) fn mark_importing(&self, data: &DataFile) -> Result<(), StorageError> {
        save_file(&self.importing_path(), IMPORTING_MAGIC, data)
    }

    /// The data file of an import a crash interrupted, checked, if any.
    pub(crate) fn interrupted_import(&self) -> Result<Option<File>, StorageError> {
        match self.read_importing()? {
            Some(data) => self.open_checked(&data).map(Some),
            None => Ok(None),
        }
    }

    /// The import is done: remove its note, durably, and its data file
    /// unless it is the current snapshot's.
    pub(crate) fn clear_importing(&self) -> Result<(), StorageError> {
        let path = self.importing_path();
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(file_error(&path, e)),
        }
        shoal_durable::sync_dir(&self.path).map_err(|e| file_error(&self.path, e))?;
        // Unless the current snapshot cannot be read just now: then every
        // data file stays, and the next change of snapshot removes them.
        if let Ok(current) = self.read_current() {
            let keep: Vec<&str> = current.iter().map(|c| c.data.name.as_str()).collect();
            self.remove_data_files_but(&keep);
        }
        Ok(())
    }

    /// Remove the current snapshot (found damaged) and every data file.
    pub(crate) fn remove_current(&self) -> Result<(), StorageError> {
        let path = self.current_path();
        *self.lock_hashed() = None;
        std::fs::remove_file(&path).map_err(|e| file_error(&path, e))?;
        self.remove_data_files_but(&[]);
        Ok(())
    }

    /// Write a new data file through `fill`, and make it durable. Removed
    /// again if anything fails.
    pub(crate) fn write_data<T>(
        &self,
        fill: impl FnOnce(&mut Summing<BufWriter<File>>) -> Result<T, StorageError>,
    ) -> Result<(T, DataFile), StorageError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{DATA_PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = self.path.join(&name);
        let written = (|| {
            let file = File::create(&path).map_err(|e| file_error(&path, e))?;
            let mut out = Summing::new(BufWriter::with_capacity(1 << 20, file));
            let value = fill(&mut out)?;
            let hash = *out.hasher.finalize().as_bytes();
            let file = out
                .inner
                .into_inner()
                .map_err(|e| file_error(&path, e.into_error()))?;
            file.sync_all().map_err(|e| file_error(&path, e))?;
            Ok((
                value,
                DataFile {
                    name: name.clone(),
                    len: out.len,
                    hash,
                },
            ))
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        written
    }

    /// Remove a data file that will not become current.
    pub(crate) fn discard(&self, data: DataFile) {
        let _ = std::fs::remove_file(self.path.join(data.name));
    }

    /// Make `meta` with `data` (written by [`SnapshotDir::write_data`], which
    /// hashed it) the current snapshot, and remove every other data file.
    /// Returns the data file, open at its start.
    pub(crate) fn make_current(
        &self,
        meta: Meta,
        data: DataFile,
    ) -> Result<(Meta, File), StorageError> {
        let file = self.open_data(&data)?;
        let current = CurrentSnapshot { meta, data };
        save_file(&self.current_path(), CURRENT_MAGIC, &current)?;
        *self.lock_hashed() = Some(current.data.name.clone());
        self.remove_data_files_but(&[&current.data.name]);
        Ok((current.meta, file))
    }

    /// An unnamed file in the directory, for a snapshot being received
    /// (gone when closed, so an abandoned transfer leaves nothing behind).
    pub(crate) fn unnamed_file(&self) -> Result<File, StorageError> {
        tempfile::tempfile_in(&self.path).map_err(|e| file_error(&self.path, e))
    }

    /// Remove every data file but those in `keep`. A file still open (being
    /// sent) stays readable until it is closed.
    fn remove_data_files_but(&self, keep: &[&str]) {
        for name in self.file_names() {
            if name.starts_with(DATA_PREFIX) && !keep.contains(&name.as_str()) {
                let _ = std::fs::remove_file(self.path.join(name));
            }
        }
    }
}

/// Passes bytes through to `inner`, keeping their count and blake3 hash.
pub(crate) struct Summing<W> {
    inner: W,
    hasher: blake3::Hasher,
    len: u64,
}

impl<W> Summing<W> {
    fn new(inner: W) -> Summing<W> {
        Summing {
            inner,
            hasher: blake3::Hasher::new(),
            len: 0,
        }
    }
}

impl<W: Write> Write for Summing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Reads from `reader` and writes what it read to `copy`.
pub(crate) struct Tee<'a, R, W> {
    pub(crate) reader: R,
    pub(crate) copy: &'a mut W,
}

impl<R: Read, W: Write> Read for Tee<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.reader.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}

pub(crate) fn file_error(path: &Path, e: std::io::Error) -> StorageError {
    StorageError::Io(format!("snapshot file {}: {e}", path.display()))
}

fn corrupt(detail: &str) -> StorageError {
    StorageError::Corrupt {
        cf: "snapshot file",
        detail: detail.into(),
    }
}

/// Persist a meta file atomically ([`shoal_durable::replace_file`]). Its
/// layout: `magic`, blake3 of the body, the body (the bincode of `value`).
fn save_file(path: &Path, magic: &[u8; 8], value: &impl Serialize) -> Result<(), StorageError> {
    let body = encode(value)?;
    let mut file = Vec::with_capacity(magic.len() + blake3::OUT_LEN + body.len());
    file.extend_from_slice(magic);
    file.extend_from_slice(blake3::hash(&body).as_bytes());
    file.extend_from_slice(&body);
    shoal_durable::replace_file(path, &file).map_err(|e| file_error(path, e))
}

/// What a meta file written by [`save_file`] holds, checked; `None` when
/// there is no such file. A torn or corrupted file is reported.
fn read_file<T: DeserializeOwned>(path: &Path, magic: &[u8; 8]) -> Result<Option<T>, StorageError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(file_error(path, e)),
    };
    let rest = bytes
        .strip_prefix(magic.as_slice())
        .ok_or_else(|| corrupt("bad magic"))?;
    let (sum, body) = rest
        .split_at_checked(32)
        .ok_or_else(|| corrupt("truncated"))?;
    if blake3::hash(body).as_bytes() != sum {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(Some(decode(body)?))
}
