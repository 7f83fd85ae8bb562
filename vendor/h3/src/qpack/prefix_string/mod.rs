mod bitwin;
mod decode;
mod encode;

use std::convert::TryInto;
use std::fmt;
use std::num::TryFromIntError;

use bytes::{Buf, BufMut, Bytes};

pub use self::bitwin::BitWindow;

// Tether patch: `HpackStringEncode` and `BufMutExt` went with the Huffman-coding `encode`.
pub use self::{
    decode::{Error as HuffmanDecodingError, HpackStringDecode},
    encode::Error as HuffmanEncodingError,
};

use crate::qpack::prefix_int::{self, Error as IntegerError};

#[derive(Debug, PartialEq)]
pub enum Error {
    UnexpectedEnd,
    Integer(IntegerError),
    HuffmanDecoding(HuffmanDecodingError),
    HuffmanEncoding(HuffmanEncodingError),
    BufSize(TryFromIntError),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::UnexpectedEnd => write!(f, "unexpected end"),
            Error::Integer(e) => write!(f, "could not parse integer: {}", e),
            Error::HuffmanDecoding(e) => write!(f, "Huffman decode failed: {:?}", e),
            Error::HuffmanEncoding(e) => write!(f, "Huffman encode failed: {:?}", e),
            Error::BufSize(_) => write!(f, "number in buffer wrong size"),
        }
    }
}

pub fn decode<B: Buf>(size: u8, buf: &mut B) -> Result<Vec<u8>, Error> {
    let (flags, len) = prefix_int::decode(size - 1, buf)?;
    let len: usize = len.try_into()?;
    if buf.remaining() < len {
        return Err(Error::UnexpectedEnd);
    }

    // Tether patch (see vendor/README.md at the repository root): the literal is copied
    // out in one `copy_to_slice` instead of being split off the buffer as `Bytes` (which
    // allocates to share a `Vec`-backed buffer) and collected into a `Vec` byte by byte.
    let mut payload = vec![0; len];
    buf.copy_to_slice(&mut payload);
    let value = if flags & 1 == 0 {
        payload
    } else {
        let mut decoded = Vec::new();
        for byte in payload.hpack_decode() {
            decoded.push(byte?);
        }
        decoded
    };
    Ok(value)
}

/// Tether patch (see vendor/README.md at the repository root): `decode` for a field
/// section held in `Bytes`. A raw literal (H bit clear, as Tether's encoder writes them)
/// is split off the buffer and shares its storage, so a header value costs no allocation
/// and no copy; a Huffman-coded one is decoded into a buffer of its own.
pub fn decode_shared(size: u8, buf: &mut Bytes) -> Result<Bytes, Error> {
    let (flags, len) = prefix_int::decode(size - 1, buf)?;
    let len: usize = len.try_into()?;
    if buf.remaining() < len {
        return Err(Error::UnexpectedEnd);
    }
    let payload = buf.split_to(len);
    if flags & 1 == 0 {
        return Ok(payload);
    }
    let coded = payload.to_vec();
    let mut decoded = Vec::new();
    for byte in coded.hpack_decode() {
        decoded.push(byte?);
    }
    Ok(Bytes::from(decoded))
}

/// Writes `value` as a QPACK string literal with the H bit clear: the bytes as they are,
/// not Huffman-coded.
///
/// Tether patch (see vendor/README.md at the repository root). Upstream Huffman-codes
/// every literal one bit at a time, about 260 instructions a byte, and the peer's decoder
/// then walks the code one bit at a time too. Writing literals raw takes 14–21 % off the
/// instructions Tether's relay and agent spend on a small request. RFC 9204 §4.1.2 lets
/// the encoder choose per literal, and every decoder must accept both forms (`decode`
/// below does); the cost is 20–45 % more bytes per literal.
pub fn encode<B: BufMut>(size: u8, flags: u8, value: &[u8], buf: &mut B) -> Result<(), Error> {
    prefix_int::encode(size - 1, flags << 1, value.len().try_into()?, buf);
    buf.put_slice(value);
    Ok(())
}

impl From<HuffmanEncodingError> for Error {
    fn from(error: HuffmanEncodingError) -> Self {
        Error::HuffmanEncoding(error)
    }
}

impl From<IntegerError> for Error {
    fn from(error: IntegerError) -> Self {
        match error {
            IntegerError::UnexpectedEnd => Error::UnexpectedEnd,
            e => Error::Integer(e),
        }
    }
}

impl From<HuffmanDecodingError> for Error {
    fn from(error: HuffmanDecodingError) -> Self {
        Error::HuffmanDecoding(error)
    }
}

impl From<TryFromIntError> for Error {
    fn from(error: TryFromIntError) -> Self {
        Error::BufSize(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use assert_matches::assert_matches;
    use std::io::Cursor;

    // Tether patch: the three codec tests expect raw literals (H bit clear).
    #[test]
    fn codec_6() {
        let mut buf = Vec::new();
        encode(6, 0b01, b"name without ref", &mut buf).unwrap();
        let mut read = Cursor::new(&buf);
        let mut expected = vec![0b0101_0000];
        expected.extend_from_slice(b"name without ref");
        assert_eq!(buf, expected);
        assert_eq!(decode(6, &mut read).unwrap(), b"name without ref");
    }

    #[test]
    fn codec_8() {
        let mut buf = Vec::new();
        encode(8, 0b01, b"name with ref", &mut buf).unwrap();
        let mut read = Cursor::new(&buf);
        let mut expected = vec![0b0000_1101];
        expected.extend_from_slice(b"name with ref");
        assert_eq!(buf, expected);
        assert_eq!(decode(8, &mut read).unwrap(), b"name with ref");
    }

    #[test]
    fn codec_8_empty() {
        let mut buf = Vec::new();
        encode(8, 0b01, b"", &mut buf).unwrap();
        let mut read = Cursor::new(&buf);
        assert_eq!(&buf, &[0b0000_0000]);
        assert_eq!(decode(8, &mut read).unwrap(), b"");
    }

    #[test]
    fn decode_non_huffman() {
        let buf = vec![0b0100_0011, b'b', b'a', b'r'];
        let mut read = Cursor::new(&buf);
        assert_eq!(decode(6, &mut read).unwrap(), b"bar");
    }

    #[test]
    fn decode_too_short() {
        let buf = vec![0b0100_0011, b'b', b'a'];
        let mut read = Cursor::new(&buf);
        assert_matches!(decode(6, &mut read), Err(Error::UnexpectedEnd));
    }
}
