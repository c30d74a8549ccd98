//! WAL positions (LSNs) as PostgreSQL writes them: a `u64` on the wire, `X/X` in text.

use std::fmt;
use std::str::FromStr;

use super::Error;

/// A log sequence number: a byte position in the write-ahead log.
///
/// Ordered like the WAL itself, so checkpoints can compare positions directly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    /// Formats as PostgreSQL 15 does (`%X/%X`): the high and low 32 bits in upper-case hex,
    /// without zero padding, e.g. `0/1534838`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = Error;

    /// Parses what the `pg_lsn` type accepts: two groups of 1 to 8 hex digits (either case)
    /// separated by `/`, so zero-padded forms such as `0/01534838` parse too.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let half = |part: &str| {
            let hex = (1..=8).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_hexdigit());
            hex.then(|| u32::from_str_radix(part, 16).ok()).flatten()
        };
        s.split_once('/')
            .and_then(|(high, low)| Some((u64::from(half(high)?) << 32) | u64::from(half(low)?)))
            .map(Lsn)
            .ok_or_else(|| Error::InvalidLsn {
                input: s.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_like_postgres() {
        assert_eq!(Lsn(0x0153_4838).to_string(), "0/1534838");
        assert_eq!(Lsn(0xAB_0000_0000).to_string(), "AB/0");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
    }

    #[test]
    fn parses_what_pg_lsn_accepts() {
        assert_eq!("0/1534838".parse::<Lsn>().ok(), Some(Lsn(0x0153_4838)));
        assert_eq!("0/01534838".parse::<Lsn>().ok(), Some(Lsn(0x0153_4838)));
        assert_eq!("ab/Cd".parse::<Lsn>().ok(), Some(Lsn(0xAB_0000_00CD)));
        for bad in [
            "",
            "0",
            "/0",
            "0/",
            "0/123456789",
            "+1/0",
            " 0/1",
            "0/1 ",
            "g/0",
            "0/0/0",
        ] {
            let err = bad.parse::<Lsn>().expect_err(bad);
            assert!(err.to_string().contains("invalid LSN"), "{err}");
        }
    }

    #[test]
    fn display_and_parse_round_trip() {
        for value in [0, 1, 0xFFFF_FFFF, 0x1_0000_0000, u64::MAX] {
            assert_eq!(Lsn(value).to_string().parse::<Lsn>().ok(), Some(Lsn(value)));
        }
    }
}
