//! Redis day counters: `INCRBY` on one key per UTC day, rendered with the date in front
//! (`20260115-000123`), the key expiring after its day.
//!
//! The key for a day is `<key>:<YYYYMMDD>` whatever the ids look like, and the day is the
//! caller's (the generator's clock), so every process's ids of one day count on one key. One
//! `INCRBY key K` (pipelined with the key's `PEXPIREAT`, one round trip) reserves K counter
//! values handed out from memory: a crash loses the unused rest of a block as a gap. The key
//! expires `retain` after its day ends — longer than any caller's clock may lag, so that no
//! caller still counts on a key that expired and would start again at 1.
//!
//! Redis replicates asynchronously: a failover can lose increments the old primary
//! acknowledged, and the new primary then hands the same values out again. Where that is not
//! acceptable, use Snowflake or a database sequence.

use std::fmt;
use std::fmt::Write as _;
use std::str::FromStr;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex;

use crate::calendar::{self, DAY_MS, Date};
use crate::clock::{Clock, SystemClock};
use crate::error::IdError;

/// Default id format: the date, a dash and the counter padded to 6 digits.
pub const DEFAULT_FORMAT: &str = "%Y%m%d-%6n";

/// How a day's counter value is rendered: `strftime`-like. `%Y` year (4 digits), `%y` year (2
/// digits), `%m` month, `%d` day, `%j` day of the year (3 digits), `%n` the counter, `%6n` the
/// counter padded with zeros to 6 digits (longer values keep all their digits), `%%` a `%`.
///
/// A format must name the day (`%Y` or `%y`, and `%m` with `%d` or `%j`) and the counter once,
/// so that no two days render the same id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayFormat {
    text: String,
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Year,
    ShortYear,
    Month,
    Day,
    Ordinal,
    Counter { width: usize },
}

/// A format that cannot render unique ids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid id format {format:?}: {reason}")]
pub struct FormatError {
    format: String,
    reason: String,
}

impl FromStr for DayFormat {
    type Err = FormatError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |reason: String| FormatError {
            format: text.to_owned(),
            reason,
        };
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '%' {
                literal.push(c);
                continue;
            }
            let mut width = String::new();
            while let Some(d) = chars.next_if(char::is_ascii_digit) {
                width.push(d);
            }
            let piece =
                match chars.next() {
                    Some('%') if width.is_empty() => {
                        literal.push('%');
                        continue;
                    }
                    Some('n') => Piece::Counter {
                        width: if width.is_empty() {
                            0
                        } else {
                            width.parse().ok().filter(|w| *w <= 20).ok_or_else(|| {
                                error(format!("counter width {width} is above 20"))
                            })?
                        },
                    },
                    Some(field) if width.is_empty() => match field {
                        'Y' => Piece::Year,
                        'y' => Piece::ShortYear,
                        'm' => Piece::Month,
                        'd' => Piece::Day,
                        'j' => Piece::Ordinal,
                        other => {
                            return Err(error(format!(
                                "unknown field %{other} (known: %Y %y %m %d %j %n %%)"
                            )));
                        }
                    },
                    Some(other) => {
                        return Err(error(format!(
                            "a width is allowed only on %n, not on %{other}"
                        )));
                    }
                    None => return Err(error("it ends in the middle of a field".into())),
                };
            if !literal.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            }
            pieces.push(piece);
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        let has = |p: &Piece| pieces.contains(p);
        let counters = pieces
            .iter()
            .filter(|p| matches!(p, Piece::Counter { .. }))
            .count();
        if counters != 1 {
            return Err(error(format!(
                "it must hold the counter (%n) exactly once, and holds it {counters} times"
            )));
        }
        let names_day = (has(&Piece::Year) || has(&Piece::ShortYear))
            && (has(&Piece::Ordinal) || (has(&Piece::Month) && has(&Piece::Day)));
        if !names_day {
            return Err(error(
                "it must name the day (%Y or %y, and %m with %d or %j), or ids of different days repeat"
                    .into(),
            ));
        }
        Ok(DayFormat {
            text: text.to_owned(),
            pieces,
        })
    }
}

impl fmt::Display for DayFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Default for DayFormat {
    fn default() -> Self {
        DayFormat {
            text: DEFAULT_FORMAT.to_owned(),
            pieces: vec![
                Piece::Year,
                Piece::Month,
                Piece::Day,
                Piece::Literal("-".into()),
                Piece::Counter { width: 6 },
            ],
        }
    }
}

impl DayFormat {
    /// Renders counter value `n` of `date`.
    pub fn render(&self, date: Date, n: u64) -> String {
        let mut out = String::with_capacity(24);
        for piece in &self.pieces {
            let _ = match piece {
                Piece::Literal(text) => {
                    out.push_str(text);
                    Ok(())
                }
                Piece::Year => write!(out, "{:04}", date.year),
                Piece::ShortYear => write!(out, "{:02}", date.year.rem_euclid(100)),
                Piece::Month => write!(out, "{:02}", date.month),
                Piece::Day => write!(out, "{:02}", date.day),
                Piece::Ordinal => write!(out, "{:03}", date.ordinal()),
                Piece::Counter { width } => write!(out, "{n:0width$}"),
            };
        }
        out
    }
}

/// Default for [`CounterPlan::retain`]: keys live an hour past their day.
pub const DEFAULT_RETAIN: Duration = Duration::from_secs(3600);

/// What a day counter counts on and how it renders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterPlan {
    /// The key prefix; a day's key is `<key>:<YYYYMMDD>`.
    pub key: String,
    /// How ids are rendered.
    pub format: DayFormat,
    /// Counter values reserved by one `INCRBY` (1: one `INCR` per id).
    pub block: u64,
    /// How long a day's key outlives the day.
    pub retain: Duration,
}

/// Ids from a Redis day counter. Safe to share: callers take from the block in memory, and
/// one of them fetches the next block while the others wait. Connects on first use and again
/// after a failure.
pub struct RedisCounter<C: Clock = SystemClock> {
    client: redis::Client,
    plan: CounterPlan,
    state: Mutex<State>,
    clock: C,
}

#[derive(Default)]
struct State {
    connection: Option<MultiplexedConnection>,
    /// The day (days since 1970) the block belongs to.
    day: u64,
    /// Unused counter values of the block: `[next, end]`, empty when `next > end`.
    next: u64,
    end: u64,
}

impl<C: Clock> fmt::Debug for RedisCounter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The client holds the URL, which may hold a password.
        f.debug_struct("RedisCounter")
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

fn redis_error(context: impl Into<String>) -> impl FnOnce(redis::RedisError) -> IdError {
    let context = context.into();
    move |source| IdError::Redis { context, source }
}

impl RedisCounter<SystemClock> {
    /// A counter on the Redis at `url` (`redis://…`), on the system clock. No I/O.
    pub fn new(url: &str, plan: CounterPlan) -> Result<Self, IdError> {
        RedisCounter::with_clock(url, plan, SystemClock)
    }
}

impl<C: Clock> RedisCounter<C> {
    /// A counter whose days follow `clock`. No I/O.
    pub fn with_clock(url: &str, plan: CounterPlan, clock: C) -> Result<Self, IdError> {
        let client = redis::Client::open(url).map_err(redis_error("reading the Redis URL"))?;
        Ok(RedisCounter {
            client,
            plan,
            state: Mutex::new(State::default()),
            clock,
        })
    }

    /// The plan.
    pub fn plan(&self) -> &CounterPlan {
        &self.plan
    }

    /// The key the day of `unix_ms` counts on.
    pub fn key_for(&self, unix_ms: u64) -> String {
        format!("{}:{}", self.plan.key, Date::of(unix_ms).compact())
    }

    async fn connection(&self, state: &mut State) -> Result<MultiplexedConnection, IdError> {
        if let Some(connection) = &state.connection {
            return Ok(connection.clone());
        }
        let connection = self
            .client
            .get_multiplexed_async_connection()
            .await
            .map_err(redis_error("connecting to Redis"))?;
        state.connection = Some(connection.clone());
        Ok(connection)
    }

    /// Connects (if not yet) and pings the server.
    pub async fn ping(&self) -> Result<(), IdError> {
        let mut state = self.state.lock().await;
        let mut connection = self.connection(&mut state).await?;
        let result: Result<String, _> = redis::cmd("PING").query_async(&mut connection).await;
        if result.is_err() {
            state.connection = None;
        }
        result.map(drop).map_err(redis_error("pinging Redis"))
    }

    /// Issues `count` ids of the clock's current day, in increasing counter order.
    pub async fn next_ids(&self, count: usize) -> Result<Vec<String>, IdError> {
        let now = self.clock.now_ms();
        let today = now / DAY_MS;
        let date = calendar::civil_from_days(today as i64);
        let mut state = self.state.lock().await;
        if state.day != today {
            // A block of another day is of no use: its rest is a gap.
            state.day = today;
            state.next = 1;
            state.end = 0;
        }
        let mut values = Vec::with_capacity(count);
        take(&mut state, count, &mut values);
        let missing = (count - values.len()) as u64;
        if missing > 0 {
            let reserve = missing.max(self.plan.block);
            let key = self.key_for(now);
            let expire_at = calendar::next_day_start(now) + self.plan.retain.as_millis() as u64;
            let mut connection = self.connection(&mut state).await?;
            let result: Result<(u64,), _> = redis::pipe()
                .cmd("INCRBY")
                .arg(&key)
                .arg(reserve)
                .cmd("PEXPIREAT")
                .arg(&key)
                .arg(expire_at)
                .ignore()
                .query_async(&mut connection)
                .await;
            let (last,) = match result {
                Ok(last) => last,
                Err(error) => {
                    state.connection = None;
                    return Err(redis_error(format!("reserving {reserve} from {key}"))(
                        error,
                    ));
                }
            };
            state.next = last + 1 - reserve;
            state.end = last;
            take(&mut state, count - values.len(), &mut values);
        }
        Ok(values
            .into_iter()
            .map(|n| self.plan.format.render(date, n))
            .collect())
    }
}

fn take(state: &mut State, count: usize, values: &mut Vec<u64>) {
    let available = (state.end + 1).saturating_sub(state.next);
    let n = available.min(count as u64);
    values.extend(state.next..state.next + n);
    state.next += n;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_format_renders_the_seed_example() {
        let date = Date {
            year: 2026,
            month: 1,
            day: 15,
        };
        let format: DayFormat = DEFAULT_FORMAT.parse().unwrap();
        assert_eq!(format, DayFormat::default());
        assert_eq!(format.render(date, 123), "20260115-000123");
        assert_eq!(format.render(date, 1_234_567), "20260115-1234567");
        let other: DayFormat = "ORD-%y%j/%n %%".parse().unwrap();
        assert_eq!(other.render(date, 7), "ORD-26015/7 %");
    }

    #[test]
    fn formats_that_could_repeat_are_refused() {
        for (format, reason) in [
            ("%Y%m-%n", "must name the day"),
            ("%Y%m%d", "exactly once, and holds it 0 times"),
            ("%Y%m%d-%n-%n", "holds it 2 times"),
            ("%Y%m%d-%q%n", "unknown field %q"),
            ("%Y%4m%d-%n", "a width is allowed only on %n"),
            ("%Y%m%d-%n%", "ends in the middle"),
        ] {
            let error = format.parse::<DayFormat>().unwrap_err().to_string();
            assert!(error.contains(reason), "{format}: {error}");
        }
    }
}
