//! Arrow IPC: the frames nodes send each other (a node's part of a
//! query) and the binary and CSV formats of results.

use std::io::Cursor;

use polars::prelude::{
    CsvWriter, DataFrame, IpcCompression, IpcReader, IpcWriter, ParquetCompression, ParquetWriter,
    PolarsError, SerReader, SerWriter,
};
use polars_utils::compression::ZstdLevel;

use crate::query::{Format, QueryError, TableScan, NARROW_IT};

/// Most bytes of one node's part of a table in a query.
pub const MAX_PART_BYTES: usize = 1 << 30;

/// A node's part of a table in a query (the frames [`crate::run::scan`]
/// made): each frame as [`to_ipc`] writes it, after its length in bytes
/// (u64, little-endian). Refused past the scan's `max_part_bytes` (never
/// more than [`MAX_PART_BYTES`]).
pub fn part_to_ipc(frames: &mut [DataFrame], scan: &TableScan) -> Result<Vec<u8>, QueryError> {
    let most = scan.max_part_bytes.min(MAX_PART_BYTES as u64);
    let mut bytes = Vec::new();
    for frame in frames {
        let ipc = to_ipc(frame)?;
        bytes.extend_from_slice(&(ipc.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&ipc);
        if bytes.len() as u64 > most {
            return Err(QueryError::TooBig(format!(
                "this node's part of {} is {} bytes of Arrow IPC, more than {most}; {NARROW_IT}",
                scan.dataset.name,
                bytes.len()
            )));
        }
    }
    Ok(bytes)
}

/// The frames of a part [`part_to_ipc`] wrote.
pub fn part_from_ipc(bytes: &[u8]) -> Result<Vec<DataFrame>, QueryError> {
    let mut frames = Vec::with_capacity(2);
    let mut rest = bytes;
    while !rest.is_empty() {
        let Some((length, after)) = rest.split_first_chunk::<8>() else {
            return Err(QueryError::Invalid("a part ends inside a length".into()));
        };
        let length = usize::try_from(u64::from_le_bytes(*length)).unwrap_or(usize::MAX);
        if length > after.len() {
            return Err(QueryError::Invalid(format!(
                "a part's frame of {length} bytes has {} left",
                after.len()
            )));
        }
        let (frame, after) = after.split_at(length);
        frames.push(IpcReader::new(Cursor::new(frame)).finish()?);
        rest = after;
    }
    Ok(frames)
}

/// A frame as Arrow IPC (ZSTD-compressed), to send between nodes or as a
/// result. Each chunk is a record batch, and each of its buffers costs a
/// ZSTD context to write and another to read: chunks of a few rows (one
/// per small file) are joined first. Level 1: these bytes are written
/// once and read once. Uncompressed, a part's bytes cost more to copy on
/// their way (worker, node, peer, worker) than ZSTD costs.
pub fn to_ipc(frame: &mut DataFrame) -> Result<Vec<u8>, PolarsError> {
    if frame.max_n_chunks() > frame.height() / MIN_BATCH_ROWS + 1 {
        frame.rechunk_mut_par();
    }
    let mut bytes = Vec::new();
    IpcWriter::new(&mut bytes)
        .with_compression(Some(IpcCompression::ZSTD(ZstdLevel::try_new(1)?)))
        .finish(frame)?;
    Ok(bytes)
}

/// Fewest rows per record batch, on average, [`to_ipc`] writes as they are.
const MIN_BATCH_ROWS: usize = 65_536;

/// The other nodes' parts of each table, decoded, each part on a thread
/// of its own.
pub fn decode_parts(parts: Vec<Vec<Vec<u8>>>) -> Result<Vec<Vec<Vec<DataFrame>>>, QueryError> {
    std::thread::scope(|scope| {
        let decoding: Vec<Vec<_>> = parts
            .into_iter()
            .map(|table| {
                table
                    .into_iter()
                    .map(|part| scope.spawn(move || part_from_ipc(&part)))
                    .collect()
            })
            .collect();
        decoding
            .into_iter()
            .map(|table| {
                table
                    .into_iter()
                    .map(|decoding| match decoding.join() {
                        Ok(frames) => frames,
                        Err(_) => Err(QueryError::Invalid(
                            "decoding another node's part failed".to_string(),
                        )),
                    })
                    .collect()
            })
            .collect()
    })
}

/// A result in a binary or CSV format (JSON is written by the caller).
pub fn encode(frame: &mut DataFrame, format: Format) -> Result<Vec<u8>, PolarsError> {
    let mut bytes = Vec::new();
    match format {
        Format::Csv => CsvWriter::new(&mut bytes).finish(frame)?,
        Format::Parquet => {
            ParquetWriter::new(&mut bytes)
                .with_compression(ParquetCompression::Zstd(None))
                .finish(frame)?;
        }
        Format::ArrowIpc | Format::Json => return to_ipc(frame),
    }
    Ok(bytes)
}
