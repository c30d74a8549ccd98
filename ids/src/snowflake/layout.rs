//! Where each field of a Snowflake id sits, and what that means for how long ids last.
//!
//! From the most significant bit: unused bits (zero), the timestamp in milliseconds since the
//! epoch, the datacenter, the worker, the sequence within the millisecond. The seed's layout is
//! 41/5/5/13 — all 64 bits — so its ids are unsigned: they fit a signed 64-bit integer only
//! until the timestamp's top bit is first set. A layout of 63 bits or fewer never sets bit 63.

use std::fmt;
use std::str::FromStr;

use crate::calendar;

/// 2024-01-01T00:00:00Z, the seed's example instant: the default epoch.
pub const DEFAULT_EPOCH_MS: u64 = 1_704_067_200_000;
/// The seed's timestamp width: 41 bits of milliseconds, about 69.7 years.
pub const DEFAULT_TIMESTAMP_BITS: u8 = 41;
/// The seed's datacenter width: 32 datacenters.
pub const DEFAULT_DATACENTER_BITS: u8 = 5;
/// The seed's worker width: 32 workers per datacenter.
pub const DEFAULT_WORKER_BITS: u8 = 5;
/// The seed's sequence width: 8,192 ids per millisecond per worker.
pub const DEFAULT_SEQUENCE_BITS: u8 = 13;

/// An id's bit layout and epoch. Built only through [`Layout::new`], so every value is valid:
/// at most 64 bits in all, every field at least 1 bit wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    timestamp_bits: u8,
    datacenter_bits: u8,
    worker_bits: u8,
    sequence_bits: u8,
    epoch_ms: u64,
}

/// The fields of one id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    /// Milliseconds since the layout's epoch.
    pub timestamp: u64,
    /// The datacenter.
    pub datacenter: u64,
    /// The worker within its datacenter.
    pub worker: u64,
    /// The id's number within its millisecond.
    pub sequence: u64,
}

/// A layout that cannot work, or a value that does not fit it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// A field has no bits.
    #[error("every field needs at least 1 bit, and `{field}` is 0")]
    EmptyField {
        /// The setting, such as `datacenter_bits`.
        field: &'static str,
    },
    /// The fields add up to more than an id holds.
    #[error(
        "the fields add up to {total} bits ({timestamp}/{datacenter}/{worker}/{sequence}); an id holds at most 64"
    )]
    TooWide {
        /// The sum.
        total: u32,
        /// Timestamp bits.
        timestamp: u8,
        /// Datacenter bits.
        datacenter: u8,
        /// Worker bits.
        worker: u8,
        /// Sequence bits.
        sequence: u8,
    },
    /// A value does not fit its field.
    #[error("{field} {value} is out of range: the {bits}-bit field holds 0 to {max}")]
    OutOfRange {
        /// The field, such as `worker`.
        field: &'static str,
        /// The value given.
        value: u64,
        /// The field's width.
        bits: u8,
        /// The largest value it holds.
        max: u64,
    },
    /// The epoch is later than the clock.
    #[error("the epoch {epoch} is in the future (the clock reads {now}): ids count from it")]
    EpochInFuture {
        /// The epoch, as RFC 3339.
        epoch: String,
        /// The clock's time, as RFC 3339.
        now: String,
    },
    /// A number has bits set above the layout's width.
    #[error("{id} is not an id of this layout: it has bits set above the layout's {total} bits")]
    NotAnId {
        /// The number.
        id: u64,
        /// The layout's width.
        total: u32,
    },
    /// A layout written as text is not `T/D/W/S`.
    #[error(
        "invalid layout {0:?}: write four bit widths as timestamp/datacenter/worker/sequence, such as 41/5/5/13"
    )]
    Syntax(String),
}

/// `2^bits - 1`, for widths of 0 to 64.
const fn mask(bits: u8) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

impl Layout {
    /// The seed's layout (41/5/5/13) from 2024-01-01T00:00:00Z.
    pub const SEED: Layout = Layout {
        timestamp_bits: DEFAULT_TIMESTAMP_BITS,
        datacenter_bits: DEFAULT_DATACENTER_BITS,
        worker_bits: DEFAULT_WORKER_BITS,
        sequence_bits: DEFAULT_SEQUENCE_BITS,
        epoch_ms: DEFAULT_EPOCH_MS,
    };

    /// A layout of the given widths (most significant first) counting from `epoch_ms`.
    pub fn new(
        timestamp_bits: u8,
        datacenter_bits: u8,
        worker_bits: u8,
        sequence_bits: u8,
        epoch_ms: u64,
    ) -> Result<Layout, LayoutError> {
        for (field, bits) in [
            ("timestamp_bits", timestamp_bits),
            ("datacenter_bits", datacenter_bits),
            ("worker_bits", worker_bits),
            ("sequence_bits", sequence_bits),
        ] {
            if bits == 0 {
                return Err(LayoutError::EmptyField { field });
            }
        }
        let total = u32::from(timestamp_bits)
            + u32::from(datacenter_bits)
            + u32::from(worker_bits)
            + u32::from(sequence_bits);
        if total > 64 {
            return Err(LayoutError::TooWide {
                total,
                timestamp: timestamp_bits,
                datacenter: datacenter_bits,
                worker: worker_bits,
                sequence: sequence_bits,
            });
        }
        Ok(Layout {
            timestamp_bits,
            datacenter_bits,
            worker_bits,
            sequence_bits,
            epoch_ms,
        })
    }

    /// The same widths counting from another epoch.
    pub fn with_epoch(self, epoch_ms: u64) -> Layout {
        Layout { epoch_ms, ..self }
    }

    /// The epoch, in Unix milliseconds.
    pub fn epoch_ms(&self) -> u64 {
        self.epoch_ms
    }

    /// Timestamp bits.
    pub fn timestamp_bits(&self) -> u8 {
        self.timestamp_bits
    }

    /// Datacenter bits.
    pub fn datacenter_bits(&self) -> u8 {
        self.datacenter_bits
    }

    /// Worker bits.
    pub fn worker_bits(&self) -> u8 {
        self.worker_bits
    }

    /// Sequence bits.
    pub fn sequence_bits(&self) -> u8 {
        self.sequence_bits
    }

    /// All fields' bits: 64 for the seed's layout, 63 for Twitter's.
    pub fn total_bits(&self) -> u32 {
        u32::from(self.timestamp_bits)
            + u32::from(self.datacenter_bits)
            + u32::from(self.worker_bits)
            + u32::from(self.sequence_bits)
    }

    /// The largest timestamp (milliseconds since the epoch) the layout holds.
    pub fn max_timestamp(&self) -> u64 {
        mask(self.timestamp_bits)
    }

    /// The largest datacenter number.
    pub fn max_datacenter(&self) -> u64 {
        mask(self.datacenter_bits)
    }

    /// The largest worker number.
    pub fn max_worker(&self) -> u64 {
        mask(self.worker_bits)
    }

    /// The largest sequence number within a millisecond.
    pub fn max_sequence(&self) -> u64 {
        mask(self.sequence_bits)
    }

    /// Ids one worker can issue per millisecond: the layout's cap.
    pub fn ids_per_ms(&self) -> u64 {
        self.max_sequence().saturating_add(1)
    }

    pub(crate) fn worker_shift(&self) -> u32 {
        u32::from(self.sequence_bits)
    }

    pub(crate) fn datacenter_shift(&self) -> u32 {
        self.worker_shift() + u32::from(self.worker_bits)
    }

    pub(crate) fn timestamp_shift(&self) -> u32 {
        self.datacenter_shift() + u32::from(self.datacenter_bits)
    }

    /// Checks that `value` fits `field`'s width.
    pub fn check_field(&self, field: &'static str, value: u64) -> Result<u64, LayoutError> {
        let bits = match field {
            "timestamp" => self.timestamp_bits,
            "datacenter" => self.datacenter_bits,
            "worker" => self.worker_bits,
            _ => self.sequence_bits,
        };
        let max = mask(bits);
        if value > max {
            return Err(LayoutError::OutOfRange {
                field,
                value,
                bits,
                max,
            });
        }
        Ok(value)
    }

    /// The id made of `parts`; every part must fit its field.
    pub fn encode(&self, parts: Parts) -> Result<u64, LayoutError> {
        let timestamp = self.check_field("timestamp", parts.timestamp)?;
        let datacenter = self.check_field("datacenter", parts.datacenter)?;
        let worker = self.check_field("worker", parts.worker)?;
        let sequence = self.check_field("sequence", parts.sequence)?;
        // No shift reaches 64: the timestamp has at least 1 bit, so it starts at bit 63 or
        // lower.
        Ok((timestamp << self.timestamp_shift())
            | (datacenter << self.datacenter_shift())
            | (worker << self.worker_shift())
            | sequence)
    }

    /// The parts of `id`; refused if it has bits above the layout's width.
    pub fn decode(&self, id: u64) -> Result<Parts, LayoutError> {
        let total = self.total_bits();
        if total < 64 && id >> total != 0 {
            return Err(LayoutError::NotAnId { id, total });
        }
        Ok(Parts {
            timestamp: (id >> self.timestamp_shift()) & mask(self.timestamp_bits),
            datacenter: (id >> self.datacenter_shift()) & mask(self.datacenter_bits),
            worker: (id >> self.worker_shift()) & mask(self.worker_bits),
            sequence: id & mask(self.sequence_bits),
        })
    }

    /// The Unix millisecond of a timestamp field value.
    pub fn unix_ms(&self, timestamp: u64) -> u64 {
        self.epoch_ms.saturating_add(timestamp)
    }

    /// When ids first need bit 63, so no longer fit a signed 64-bit integer (PostgreSQL
    /// `bigint`, Java `long`): the Unix millisecond at which the timestamp's top bit is first
    /// set. `None` for layouts of 63 bits or fewer, which never set it.
    pub fn signed_until_ms(&self) -> Option<u64> {
        (self.total_bits() == 64).then(|| self.unix_ms(1u64 << (self.timestamp_bits - 1)))
    }

    /// The first Unix millisecond the timestamp field cannot hold: ids run out then.
    pub fn runs_out_ms(&self) -> u64 {
        self.unix_ms(self.max_timestamp()).saturating_add(1)
    }

    /// When ids first exceed 2^53, the largest integer a JavaScript number (a JSON number in
    /// most parsers) holds exactly; `None` if no id of the layout does.
    pub fn exceeds_js_from_ms(&self) -> Option<u64> {
        let shift = self.timestamp_shift();
        if self.total_bits() <= 53 {
            None
        } else if shift >= 53 {
            // The fields below the timestamp alone can pass 2^53.
            Some(self.epoch_ms)
        } else {
            Some(self.unix_ms(1u64 << (53 - shift)))
        }
    }

    /// What the layout means for storing ids, in one sentence with both dates.
    pub fn lifetime(&self) -> String {
        let runs_out = calendar::rfc3339(self.runs_out_ms());
        match self.signed_until_ms() {
            Some(until) => format!(
                "ids use all 64 bits: they fit a signed 64-bit integer (PostgreSQL bigint, Java long) until {}, then only an unsigned one; the {}-bit timestamp runs out on {runs_out}",
                calendar::rfc3339(until),
                self.timestamp_bits
            ),
            None => format!(
                "ids use {} bits, so they always fit a signed 64-bit integer (PostgreSQL bigint, Java long); the {}-bit timestamp runs out on {runs_out}",
                self.total_bits(),
                self.timestamp_bits
            ),
        }
    }
}

impl Default for Layout {
    fn default() -> Self {
        Layout::SEED
    }
}

/// `41/5/5/13`.
impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            self.timestamp_bits, self.datacenter_bits, self.worker_bits, self.sequence_bits
        )
    }
}

/// Parses `T/D/W/S` bit widths, with the default epoch.
impl FromStr for Layout {
    type Err = LayoutError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let widths: Vec<u8> = s
            .split('/')
            .map(|w| w.trim().parse::<u8>())
            .collect::<Result<_, _>>()
            .map_err(|_| LayoutError::Syntax(s.to_owned()))?;
        match widths[..] {
            [t, d, w, q] => Layout::new(t, d, w, q, DEFAULT_EPOCH_MS),
            _ => Err(LayoutError::Syntax(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_seed_layout_is_signed_until_2058_and_runs_out_in_2093() {
        let seed = Layout::SEED;
        assert_eq!(seed.total_bits(), 64);
        assert_eq!(seed.ids_per_ms(), 8192);
        let until = calendar::rfc3339(seed.signed_until_ms().unwrap());
        let out = calendar::rfc3339(seed.runs_out_ms());
        assert!(until.starts_with("2058-11-"), "{until}");
        assert!(out.starts_with("2093-09-"), "{out}");
        assert_eq!(
            seed.exceeds_js_from_ms(),
            Some(DEFAULT_EPOCH_MS + (1 << 30))
        );
    }

    #[test]
    fn one_setting_gives_a_63_bit_layout() {
        let twitter: Layout = "41/5/5/12".parse().unwrap();
        assert_eq!(twitter.total_bits(), 63);
        assert_eq!(twitter.signed_until_ms(), None);
        assert!(
            twitter
                .lifetime()
                .contains("always fit a signed 64-bit integer")
        );
        let top = twitter
            .encode(Parts {
                timestamp: twitter.max_timestamp(),
                datacenter: 31,
                worker: 31,
                sequence: 4095,
            })
            .unwrap();
        assert_eq!(top, i64::MAX as u64);
    }

    #[test]
    fn invalid_layouts_and_values_are_refused_with_the_rule() {
        assert_eq!(
            Layout::new(41, 0, 5, 13, 0).unwrap_err().to_string(),
            "every field needs at least 1 bit, and `datacenter_bits` is 0"
        );
        assert!(
            Layout::new(42, 5, 5, 13, 0)
                .unwrap_err()
                .to_string()
                .starts_with("the fields add up to 65 bits")
        );
        assert_eq!(
            Layout::SEED
                .check_field("worker", 32)
                .unwrap_err()
                .to_string(),
            "worker 32 is out of range: the 5-bit field holds 0 to 31"
        );
        let twitter: Layout = "41/5/5/12".parse().unwrap();
        assert!(matches!(
            twitter.decode(u64::MAX),
            Err(LayoutError::NotAnId { total: 63, .. })
        ));
        assert!(matches!(
            "41/10/12".parse::<Layout>(),
            Err(LayoutError::Syntax(_))
        ));
    }

    /// Every layout the validator accepts: four widths of at least 1 bit, at most 64 in all.
    fn layouts() -> impl Strategy<Value = Layout> {
        (1u8..=61, 1u8..=61, 1u8..=61, 1u8..=61, any::<u64>())
            .prop_filter("at most 64 bits", |(t, d, w, s, _)| {
                u32::from(*t) + u32::from(*d) + u32::from(*w) + u32::from(*s) <= 64
            })
            .prop_map(|(t, d, w, s, epoch)| Layout::new(t, d, w, s, epoch).unwrap())
    }

    proptest! {
        #[test]
        fn decode_inverts_encode_for_every_accepted_layout(
            layout in layouts(),
            raw in any::<[u64; 4]>(),
        ) {
            let parts = Parts {
                timestamp: raw[0] & layout.max_timestamp(),
                datacenter: raw[1] & layout.max_datacenter(),
                worker: raw[2] & layout.max_worker(),
                sequence: raw[3] & layout.max_sequence(),
            };
            let id = layout.encode(parts).unwrap();
            prop_assert_eq!(layout.decode(id).unwrap(), parts);
            prop_assert_eq!(layout.to_string().parse::<Layout>().unwrap(), layout.with_epoch(DEFAULT_EPOCH_MS));
        }

        #[test]
        fn the_validator_accepts_exactly_the_documented_layouts(
            t in 0u8..=70, d in 0u8..=70, w in 0u8..=70, s in 0u8..=70,
        ) {
            let valid = t >= 1 && d >= 1 && w >= 1 && s >= 1
                && u32::from(t) + u32::from(d) + u32::from(w) + u32::from(s) <= 64;
            prop_assert_eq!(Layout::new(t, d, w, s, 0).is_ok(), valid);
        }

        #[test]
        fn ids_order_as_their_timestamps_then_sequences(
            layout in layouts(),
            a in any::<(u64, u64)>(),
            b in any::<(u64, u64)>(),
        ) {
            let part = |(t, s): (u64, u64)| Parts {
                timestamp: t & layout.max_timestamp(),
                datacenter: 1,
                worker: 1,
                sequence: s & layout.max_sequence(),
            };
            let (pa, pb) = (part(a), part(b));
            let (ia, ib) = (layout.encode(pa).unwrap(), layout.encode(pb).unwrap());
            prop_assert_eq!(ia.cmp(&ib), (pa.timestamp, pa.sequence).cmp(&(pb.timestamp, pb.sequence)));
        }
    }
}
