//! Files and directories that survive a power cut. An fsync of a file
//! makes its bytes durable, not its name: a file created or renamed, or a
//! directory created, is durable once the directory holding its entry is
//! synced too. Every file Shoal writes outside RocksDB goes through here,
//! so that nothing relies on a name the disk may not have.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Make a directory's entries durable (names created, renamed or removed
/// in it).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `std::fs::create_dir_all`, with the entry of each directory it created
/// synced in its parent.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.is_dir() {
        missing.push(at);
        match at.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => at = parent,
            _ => break,
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    for created in missing.iter().rev() {
        let parent = match created.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        sync_dir(parent)?;
    }
    Ok(())
}

/// Replace `path` with `bytes` all at once: written to a temporary file
/// beside it (a name no other caller uses at the same time), synced,
/// renamed over it, and the directory synced. A power cut leaves the old
/// file or the new one, never a part, and the new one once this returns.
pub fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temporary = temporary_beside(path)?;
    let written = (|| {
        let mut file = File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written?;
    sync_dir(parent_of(path))
}

/// Rename `from` to `to` (in the same directory or not), both
/// directories synced after.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)?;
    sync_dir(parent_of(to))?;
    if parent_of(from) != parent_of(to) {
        sync_dir(parent_of(from))?;
    }
    Ok(())
}

/// The prefix of the temporary files [`replace_file`] writes: a file whose
/// name starts with it is a leftover of a write a crash cut short.
pub const TEMPORARY_PREFIX: &str = ".tmp-";

fn temporary_beside(path: &Path) -> io::Result<std::path::PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "a file path has no name"))?;
    let unique = format!(
        "{TEMPORARY_PREFIX}{}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        name.to_string_lossy()
    );
    Ok(parent_of(path).join(unique))
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_are_created_whole_and_files_replaced_whole() {
        let root = tempfile::tempdir().expect("tempdir");
        let deep = root.path().join("a").join("b").join("c");
        create_dir_all(&deep).expect("create");
        assert!(deep.is_dir());
        create_dir_all(&deep).expect("an existing directory is fine");
        let file = deep.join("state");
        replace_file(&file, b"one").expect("write");
        replace_file(&file, b"two").expect("replace");
        assert_eq!(std::fs::read(&file).expect("read"), b"two");
        let left: Vec<_> = std::fs::read_dir(&deep)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(
            left,
            vec![std::ffi::OsString::from("state")],
            "no temporary file is left"
        );
        let moved = root.path().join("a").join("moved");
        rename(&file, &moved).expect("rename");
        assert_eq!(std::fs::read(&moved).expect("read"), b"two");
    }

    #[test]
    fn concurrent_replacements_of_one_file_do_not_share_a_temporary_file() {
        let root = tempfile::tempdir().expect("tempdir");
        let file = root.path().join("report.csv");
        std::thread::scope(|scope| {
            for n in 0..8u8 {
                let file = &file;
                scope.spawn(move || {
                    let bytes = vec![n; 1 << 16];
                    replace_file(file, &bytes).expect("replace");
                });
            }
        });
        let bytes = std::fs::read(&file).expect("read");
        assert_eq!(bytes.len(), 1 << 16);
        assert!(
            bytes.iter().all(|b| *b == bytes[0]),
            "the file mixes two writes"
        );
    }
}
