//! Commit timestamps as pgoutput sends them: microseconds since the PostgreSQL epoch.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds from the Unix epoch to the PostgreSQL epoch, 2000-01-01 00:00:00 UTC.
const PG_EPOCH_UNIX_SECONDS: u64 = 946_684_800;

/// A `TimestampTz` from the wire: microseconds since 2000-01-01 00:00:00 UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    /// The same instant as a [`SystemTime`], or `None` where the platform's clock type cannot
    /// hold it (never for commit times on Linux, whose `SystemTime` spans ±292 billion years).
    pub fn to_system_time(self) -> Option<SystemTime> {
        let epoch = UNIX_EPOCH.checked_add(Duration::from_secs(PG_EPOCH_UNIX_SECONDS))?;
        let offset = Duration::from_micros(self.0.unsigned_abs());
        if self.0 >= 0 {
            epoch.checked_add(offset)
        } else {
            epoch.checked_sub(offset)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(micros: i64) -> Option<SystemTime> {
        PgTimestamp(micros).to_system_time()
    }

    #[test]
    fn zero_is_the_postgres_epoch() {
        assert_eq!(unix(0), Some(UNIX_EPOCH + Duration::from_secs(946_684_800)));
    }

    #[test]
    fn counts_microseconds_both_ways() {
        let later = UNIX_EPOCH + Duration::from_micros(946_684_801_500_000);
        assert_eq!(unix(1_500_000), Some(later));
        // 1999-12-31 23:59:59 UTC
        assert_eq!(
            unix(-1_000_000),
            Some(UNIX_EPOCH + Duration::from_secs(946_684_799))
        );
    }

    #[test]
    fn extremes_do_not_panic() {
        assert!(PgTimestamp(i64::MAX).to_system_time().is_some());
        assert!(PgTimestamp(i64::MIN).to_system_time().is_some());
    }
}
