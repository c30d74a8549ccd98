//! UTC calendar arithmetic on Unix milliseconds: RFC 3339 text for epochs and decoded ids, and
//! the civil day that names a Redis counter's key.
//!
//! The generators need only the proleptic Gregorian calendar in UTC (no time zones, no leap
//! seconds: Unix time has none), which is a few lines of integer arithmetic (H. Hinnant's
//! `days_from_civil`), not a dependency.

use std::fmt::Write as _;

/// Milliseconds in a day.
pub const DAY_MS: u64 = 86_400_000;

/// A civil date in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    /// The year, such as 2026.
    pub year: i64,
    /// 1 to 12.
    pub month: u32,
    /// 1 to 31.
    pub day: u32,
}

impl Date {
    /// The date of `unix_ms` in UTC.
    pub fn of(unix_ms: u64) -> Date {
        civil_from_days((unix_ms / DAY_MS) as i64)
    }

    /// The day of the year, 1 to 366.
    pub fn ordinal(&self) -> u32 {
        let first = days_from_civil(self.year, 1, 1);
        (days_from_civil(self.year, self.month, self.day) - first + 1) as u32
    }

    /// `YYYYMMDD`, the form keys use whatever the ids look like.
    pub fn compact(&self) -> String {
        format!("{:04}{:02}{:02}", self.year, self.month, self.day)
    }
}

/// The first millisecond of the UTC day after the one `unix_ms` falls in.
pub fn next_day_start(unix_ms: u64) -> u64 {
    (unix_ms / DAY_MS + 1) * DAY_MS
}

/// Days since 1970-01-01 of a civil date.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date `days` after 1970-01-01.
pub fn civil_from_days(days: i64) -> Date {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    Date { year, month, day }
}

/// `unix_ms` as RFC 3339 in UTC with milliseconds: `2024-01-01T00:00:00.000Z`.
pub fn rfc3339(unix_ms: u64) -> String {
    let date = Date::of(unix_ms);
    let in_day = unix_ms % DAY_MS;
    let (h, m, s, ms) = (
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000,
    );
    let mut text = String::with_capacity(24);
    let _ = write!(
        text,
        "{:04}-{:02}-{:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z",
        date.year, date.month, date.day
    );
    text
}

/// Why a text is not an instant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid instant {input:?}: {reason} (write RFC 3339 such as \"2024-01-01T00:00:00Z\", or Unix milliseconds such as 1704067200000)"
)]
pub struct InstantError {
    input: String,
    reason: &'static str,
}

/// Parses an instant written as RFC 3339 (`2024-01-01T00:00:00Z`, `…T09:00:00.250+09:00`) or
/// as Unix milliseconds (`1288834974657`, Twitter's epoch), into Unix milliseconds. Instants
/// before 1970 are refused: no epoch needs one.
pub fn parse_instant(input: &str) -> Result<u64, InstantError> {
    let error = |reason| InstantError {
        input: input.to_owned(),
        reason,
    };
    let text = input.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| error("the number is too large"));
    }
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Result<i64, InstantError> {
        let part = b.get(range).ok_or_else(|| error("it is too short"))?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return Err(error("expected digits"));
        }
        Ok(part.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let separator = |at: usize, allowed: &[u8]| -> Result<(), InstantError> {
        match b.get(at) {
            Some(c) if allowed.contains(c) => Ok(()),
            _ => Err(error("expected YYYY-MM-DDTHH:MM:SS")),
        }
    };
    let year = digits(0..4)?;
    separator(4, b"-")?;
    let month = digits(5..7)?;
    separator(7, b"-")?;
    let day = digits(8..10)?;
    separator(10, b"Tt ")?;
    let hour = digits(11..13)?;
    separator(13, b":")?;
    let minute = digits(14..16)?;
    separator(16, b":")?;
    let second = digits(17..19)?;
    let mut at = 19;
    let mut millis = 0;
    if b.get(at) == Some(&b'.') {
        let start = at + 1;
        let end = start + b[start..].iter().take_while(|c| c.is_ascii_digit()).count();
        if end == start {
            return Err(error("expected digits after '.'"));
        }
        // Milliseconds: the first three digits; finer ones are dropped.
        let kept = &b[start..end.min(start + 3)];
        millis = kept.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0'))
            * 10_i64.pow(3 - kept.len() as u32);
        at = end;
    }
    let offset_minutes = match b.get(at) {
        Some(b'Z' | b'z') if at + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if at + 6 == b.len() => {
            separator(at + 3, b":")?;
            let minutes = digits(at + 1..at + 3)? * 60 + digits(at + 4..at + 6)?;
            if *sign == b'+' { minutes } else { -minutes }
        }
        _ => return Err(error("expected 'Z' or an offset such as +09:00 at the end")),
    };
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => return Err(error("the month is not 01 to 12")),
    };
    if day < 1 || day > days_in_month {
        return Err(error("the day is not in the month"));
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err(error("the time of day is out of range"));
    }
    let days = days_from_civil(year, month as u32, day as u32);
    let ms = ((days * 24 + hour) * 60 + minute - offset_minutes) * 60_000 + second * 1000 + millis;
    u64::try_from(ms).map_err(|_| error("it is before 1970"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_instants() {
        assert_eq!(parse_instant("2024-01-01T00:00:00Z"), Ok(1_704_067_200_000));
        assert_eq!(rfc3339(1_704_067_200_000), "2024-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_288_834_974_657), "2010-11-04T01:42:54.657Z");
        assert_eq!(parse_instant("1288834974657"), Ok(1_288_834_974_657));
        assert_eq!(
            parse_instant("2024-01-01T09:00:00.25+09:00"),
            Ok(1_704_067_200_250)
        );
        assert_eq!(Date::of(1_768_435_200_000).compact(), "20260115");
        assert_eq!(
            Date {
                year: 2024,
                month: 12,
                day: 31
            }
            .ordinal(),
            366
        );
    }

    #[test]
    fn bad_instants_say_why() {
        for (input, reason) in [
            ("2024-13-01T00:00:00Z", "the month is not 01 to 12"),
            ("2023-02-29T00:00:00Z", "the day is not in the month"),
            ("2024-01-01T00:00:00", "expected 'Z' or an offset"),
            ("1969-12-31T23:59:59Z", "it is before 1970"),
            ("yesterday", "expected digits"),
        ] {
            let error = parse_instant(input).unwrap_err().to_string();
            assert!(error.contains(reason), "{input}: {error}");
        }
    }

    proptest! {
        #[test]
        fn rfc3339_text_parses_back(ms in 0u64..253_402_300_800_000) {
            prop_assert_eq!(parse_instant(&rfc3339(ms)), Ok(ms));
        }

        #[test]
        fn civil_days_round_trip(days in -1_000_000i64..1_000_000) {
            let d = civil_from_days(days);
            prop_assert_eq!(days_from_civil(d.year, d.month, d.day), days);
        }
    }
}
