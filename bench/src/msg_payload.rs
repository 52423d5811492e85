//! msg-bench's payloads: `[sequence number u64 LE][send time, ns since BASE,
//! u64 LE][zeros]`, so the subscribers count loss and duplicates and measure
//! latency themselves.

use std::sync::OnceLock;
use std::time::Instant;

/// Sequence number of the probes sent before a run until every subscriber has one.
pub(super) const PROBE: u64 = u64::MAX;
pub(super) const HEADER: usize = 16;

pub(super) fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

pub(super) fn now_ns() -> u64 {
    base().elapsed().as_nanos() as u64
}

pub(super) fn payload(seq: u64, size: usize) -> Vec<u8> {
    let mut data = vec![0u8; size.max(HEADER)];
    data[..8].copy_from_slice(&seq.to_le_bytes());
    data[8..16].copy_from_slice(&now_ns().to_le_bytes());
    data
}

pub(super) fn decode(data: &[u8]) -> Option<(u64, u64)> {
    if data.len() < HEADER {
        return None;
    }
    let seq = u64::from_le_bytes(data[..8].try_into().ok()?);
    let sent = u64::from_le_bytes(data[8..16].try_into().ok()?);
    Some((seq, sent))
}
