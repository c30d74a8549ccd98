//! One issued id of any kind, with its text and binary forms.

use std::fmt;

/// An issued id.
///
/// Text forms: decimal for numbers (always a JSON *string* on the wire: Snowflake ids pass
/// 2^53, beyond which JavaScript numbers lose digits, days after their epoch), lowercase
/// hyphenated for UUIDs, 26 Crockford base32 characters for ULIDs, the rendered text for day
/// counters. Binary forms ([`Id::to_bytes`]) sort like the text: 8 big-endian bytes for numbers,
/// 16 bytes for UUIDs and ULIDs, UTF-8 for counters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Id {
    /// A Snowflake id or a sequence number.
    Int(u64),
    /// A UUID (v4 or v7).
    Uuid(uuid::Uuid),
    /// A ULID.
    Ulid(ulid::Ulid),
    /// A rendered id, such as a day counter's `20260115-000123`.
    Text(String),
}

impl Id {
    /// The binary form.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Id::Int(n) => n.to_be_bytes().to_vec(),
            Id::Uuid(u) => u.as_bytes().to_vec(),
            Id::Ulid(u) => u.to_bytes().to_vec(),
            Id::Text(t) => t.as_bytes().to_vec(),
        }
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Id::Int(n) => write!(f, "{n}"),
            Id::Uuid(u) => write!(f, "{}", u.hyphenated()),
            Id::Ulid(u) => write!(f, "{u}"),
            Id::Text(t) => f.write_str(t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_forms_sort_like_the_ids() {
        let (a, b) = (Id::Int(255), Id::Int(256));
        assert!(a.to_bytes() < b.to_bytes());
        assert_eq!(a.to_bytes().len(), 8);
        assert_eq!(a.to_string(), "255");
        let u = Id::Uuid(uuid::Uuid::nil());
        assert_eq!(u.to_string(), "00000000-0000-0000-0000-000000000000");
        assert_eq!(u.to_bytes().len(), 16);
    }
}
