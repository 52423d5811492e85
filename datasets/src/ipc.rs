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

/// A node's part of a table in a query, as [`to_ipc`] writes it; refused
/// past the scan's `max_part_bytes` (never more than [`MAX_PART_BYTES`]).
pub fn part_to_ipc(frame: &mut DataFrame, scan: &TableScan) -> Result<Vec<u8>, QueryError> {
    let bytes = to_ipc(frame)?;
    let most = scan.max_part_bytes.min(MAX_PART_BYTES as u64);
    if bytes.len() as u64 > most {
        return Err(QueryError::TooBig(format!(
            "this node's part of {} is {} bytes of Arrow IPC, more than {most}; {NARROW_IT}",
            scan.dataset.name,
            bytes.len()
        )));
    }
    Ok(bytes)
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

pub fn from_ipc(bytes: Vec<u8>) -> Result<DataFrame, PolarsError> {
    IpcReader::new(Cursor::new(bytes)).finish()
}

/// The other nodes' parts of each table (Arrow IPC), decoded, each part
/// on a thread of its own.
pub fn decode_parts(parts: Vec<Vec<Vec<u8>>>) -> Result<Vec<Vec<DataFrame>>, QueryError> {
    std::thread::scope(|scope| {
        let decoding: Vec<Vec<_>> = parts
            .into_iter()
            .map(|table| {
                table
                    .into_iter()
                    .map(|part| scope.spawn(move || from_ipc(part)))
                    .collect()
            })
            .collect();
        decoding
            .into_iter()
            .map(|table| {
                table
                    .into_iter()
                    .map(|decoding| match decoding.join() {
                        Ok(frame) => Ok(frame?),
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
