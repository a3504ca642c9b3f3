//! SPDY/3.1 framing as kubectl's port-forward speaks it (client-go's `httpstream/spdy`, on
//! moby's spdystream): data and control frames, header blocks compressed with zlib and SPDY's
//! dictionary. Pure: bytes in, frames out, no I/O.
//!
//! Every frame has an 8-byte head. A control frame: `1`, a 15-bit version (3), a 16-bit type,
//! 8 bits of flags and a 24-bit length. A data frame: `0`, a 31-bit stream id, flags (`FIN`)
//! and length. Header blocks (SYN_STREAM, SYN_REPLY, HEADERS) are one zlib stream per direction
//! of a connection, each block ended by a sync flush, so the [`Decoder`] and the [`Encoder`]
//! keep their zlib state from frame to frame and must see every header block in order.
//!
//! Untrusted input never panics: a length that does not fit, a header block that does not
//! inflate or inflates past [`MAX_HEADER_BLOCK`], a count that claims more pairs than bytes, are
//! [`SpdyError`]s, after which the connection is done (its zlib state is lost).

use super::dictionary::dictionary;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The SPDY version served.
pub const VERSION: u16 = 3;

/// The largest frame payload accepted: client-go writes data frames of at most 32 KiB; a
/// control frame is far smaller. More is refused rather than buffered.
pub const MAX_FRAME: usize = 1 << 20;

/// The largest header block once inflated (a port-forward stream has three short headers).
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// `FIN` on a data, SYN_STREAM, SYN_REPLY or HEADERS frame: the sender's last frame on the
/// stream.
pub const FLAG_FIN: u8 = 0x01;
/// `UNIDIRECTIONAL` on a SYN_STREAM.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// RST_STREAM status: the stream was refused before any processing.
pub const REFUSED_STREAM: u32 = 3;
/// RST_STREAM status: the stream is cancelled.
pub const CANCEL: u32 = 5;
/// RST_STREAM status: the stream id is already in use.
pub const STREAM_IN_USE: u32 = 8;
/// RST_STREAM status: a frame for a stream that is not open.
pub const INVALID_STREAM: u32 = 2;
/// RST_STREAM status: a protocol error.
pub const PROTOCOL_ERROR: u32 = 1;

/// A header block: lower-case names, each with its value (several values NUL-joined, as SPDY
/// carries them).
pub type Headers = Vec<(String, String)>;

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Bytes of a stream.
    Data {
        /// Stream id.
        stream: u32,
        /// The sender's last frame on the stream.
        fin: bool,
        /// The bytes.
        data: Vec<u8>,
    },
    /// A new stream.
    SynStream {
        /// Its id (odd from the client).
        stream: u32,
        /// The stream it belongs to (server push; 0 here).
        associated: u32,
        /// 0 (highest) to 7.
        priority: u8,
        /// `FIN` and `UNIDIRECTIONAL`.
        flags: u8,
        /// Its headers.
        headers: Headers,
    },
    /// The answer to a SYN_STREAM.
    SynReply {
        /// The stream.
        stream: u32,
        /// Its headers.
        headers: Headers,
        /// The replier's last frame on the stream.
        fin: bool,
    },
    /// The stream is abandoned.
    RstStream {
        /// The stream.
        stream: u32,
        /// Why (see the constants).
        status: u32,
    },
    /// Connection settings (id, flags, value); read and ignored.
    Settings(Vec<(u32, u8, u32)>),
    /// A ping, echoed with the same id.
    Ping(u32),
    /// The sender creates no more streams.
    GoAway {
        /// The last stream it took.
        last_good: u32,
        /// Why.
        status: u32,
    },
    /// More headers for a stream.
    Headers {
        /// The stream.
        stream: u32,
        /// The headers.
        headers: Headers,
        /// The sender's last frame on the stream.
        fin: bool,
    },
    /// Flow-control credit (SPDY/3.1); spdystream neither sends nor needs it.
    WindowUpdate {
        /// The stream (0: the connection).
        stream: u32,
        /// The credit.
        delta: u32,
    },
    /// A control frame of a type this codec does not know: the spec says to ignore it.
    Unknown {
        /// Its type.
        kind: u16,
    },
}

/// Why bytes are not SPDY/3 frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpdyError {
    /// A control frame of another SPDY version.
    #[error("SPDY version {0} is not served (only 3)")]
    Version(u16),
    /// A frame longer than [`MAX_FRAME`].
    #[error("a SPDY frame of {0} bytes is longer than the {MAX_FRAME} accepted")]
    TooLarge(usize),
    /// A frame whose payload does not match its type.
    #[error("malformed SPDY frame: {0}")]
    Malformed(&'static str),
    /// A header block that zlib could not inflate or deflate.
    #[error("SPDY header block: {0}")]
    Compression(String),
}

/// Reads frames from a connection's bytes, keeping the header blocks' zlib state.
pub struct Decoder {
    inflate: Decompress,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, SpdyError> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(SpdyError::Malformed("frame shorter than its fields"))
}

impl Decoder {
    /// A decoder at the start of a connection.
    pub fn new() -> Self {
        Self {
            inflate: Decompress::new(true),
        }
    }

    /// The first frame at the front of `buf` and how many bytes it took, or `None` if `buf`
    /// does not hold a whole frame yet.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<(Frame, usize)>, SpdyError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let len = (u32_at(buf, 4)? & 0x00ff_ffff) as usize;
        if len > MAX_FRAME {
            return Err(SpdyError::TooLarge(len));
        }
        let control = buf[0] & 0x80 != 0;
        let flags = buf[4];
        if control {
            let version = u16::from_be_bytes([buf[0], buf[1]]) & 0x7fff;
            if version != VERSION {
                return Err(SpdyError::Version(version));
            }
        }
        let Some(payload) = buf.get(8..8 + len) else {
            return Ok(None);
        };
        let frame = if control {
            let kind = u16::from_be_bytes([buf[2], buf[3]]);
            self.control(kind, flags, payload)?
        } else {
            Frame::Data {
                stream: u32_at(buf, 0)? & 0x7fff_ffff,
                fin: flags & FLAG_FIN != 0,
                data: payload.to_vec(),
            }
        };
        Ok(Some((frame, 8 + len)))
    }

    fn control(&mut self, kind: u16, flags: u8, p: &[u8]) -> Result<Frame, SpdyError> {
        let fin = flags & FLAG_FIN != 0;
        let exact = |n: usize| {
            if p.len() == n {
                Ok(())
            } else {
                Err(SpdyError::Malformed("control frame of the wrong length"))
            }
        };
        Ok(match kind {
            SYN_STREAM => {
                if p.len() < 10 {
                    return Err(SpdyError::Malformed("SYN_STREAM shorter than 10 bytes"));
                }
                Frame::SynStream {
                    stream: u32_at(p, 0)? & 0x7fff_ffff,
                    associated: u32_at(p, 4)? & 0x7fff_ffff,
                    priority: p[8] >> 5,
                    flags,
                    headers: self.headers(&p[10..])?,
                }
            }
            SYN_REPLY | HEADERS => {
                if p.len() < 4 {
                    return Err(SpdyError::Malformed("header frame shorter than 4 bytes"));
                }
                let stream = u32_at(p, 0)? & 0x7fff_ffff;
                let headers = self.headers(&p[4..])?;
                if kind == SYN_REPLY {
                    Frame::SynReply {
                        stream,
                        headers,
                        fin,
                    }
                } else {
                    Frame::Headers {
                        stream,
                        headers,
                        fin,
                    }
                }
            }
            RST_STREAM => {
                exact(8)?;
                Frame::RstStream {
                    stream: u32_at(p, 0)? & 0x7fff_ffff,
                    status: u32_at(p, 4)?,
                }
            }
            SETTINGS => {
                let n = u32_at(p, 0)? as usize;
                if n.checked_mul(8).and_then(|b| b.checked_add(4)) != Some(p.len()) {
                    return Err(SpdyError::Malformed(
                        "SETTINGS count does not match its length",
                    ));
                }
                let entries = (0..n)
                    .map(|i| {
                        let at = 4 + i * 8;
                        let head = u32_at(p, at)?;
                        Ok((head & 0x00ff_ffff, (head >> 24) as u8, u32_at(p, at + 4)?))
                    })
                    .collect::<Result<_, SpdyError>>()?;
                Frame::Settings(entries)
            }
            PING => {
                exact(4)?;
                Frame::Ping(u32_at(p, 0)?)
            }
            GOAWAY => {
                // SPDY/3 has a status; SPDY/2's GOAWAY had none.
                if p.len() != 8 && p.len() != 4 {
                    return Err(SpdyError::Malformed("GOAWAY of the wrong length"));
                }
                Frame::GoAway {
                    last_good: u32_at(p, 0)? & 0x7fff_ffff,
                    status: if p.len() == 8 { u32_at(p, 4)? } else { 0 },
                }
            }
            WINDOW_UPDATE => {
                exact(8)?;
                Frame::WindowUpdate {
                    stream: u32_at(p, 0)? & 0x7fff_ffff,
                    delta: u32_at(p, 4)? & 0x7fff_ffff,
                }
            }
            kind => Frame::Unknown { kind },
        })
    }

    /// Inflates one header block (continuing the connection's zlib stream) and parses it.
    fn headers(&mut self, block: &[u8]) -> Result<Headers, SpdyError> {
        let mut out = Vec::with_capacity(256);
        let mut input = block;
        loop {
            if out.len() == out.capacity() {
                if out.len() >= MAX_HEADER_BLOCK {
                    return Err(SpdyError::Compression(format!(
                        "inflates past {MAX_HEADER_BLOCK} bytes"
                    )));
                }
                out.reserve(out.len().min(MAX_HEADER_BLOCK - out.len()).max(256));
            }
            let (before, had) = (self.inflate.total_in(), out.len());
            let result = self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let used = (self.inflate.total_in() - before) as usize;
            input = &input[used..];
            if used == 0 && out.len() == had && !input.is_empty() && result.is_ok() {
                return Err(SpdyError::Compression("zlib made no progress".into()));
            }
            match result {
                Ok(Status::StreamEnd) => break,
                Ok(_) => {
                    // Done once every byte went in and the output had room to spare (so
                    // nothing is held back inside zlib).
                    if input.is_empty() && out.len() < out.capacity() {
                        break;
                    }
                }
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(dictionary())
                        .map_err(|e| SpdyError::Compression(e.to_string()))?;
                }
                Err(e) => return Err(SpdyError::Compression(e.to_string())),
            }
        }
        parse_block(&out)
    }
}

fn parse_block(b: &[u8]) -> Result<Headers, SpdyError> {
    let n = u32_at(b, 0)? as usize;
    // Each pair takes at least 8 bytes: a count past that is a lie, not an allocation.
    if n > b.len() / 8 {
        return Err(SpdyError::Malformed("header count larger than the block"));
    }
    let mut at = 4;
    let string = |at: &mut usize| -> Result<String, SpdyError> {
        let len = u32_at(b, *at)? as usize;
        let start = *at + 4;
        let s = b
            .get(
                start
                    ..start
                        .checked_add(len)
                        .ok_or(SpdyError::Malformed("length"))?,
            )
            .ok_or(SpdyError::Malformed("header longer than the block"))?;
        *at = start + len;
        String::from_utf8(s.to_vec()).map_err(|_| SpdyError::Malformed("header is not UTF-8"))
    };
    let mut headers = Vec::with_capacity(n);
    for _ in 0..n {
        let name = string(&mut at)?;
        let value = string(&mut at)?;
        headers.push((name, value));
    }
    Ok(headers)
}

/// Writes frames for a connection, keeping the header blocks' zlib state.
pub struct Encoder {
    deflate: Compress,
    dictionary_set: bool,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

fn control_head(out: &mut Vec<u8>, kind: u16, flags: u8, len: usize) {
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&((u32::from(flags) << 24) | len as u32).to_be_bytes());
}

impl Encoder {
    /// An encoder at the start of a connection.
    pub fn new() -> Self {
        Self {
            deflate: Compress::new(Compression::default(), true),
            dictionary_set: false,
        }
    }

    /// Appends `frame`'s bytes to `out`.
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), SpdyError> {
        let fin = |f: bool| if f { FLAG_FIN } else { 0 };
        match frame {
            Frame::Data {
                stream,
                fin: f,
                data,
            } => {
                if data.len() > MAX_FRAME {
                    return Err(SpdyError::TooLarge(data.len()));
                }
                out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
                out.extend_from_slice(
                    &((u32::from(fin(*f)) << 24) | data.len() as u32).to_be_bytes(),
                );
                out.extend_from_slice(data);
            }
            Frame::SynStream {
                stream,
                associated,
                priority,
                flags,
                headers,
            } => {
                let block = self.block(headers)?;
                control_head(out, SYN_STREAM, *flags, 10 + block.len());
                out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
                out.extend_from_slice(&(associated & 0x7fff_ffff).to_be_bytes());
                out.push((priority & 7) << 5);
                out.push(0);
                out.extend_from_slice(&block);
            }
            Frame::SynReply {
                stream,
                headers,
                fin: f,
            }
            | Frame::Headers {
                stream,
                headers,
                fin: f,
            } => {
                let kind = if matches!(frame, Frame::SynReply { .. }) {
                    SYN_REPLY
                } else {
                    HEADERS
                };
                let block = self.block(headers)?;
                control_head(out, kind, fin(*f), 4 + block.len());
                out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
                out.extend_from_slice(&block);
            }
            Frame::RstStream { stream, status } => {
                control_head(out, RST_STREAM, 0, 8);
                out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
                out.extend_from_slice(&status.to_be_bytes());
            }
            Frame::Settings(entries) => {
                control_head(out, SETTINGS, 0, 4 + 8 * entries.len());
                out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
                for (id, flags, value) in entries {
                    out.extend_from_slice(
                        &((u32::from(*flags) << 24) | (id & 0x00ff_ffff)).to_be_bytes(),
                    );
                    out.extend_from_slice(&value.to_be_bytes());
                }
            }
            Frame::Ping(id) => {
                control_head(out, PING, 0, 4);
                out.extend_from_slice(&id.to_be_bytes());
            }
            Frame::GoAway { last_good, status } => {
                control_head(out, GOAWAY, 0, 8);
                out.extend_from_slice(&(last_good & 0x7fff_ffff).to_be_bytes());
                out.extend_from_slice(&status.to_be_bytes());
            }
            Frame::WindowUpdate { stream, delta } => {
                control_head(out, WINDOW_UPDATE, 0, 8);
                out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
                out.extend_from_slice(&(delta & 0x7fff_ffff).to_be_bytes());
            }
            Frame::Unknown { .. } => {
                return Err(SpdyError::Malformed("an unknown frame cannot be written"))
            }
        }
        Ok(())
    }

    /// The compressed header block (continuing the connection's zlib stream, sync-flushed).
    fn block(&mut self, headers: &Headers) -> Result<Vec<u8>, SpdyError> {
        if !self.dictionary_set {
            self.deflate
                .set_dictionary(dictionary())
                .map_err(|e| SpdyError::Compression(e.to_string()))?;
            self.dictionary_set = true;
        }
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (name, value) in headers {
            for s in [name, value] {
                raw.extend_from_slice(&(s.len() as u32).to_be_bytes());
                raw.extend_from_slice(s.as_bytes());
            }
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        loop {
            if out.len() == out.capacity() {
                out.reserve(256);
            }
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| SpdyError::Compression(e.to_string()))?;
            input = &input[(self.deflate.total_in() - before) as usize..];
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// The value of header `name` (names are compared without case, as HTTP's).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn headers_strategy() -> impl Strategy<Value = Headers> {
        prop::collection::vec(("[a-z-]{1,20}", "[ -~]{0,40}"), 0..6)
    }

    fn frame_strategy() -> impl Strategy<Value = Frame> {
        let id = 0u32..0x7fff_ffff;
        prop_oneof![
            (
                id.clone(),
                any::<bool>(),
                prop::collection::vec(any::<u8>(), 0..3000)
            )
                .prop_map(|(stream, fin, data)| Frame::Data { stream, fin, data }),
            (id.clone(), id.clone(), 0u8..8, 0u8..4, headers_strategy()).prop_map(
                |(stream, associated, priority, flags, headers)| Frame::SynStream {
                    stream,
                    associated,
                    priority,
                    flags,
                    headers
                }
            ),
            (id.clone(), headers_strategy(), any::<bool>()).prop_map(|(stream, headers, fin)| {
                Frame::SynReply {
                    stream,
                    headers,
                    fin,
                }
            }),
            (id.clone(), headers_strategy(), any::<bool>()).prop_map(|(stream, headers, fin)| {
                Frame::Headers {
                    stream,
                    headers,
                    fin,
                }
            }),
            (id.clone(), any::<u32>())
                .prop_map(|(stream, status)| Frame::RstStream { stream, status }),
            prop::collection::vec((0u32..0x00ff_ffff, any::<u8>(), any::<u32>()), 0..4)
                .prop_map(Frame::Settings),
            any::<u32>().prop_map(Frame::Ping),
            (id.clone(), any::<u32>())
                .prop_map(|(last_good, status)| Frame::GoAway { last_good, status }),
            (id.clone(), 0u32..0x7fff_ffff)
                .prop_map(|(stream, delta)| Frame::WindowUpdate { stream, delta }),
        ]
    }

    proptest! {
        /// A connection's frames come back as they were, header blocks and all, however the
        /// bytes are cut on the way.
        #[test]
        fn frames_round_trip(frames in prop::collection::vec(frame_strategy(), 1..12), cut in any::<prop::sample::Index>()) {
            let mut enc = Encoder::new();
            let mut bytes = Vec::new();
            for f in &frames {
                enc.encode(f, &mut bytes).expect("encode");
            }
            let mut dec = Decoder::new();
            let mut back = Vec::new();
            let mut buf: Vec<u8> = Vec::new();
            let cut = cut.index(bytes.len());
            for chunk in [&bytes[..cut], &bytes[cut..]] {
                buf.extend_from_slice(chunk);
                while let Some((f, used)) = dec.decode(&buf).expect("decode") {
                    buf.drain(..used);
                    back.push(f);
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(back, frames);
        }

        /// Garbage is an error or a wait for more, never a panic.
        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let mut dec = Decoder::new();
            let mut buf = &bytes[..];
            while let Ok(Some((_, used))) = dec.decode(buf) {
                buf = &buf[used..];
            }
        }

        /// A valid SYN_STREAM's head with a mangled header block is an error, not a panic.
        #[test]
        fn mangled_header_blocks_never_panic(headers in headers_strategy(), flip in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut enc = Encoder::new();
            let mut bytes = Vec::new();
            enc.encode(&Frame::SynStream { stream: 1, associated: 0, priority: 0, flags: 0, headers }, &mut bytes).expect("encode");
            let i = 18 + flip.index(bytes.len() - 18);
            bytes[i] ^= byte | 1;
            let _ = Decoder::new().decode(&bytes);
        }
    }

    #[test]
    fn reads_a_header_block_compressed_with_the_dictionary_as_go_does() {
        // Go's zlib writer with a dictionary sets FDICT: the decoder must supply it.
        let mut enc = Encoder::new();
        let mut bytes = Vec::new();
        let headers = vec![
            ("streamtype".to_string(), "error".to_string()),
            ("port".to_string(), "80".to_string()),
            ("requestid".to_string(), "0".to_string()),
        ];
        enc.encode(
            &Frame::SynStream {
                stream: 1,
                associated: 0,
                priority: 0,
                flags: 0,
                headers: headers.clone(),
            },
            &mut bytes,
        )
        .expect("encode");
        // The zlib header after the 18 bytes of frame head: FDICT set, the dictionary's id.
        assert_eq!(bytes[19] & 0x20, 0x20);
        assert_eq!(&bytes[20..24], &0xe3c6_a7c2u32.to_be_bytes());
        let (frame, used) = Decoder::new().decode(&bytes).expect("ok").expect("whole");
        assert_eq!(used, bytes.len());
        let Frame::SynStream { headers: got, .. } = frame else {
            panic!("not a SYN_STREAM: {frame:?}")
        };
        assert_eq!(header(&got, "streamType"), Some("error"));
        assert_eq!(got, headers);
    }

    #[test]
    fn refuses_other_versions_and_huge_frames() {
        let mut dec = Decoder::new();
        let v2 = [0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1];
        assert_eq!(dec.decode(&v2), Err(SpdyError::Version(2)));
        let huge = [0x00, 0, 0, 1, 0, 0xff, 0xff, 0xff];
        assert!(matches!(dec.decode(&huge), Err(SpdyError::TooLarge(_))));
        let lying = {
            let mut b = vec![0x80, 0x03, 0x00, 0x04, 0, 0, 0, 4];
            b.extend_from_slice(&u32::MAX.to_be_bytes());
            b
        };
        assert!(matches!(dec.decode(&lying), Err(SpdyError::Malformed(_))));
    }
}
