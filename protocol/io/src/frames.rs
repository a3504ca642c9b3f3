//! Protocol frames on QUIC streams: a length prefix checked before anything is buffered, then
//! the payload decoded by `protocol::codec`.

use protocol::codec::{self, CodecError};
use serde::{de::DeserializeOwned, Serialize};

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed mid-frame.
    #[error("reading a frame: {0}")]
    Read(#[from] quinn::ReadExactError),
    /// The stream refused a write.
    #[error("writing a frame: {0}")]
    Write(#[from] quinn::WriteError),
    /// The frame is larger than the reader accepts here (below the codec's own limit).
    #[error("a frame of {len} bytes exceeds the {limit}-byte limit for this stream; the peer is broken or hostile")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit of this reader.
        limit: usize,
    },
    /// The bytes are not a valid frame or message.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Reads one frame of at most `limit` bytes (and at most the codec's own limit) and decodes
/// it; `Ok(None)` when the peer finished the stream cleanly between frames. A limit below the
/// codec's lets a reader that expects only small messages (the hub, from edges) refuse a large
/// one before allocating for it.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    limit: usize,
) -> Result<Option<T>, FrameError> {
    let mut header = [0u8; codec::HEADER_LEN];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = codec::frame_len(header)?;
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    let mut payload = vec![0u8; len];
    recv.read_exact(&mut payload).await?;
    Ok(Some(codec::decode(&payload)?))
}

/// Encodes `msg` as one frame and writes it.
pub async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
) -> Result<(), FrameError> {
    send.write_all(&codec::encode_frame(msg)?).await?;
    Ok(())
}
