//! The protobuf wire format, just enough to walk a message's fields: used to check a body
//! against the schema before prost decodes it (prost skips fields it does not know).

/// A body that is not well-formed protobuf.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A varint ran past the end of the message.
    #[error("truncated varint")]
    TruncatedVarint,
    /// A varint with more than 10 bytes.
    #[error("varint longer than 10 bytes")]
    LongVarint,
    /// A length or fixed-width value ran past the end of its message.
    #[error("field runs past the end of its message")]
    Truncated,
    /// A field number beyond protobuf's range.
    #[error("field number out of range")]
    FieldNumber,
    /// Wire types 3 and 4 (groups) and 6, 7 (undefined).
    #[error("unsupported wire type {0}")]
    WireType(u64),
    /// A scalar where the schema has a message.
    #[error("expected a message, got a scalar")]
    NotAMessage,
}

/// The value of one field on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field<'a> {
    /// Wire type 0 (ints, bools).
    Varint(u64),
    /// Wire type 2 (strings, bytes, messages, map entries, packed scalars).
    Bytes(&'a [u8]),
    /// Wire types 1 and 5 (fixed-width numbers).
    Fixed,
}

fn varint(buf: &mut &[u8]) -> Result<u64, WireError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first().ok_or(WireError::TruncatedVarint)?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(WireError::LongVarint)
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], WireError> {
    if buf.len() < n {
        return Err(WireError::Truncated);
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

/// The fields of one message, in wire order (repeated fields appear once per element).
pub fn fields(mut buf: &[u8]) -> Result<Vec<(u32, Field<'_>)>, WireError> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let tag = varint(&mut buf)?;
        let number = u32::try_from(tag >> 3).map_err(|_| WireError::FieldNumber)?;
        let field = match tag & 7 {
            0 => Field::Varint(varint(&mut buf)?),
            1 => {
                take(&mut buf, 8)?;
                Field::Fixed
            }
            2 => {
                let len = usize::try_from(varint(&mut buf)?).map_err(|_| WireError::Truncated)?;
                Field::Bytes(take(&mut buf, len)?)
            }
            5 => {
                take(&mut buf, 4)?;
                Field::Fixed
            }
            other => return Err(WireError::WireType(other)),
        };
        out.push((number, field));
    }
    Ok(out)
}

/// The body of a message-typed field.
pub fn message(field: Field<'_>) -> Result<&[u8], WireError> {
    match field {
        Field::Bytes(b) => Ok(b),
        _ => Err(WireError::NotAMessage),
    }
}
