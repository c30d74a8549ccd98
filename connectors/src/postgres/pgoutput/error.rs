//! The pgoutput module's one error type: which message is bad, at which byte, and what was
//! expected there.

use std::fmt;
use std::str::Utf8Error;

use super::MessageKind;

/// Why a pgoutput message (or an LSN in text form) could not be decoded.
///
/// None of these is retryable: the same bytes fail the same way. A decode error on a
/// replication stream means the server and the decoder disagree on the protocol.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The payload was empty, so it had no tag byte.
    #[error("empty pgoutput message: expected a tag byte")]
    Empty,

    /// The tag byte names no message this decoder reads (see [`MessageKind::from_tag`]).
    #[error("unknown pgoutput message tag {} at offset 0", ByteName(*tag))]
    UnknownTag {
        /// The tag byte.
        tag: u8,
    },

    /// The message ended inside a fixed-size field.
    #[error(
        "truncated {message} message at offset {offset}: \
         expected {needed} more bytes for {field}, found {available}"
    )]
    Truncated {
        /// The message being decoded.
        message: MessageKind,
        /// Where the field starts.
        offset: usize,
        /// The field.
        field: &'static str,
        /// How many bytes the field needs.
        needed: usize,
        /// How many bytes were left.
        available: usize,
    },

    /// The message ended inside a NUL-terminated string.
    #[error("truncated {message} message at offset {offset}: {field} has no NUL terminator")]
    Unterminated {
        /// The message being decoded.
        message: MessageKind,
        /// Where the string starts.
        offset: usize,
        /// The field.
        field: &'static str,
    },

    /// A name is not UTF-8.
    #[error("invalid UTF-8 in {field} of {message} message at offset {offset}")]
    InvalidUtf8 {
        /// The message being decoded.
        message: MessageKind,
        /// Where the name starts.
        offset: usize,
        /// The field.
        field: &'static str,
        /// Where in the name the UTF-8 check failed.
        #[source]
        source: Utf8Error,
    },

    /// A byte with a fixed set of meanings (a flag, a marker, a column kind) has none of them.
    #[error(
        "invalid {field} in {message} message at offset {offset}: \
         expected {expected}, found {}",
        ByteName(*found)
    )]
    InvalidByte {
        /// The message being decoded.
        message: MessageKind,
        /// Where the byte is.
        offset: usize,
        /// The field.
        field: &'static str,
        /// The values allowed there.
        expected: &'static str,
        /// The byte found.
        found: u8,
    },

    /// Bytes follow the last field of the message.
    #[error(
        "trailing bytes in {message} message at offset {offset}: expected the end, found {count} more"
    )]
    TrailingBytes {
        /// The message decoded.
        message: MessageKind,
        /// Where the extra bytes start.
        offset: usize,
        /// How many extra bytes there are.
        count: usize,
    },

    /// Text that should be an LSN is not in PostgreSQL's `X/X` form.
    #[error("invalid LSN {input:?}: expected two groups of 1 to 8 hex digits separated by '/'")]
    InvalidLsn {
        /// The text given.
        input: String,
    },
}

/// Shows a byte as a quoted character when it is printable ASCII, else in hex.
struct ByteName(u8);

impl fmt::Display for ByteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}'", char::from(self.0))
        } else {
            write!(f, "byte {:#04x}", self.0)
        }
    }
}
