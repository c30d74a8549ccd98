//! Durations written the way people write them in config files: "250ms", "10s", "1m30s".

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A [`Duration`] that reads from and writes to strings such as `"250ms"`, `"10s"`, `"1h"` or
/// `"1m30s"`. Units: `ns`, `us`, `ms`, `s`, `m`, `h`, `d`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// The wrapped duration.
    pub fn get(self) -> Duration {
        self.0
    }

    /// A duration of `ms` milliseconds (for defaults).
    pub const fn from_millis(ms: u64) -> Self {
        HumanDuration(Duration::from_millis(ms))
    }

    /// A duration of `secs` seconds (for defaults).
    pub const fn from_secs(secs: u64) -> Self {
        HumanDuration(Duration::from_secs(secs))
    }
}

/// A string that is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {input:?}: {reason} (write a number and a unit, such as \"250ms\", \"10s\" or \"1m30s\")"
)]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

impl FromStr for HumanDuration {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let error = |reason| DurationError {
            input: input.to_owned(),
            reason,
        };
        let text = input.trim();
        if text.is_empty() {
            return Err(error("it is empty"));
        }
        let mut total_nanos: u128 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(error("expected a number"));
            }
            let value: u64 = rest[..digits]
                .parse()
                .map_err(|_| error("the number is too large"))?;
            rest = &rest[digits..];
            let unit_len = rest
                .char_indices()
                .find(|(_, c)| !c.is_alphabetic())
                .map_or(rest.len(), |(i, _)| i);
            let unit_nanos: u128 = match &rest[..unit_len] {
                "ns" => 1,
                "us" | "µs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                "d" => 86_400_000_000_000,
                "" => return Err(error("a unit is missing")),
                _ => return Err(error("unknown unit")),
            };
            rest = &rest[unit_len..];
            total_nanos = total_nanos
                .checked_add(u128::from(value) * unit_nanos)
                .ok_or_else(|| error("the duration is too large"))?;
        }
        let total = u64::try_from(total_nanos).map_err(|_| error("the duration is too large"))?;
        Ok(HumanDuration(Duration::from_nanos(total)))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() == 0 {
            write!(f, "{}s", d.as_secs())
        } else if d.subsec_nanos().is_multiple_of(1_000_000) {
            write!(f, "{}ms", d.as_millis())
        } else {
            write!(f, "{}ns", d.as_nanos())
        }
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_common_forms() {
        let ms = |n| HumanDuration(Duration::from_millis(n));
        assert_eq!("250ms".parse(), Ok(ms(250)));
        assert_eq!("10s".parse(), Ok(ms(10_000)));
        assert_eq!("1m30s".parse(), Ok(ms(90_000)));
        assert_eq!("2h".parse(), Ok(ms(7_200_000)));
        assert_eq!(" 5us ".parse(), Ok(HumanDuration(Duration::from_micros(5))));
    }

    #[test]
    fn refuses_nonsense_with_a_reason() {
        for (input, reason) in [
            ("", "it is empty"),
            ("10", "a unit is missing"),
            ("ms", "expected a number"),
            ("10 parsecs", "a unit is missing"),
            ("10y", "unknown unit"),
            ("99999999999999999999s", "the number is too large"),
        ] {
            let error = input.parse::<HumanDuration>().unwrap_err();
            assert_eq!(error.reason, reason, "{input}");
        }
    }

    proptest! {
        #[test]
        fn display_round_trips(nanos in 0u64..u64::MAX / 4) {
            let d = HumanDuration(Duration::from_nanos(nanos));
            prop_assert_eq!(d.to_string().parse::<HumanDuration>(), Ok(d));
        }

        #[test]
        fn never_panics(input in ".{0,24}") {
            let _ = input.parse::<HumanDuration>();
        }
    }
}
