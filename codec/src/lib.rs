//! The one binary encoding Shoal uses on disk (RocksDB values, the log WAL,
//! stored log records) and on the wire (node-to-node frames): bincode with its
//! standard configuration, through serde. Every crate encodes through here, so
//! a change of encoding is made in one place; crates that only need the
//! encoding (search) need not link RocksDB for it.

use thiserror::Error;

/// A value could not be encoded, or bytes do not decode as the expected type.
#[derive(Debug, Error)]
#[error("encoding: {0}")]
pub struct CodecError(String);

/// Encode a value.
pub fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| CodecError(e.to_string()))
}

/// Decode a value written by [`encode`].
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(value, _)| value)
        .map_err(|e| CodecError(e.to_string()))
}

/// Decode a value written by [`encode`] whose strings and byte strings
/// borrow from `bytes` instead of being copied (a reader that keeps a little
/// of a large record copies only that).
pub fn decode_borrowed<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, CodecError> {
    bincode::serde::borrow_decode_from_slice(bytes, bincode::config::standard())
        .map(|(value, _)| value)
        .map_err(|e| CodecError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let value = (String::from("stream"), vec![1u64, 2, 3]);
        let bytes = encode(&value).expect("encodes");
        assert_eq!(
            decode::<(String, Vec<u64>)>(&bytes).expect("decodes"),
            value
        );
        assert!(decode::<(String, Vec<u64>)>(&[0xff, 0xff, 0xff]).is_err());
    }
}
