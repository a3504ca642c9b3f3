//! Framing and encoding: the only place that turns protocol values into bytes and back.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of bincode (1.3, fixed-int,
//! little-endian, as chosen in DESIGN.md). Every decode is bounded twice: a frame longer than
//! [`MAX_FRAME_LEN`] is refused before any byte of it is buffered, and bincode itself is given the
//! frame's length as its allocation limit, so a hostile length field inside the payload cannot make
//! the decoder allocate more than the frame it came in. Decoding never panics: the property tests
//! below feed it arbitrary bytes.
//!
//! Keeping the encoding here means that replacing bincode later is a change to this file only.

use bincode::Options;
use serde::{de::DeserializeOwned, Serialize};

/// Largest frame either side accepts: big enough for a batch of a few thousand compact pods,
/// small enough that a garbage length cannot make a peer buffer much.
pub const MAX_FRAME_LEN: usize = 4 * 1024 * 1024;

/// Size of the length prefix in front of every frame.
pub const HEADER_LEN: usize = 4;

/// Why bytes could not be turned into a value (or a value into bytes).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// The length prefix announces more than [`MAX_FRAME_LEN`]; the peer is broken or hostile,
    /// and the connection should be closed.
    #[error("frame of {len} bytes exceeds the {max}-byte limit; the peer is not speaking skerry protocol v{version} correctly", max = MAX_FRAME_LEN, version = crate::PROTOCOL_VERSION)]
    FrameTooLarge {
        /// The announced length.
        len: usize,
    },
    /// The payload is not a valid encoding of the expected message type.
    #[error("malformed {what}: {reason}; the peer may run an incompatible skerry version")]
    Malformed {
        /// The type that was being decoded.
        what: &'static str,
        /// What bincode reported.
        reason: String,
    },
    /// A value could not be encoded, or encodes to more than [`MAX_FRAME_LEN`].
    #[error("cannot encode {what}: {reason}")]
    Encode {
        /// The type that was being encoded.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

fn options(limit: u64) -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .reject_trailing_bytes()
        .with_limit(limit)
}

fn type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

/// Encodes a value without a frame header (used for MQTT payloads, where the broker frames).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    options(MAX_FRAME_LEN as u64)
        .serialize(value)
        .map_err(|e| CodecError::Encode {
            what: type_name::<T>(),
            reason: e.to_string(),
        })
}

/// Decodes a value from exactly `bytes` (no header), allocating at most `bytes.len()` plus a
/// small constant, whatever the bytes claim.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > MAX_FRAME_LEN {
        return Err(CodecError::FrameTooLarge { len: bytes.len() });
    }
    // Every decoded element takes at least one byte of input, except empty structs; allowing a
    // little slack over the input length keeps those valid while still bounding allocation.
    options(bytes.len() as u64 + 64)
        .deserialize(bytes)
        .map_err(|e| CodecError::Malformed {
            what: type_name::<T>(),
            reason: e.to_string(),
        })
}

/// Encodes a value as one frame: length prefix plus payload.
pub fn encode_frame<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let payload = encode(value)?;
    if payload.len() > MAX_FRAME_LEN {
        return Err(CodecError::Encode {
            what: type_name::<T>(),
            reason: format!(
                "{} bytes exceed the {MAX_FRAME_LEN}-byte frame limit; split the batch",
                payload.len()
            ),
        });
    }
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Reads the length prefix of a frame and checks it against the limit, so that a reader can
/// refuse a huge frame before it buffers any of it.
pub fn frame_len(header: [u8; HEADER_LEN]) -> Result<usize, CodecError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(CodecError::FrameTooLarge { len });
    }
    Ok(len)
}

/// Incremental frame splitter for byte streams that arrive in arbitrary pieces.
///
/// Sans-IO: the owner pushes whatever bytes it read and pulls complete frames out. It never
/// holds more than one partial frame of at most [`MAX_FRAME_LEN`] bytes.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Takes the next complete frame's payload, `Ok(None)` if more bytes are needed, or an error
    /// if the stream is broken (after which the connection must be closed).
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, CodecError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&self.buf[..HEADER_LEN]);
        let len = frame_len(header)?;
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some(payload))
    }

    /// Takes and decodes the next complete frame.
    pub fn next_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, CodecError> {
        match self.next_frame()? {
            Some(payload) => decode(&payload).map(Some),
            None => Ok(None),
        }
    }

    /// Bytes buffered but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{CloudMessage, EdgeMessage};
    use crate::status::StatusReport;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = decode::<CloudMessage>(&bytes);
            let _ = decode::<EdgeMessage>(&bytes);
            let _ = decode::<StatusReport>(&bytes);
            let _ = crate::status::open(&[0u8; 32], "t", &bytes);
            let _ = decode::<crate::join::JoinRequest>(&bytes);
            let _ = decode::<crate::join::JoinResponse>(&bytes);
            let mut d = FrameDecoder::new();
            d.push(&bytes);
            while let Ok(Some(_)) = d.next_message::<CloudMessage>() {}
        }

        #[test]
        fn huge_length_fields_inside_a_small_frame_are_refused(len in 1_000_000u64..u64::MAX, tag in 0u32..4) {
            // An enum tag followed by a vector length that claims far more than the input holds.
            let mut bytes = tag.to_le_bytes().to_vec();
            bytes.extend_from_slice(&len.to_le_bytes());
            bytes.extend_from_slice(&[0u8; 16]);
            prop_assert!(decode::<CloudMessage>(&bytes).is_err());
        }

        #[test]
        fn frames_split_anywhere_reassemble(split in 0usize..200) {
            let msg = EdgeMessage::Ack(crate::messages::Ack { revision: 42 });
            let mut bytes = encode_frame(&msg).unwrap();
            bytes.extend(encode_frame(&msg).unwrap());
            let split = split.min(bytes.len());
            let mut d = FrameDecoder::new();
            d.push(&bytes[..split]);
            let mut got = Vec::new();
            while let Some(m) = d.next_message::<EdgeMessage>().unwrap() { got.push(m); }
            d.push(&bytes[split..]);
            while let Some(m) = d.next_message::<EdgeMessage>().unwrap() { got.push(m); }
            prop_assert_eq!(got, vec![msg.clone(), msg]);
            prop_assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn oversized_frame_header_is_refused_before_buffering() {
        let mut d = FrameDecoder::new();
        d.push(&(MAX_FRAME_LEN as u32 + 1).to_be_bytes());
        assert_eq!(
            d.next_frame(),
            Err(CodecError::FrameTooLarge {
                len: MAX_FRAME_LEN + 1
            })
        );
    }

    #[test]
    fn round_trip_of_a_sync_batch() {
        let batch = crate::messages::tests::sample_batch();
        let bytes = encode_frame(&batch).unwrap();
        let mut d = FrameDecoder::new();
        d.push(&bytes);
        assert_eq!(d.next_message::<CloudMessage>().unwrap(), Some(batch));
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let mut bytes = encode(&EdgeMessage::Ack(crate::messages::Ack { revision: 1 })).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<EdgeMessage>(&bytes),
            Err(CodecError::Malformed { .. })
        ));
    }
}
