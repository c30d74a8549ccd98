//! The order of each key's events: which of them may go out now, which wait, and what a
//! settle or a nack releases.
//!
//! The events of a key go out in the order they were accepted, pipelined on the key's lane
//! (which keeps their order), up to `max_in_flight_per_key` at once. A nack stops the key: its
//! later events are held back until every nacked record is settled, so none that goes out
//! after a nack overtakes the retried one. Bookkeeping is kept only for keys with something in
//! flight, held back or waiting:
//! - `in_flight`: its records out (published, or being published) and not yet settled;
//! - `blocking`: its records that were nacked and are not yet settled;
//! - `held`: its records waiting, in order, behind `blocking` or `max_in_flight_per_key`;
//! - `retrying`: its nacked records waiting out their backoff, in acceptance order, and when
//!   the last of them is due.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use sluice_pipeline::Text;

use super::lane::Record;

/// What the per-key order needs to know of a record.
pub(crate) trait Ordered {
    /// The ordering key.
    fn key(&self) -> &Text;
    /// The order of acceptance.
    fn seq(&self) -> u64;
}

impl Ordered for Record {
    fn key(&self) -> &Text {
        &self.key
    }

    fn seq(&self) -> u64 {
        self.seq
    }
}

/// The bookkeeping of one key (see the module documentation).
#[derive(Debug)]
struct KeyState<R> {
    in_flight: usize,
    blocking: usize,
    held: VecDeque<R>,
    retrying: Vec<R>,
    retry_at: Option<Instant>,
}

impl<R> Default for KeyState<R> {
    fn default() -> Self {
        KeyState {
            in_flight: 0,
            blocking: 0,
            held: VecDeque::new(),
            retrying: Vec::new(),
            retry_at: None,
        }
    }
}

impl<R> KeyState<R> {
    fn is_idle(&self) -> bool {
        self.in_flight == 0
            && self.blocking == 0
            && self.held.is_empty()
            && self.retrying.is_empty()
    }
}

/// The per-key order of every record the sink holds.
#[derive(Debug)]
pub(crate) struct KeyOrder<R> {
    /// `max_in_flight_per_key`.
    limit: Option<usize>,
    keys: HashMap<Text, KeyState<R>>,
}

impl<R: Ordered> KeyOrder<R> {
    /// An order allowing `limit` records of a key out at once (any number without one).
    pub fn new(limit: Option<usize>) -> Self {
        KeyOrder {
            limit,
            keys: HashMap::new(),
        }
    }

    /// Whether no key has anything out, held back or waiting.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// A newly accepted record: handed back when it may go out now (it counts as out), or held
    /// behind its key's earlier ones and handed out by [`KeyOrder::settled`] later.
    pub fn admit(&mut self, record: R) -> Option<R> {
        let limit = self.limit;
        let state = self.keys.entry(record.key().clone()).or_default();
        if state.blocking > 0
            || !state.held.is_empty()
            || limit.is_some_and(|limit| state.in_flight >= limit)
        {
            state.held.push_back(record);
            return None;
        }
        state.in_flight += 1;
        Some(record)
    }

    /// One of `key`'s records out is settled (`was_nacked`: it had been nacked before): hands
    /// back, in order, the held records that may go out now (they count as out).
    pub fn settled(&mut self, key: &Text, was_nacked: bool) -> Vec<R> {
        let limit = self.limit;
        let Some(state) = self.keys.get_mut(key) else {
            return Vec::new();
        };
        state.in_flight = state.in_flight.saturating_sub(1);
        if was_nacked {
            state.blocking = state.blocking.saturating_sub(1);
        }
        let mut release = Vec::new();
        while state.blocking == 0 && limit.is_none_or(|limit| state.in_flight < limit) {
            let Some(record) = state.held.pop_front() else {
                break;
            };
            state.in_flight += 1;
            release.push(record);
        }
        if state.is_idle() {
            self.keys.remove(key);
        }
        release
    }

    /// A record out was nacked (`first`: for the first time): it waits, no longer out, until
    /// `due`, and its key holds back everything after it until it is settled. Its key retries
    /// all its nacked records together, when the last of them is due.
    pub fn nacked(&mut self, record: R, first: bool, due: Instant) {
        let state = self.keys.entry(record.key().clone()).or_default();
        state.in_flight = state.in_flight.saturating_sub(1);
        if first {
            state.blocking += 1;
        }
        state.retry_at = Some(state.retry_at.map_or(due, |at| at.max(due)));
        let at = state.retrying.partition_point(|r| r.seq() < record.seq());
        state.retrying.insert(at, record);
    }

    /// When `key`'s nacked records are due to go out again (`None` when it has none waiting).
    pub fn retry_at(&self, key: &Text) -> Option<Instant> {
        self.keys.get(key)?.retry_at
    }

    /// Hands back `key`'s nacked records, in acceptance order, to go out again now (they count
    /// as out again; the key stays blocked until they are settled).
    pub fn retry(&mut self, key: &Text) -> Vec<R> {
        match self.keys.get_mut(key) {
            Some(state) => {
                state.retry_at = None;
                state.in_flight += state.retrying.len();
                std::mem::take(&mut state.retrying)
            }
            None => Vec::new(),
        }
    }

    /// Hands back every key's nacked records without waiting out their backoff (a new
    /// connection publishes them again first), appended to `out`; they count as out again.
    pub fn retry_all(&mut self, out: &mut Vec<R>) {
        for state in self.keys.values_mut() {
            state.in_flight += state.retrying.len();
            state.retry_at = None;
            out.append(&mut state.retrying);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Duration;

    #[derive(Debug)]
    struct Item {
        key: Text,
        seq: u64,
        nacks: u32,
    }

    impl Ordered for Item {
        fn key(&self) -> &Text {
            &self.key
        }

        fn seq(&self) -> u64 {
            self.seq
        }
    }

    fn item(key: &str, seq: u64) -> Item {
        Item {
            key: key.into(),
            seq,
            nacks: 0,
        }
    }

    fn seqs(items: &[Item]) -> Vec<u64> {
        items.iter().map(|i| i.seq).collect()
    }

    #[test]
    fn a_key_pipelines_up_to_its_limit_and_other_keys_do_not_wait() {
        let mut order = KeyOrder::new(Some(2));
        assert!(order.admit(item("a", 0)).is_some());
        assert!(order.admit(item("a", 1)).is_some());
        assert!(order.admit(item("a", 2)).is_none(), "the limit holds it");
        assert!(order.admit(item("b", 3)).is_some(), "another key goes on");
        assert!(order.admit(item("a", 4)).is_none());
        assert_eq!(seqs(&order.settled(&"a".into(), false)), [2]);
        assert_eq!(seqs(&order.settled(&"a".into(), false)), [4]);
        for key in ["a", "a", "a", "b"] {
            assert!(order.settled(&key.into(), false).is_empty());
        }
        assert!(order.is_empty());
    }

    #[test]
    fn a_nack_holds_the_key_back_until_the_retried_record_is_settled() {
        let mut order = KeyOrder::new(None);
        let key: Text = "a".into();
        let now = Instant::now();
        let first = order.admit(item("a", 0)).unwrap();
        order.admit(item("a", 1)).unwrap();
        order.nacked(first, true, now + Duration::from_secs(1));
        assert!(order.admit(item("a", 2)).is_none(), "held behind the nack");
        assert_eq!(order.retry_at(&key), Some(now + Duration::from_secs(1)));
        assert!(
            order.settled(&key, false).is_empty(),
            "seq 1 settles; 0 still blocks"
        );
        let retried = order.retry(&key);
        assert_eq!(seqs(&retried), [0]);
        assert_eq!(order.retry_at(&key), None);
        assert_eq!(seqs(&order.settled(&key, true)), [2]);
        assert!(order.settled(&key, false).is_empty());
        assert!(order.is_empty());
    }

    /// One step of a random interleaving.
    #[derive(Debug, Clone)]
    enum Op {
        /// Accept a new record of key `0..KEYS`.
        Accept(usize),
        /// The broker confirms (or the sink otherwise settles) the record out at this index.
        Settle(usize),
        /// The broker nacks the record out at this index, with a backoff of this many ticks.
        Nack(usize, u8),
        /// The clock moves on by this many ticks, and every key whose retry is due retries.
        Tick(u8),
        /// The connection is lost: every nacked record goes out again at once.
        Reconnect,
    }

    const KEYS: usize = 3;

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..KEYS).prop_map(Op::Accept),
            4 => any::<usize>().prop_map(Op::Settle),
            2 => (any::<usize>(), 0u8..4).prop_map(|(i, wait)| Op::Nack(i, wait)),
            2 => (0u8..4).prop_map(Op::Tick),
            1 => Just(Op::Reconnect),
        ]
    }

    /// What has been seen of one key from outside.
    #[derive(Default)]
    struct Seen {
        /// The highest sequence number that went out for the first time.
        last_first_out: Option<u64>,
        /// Records nacked and not yet settled.
        nacked: BTreeSet<u64>,
        out: usize,
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Random records over a few keys, settles, nacks with backoffs, due retries and lost
        /// connections, in any interleaving: a key's records first go out in acceptance order;
        /// none goes out for the first time while an earlier one of its key is nacked and not
        /// settled; nacked records go out again in acceptance order and not before they are
        /// due (unless the connection was lost); a key never has more than its limit out; and
        /// once everything is settled, every record accepted has gone out and nothing is left.
        #[test]
        fn a_later_event_of_a_key_never_overtakes_an_earlier_unsettled_nack(
            limit in prop::option::of(1usize..4),
            ops in prop::collection::vec(op(), 1..80),
        ) {
            let start = Instant::now();
            let tick = Duration::from_millis(1);
            let mut now = start;
            let mut order = KeyOrder::new(limit);
            let mut out: Vec<Item> = Vec::new();
            let mut seen: BTreeMap<Text, Seen> = BTreeMap::new();
            let mut accepted = 0u64;
            let mut settled = 0u64;
            let mut due: BTreeMap<u64, Instant> = BTreeMap::new();

            // Records going out: checks the ordering rules and counts them out.
            let send = |records: Vec<Item>,
                            retried: bool,
                            now: Instant,
                            due: &BTreeMap<u64, Instant>,
                            out: &mut Vec<Item>,
                            seen: &mut BTreeMap<Text, Seen>|
             -> Result<(), TestCaseError> {
                let mut previous: Option<u64> = None;
                for record in records {
                    let key = seen.entry(record.key.clone()).or_default();
                    if retried {
                        prop_assert!(key.nacked.contains(&record.seq));
                        prop_assert!(previous.is_none_or(|p| p < record.seq), "retries in order");
                        if let Some(&at) = due.get(&record.seq) {
                            prop_assert!(at <= now, "retried before its backoff ended");
                        }
                        previous = Some(record.seq);
                    } else {
                        prop_assert!(
                            key.last_first_out.is_none_or(|last| last < record.seq),
                            "seq {} went out after {:?}", record.seq, key.last_first_out
                        );
                        prop_assert!(
                            key.nacked.iter().all(|&n| n > record.seq),
                            "seq {} went out while {:?} of its key were nacked", record.seq, key.nacked
                        );
                        key.last_first_out = Some(record.seq);
                    }
                    key.out += 1;
                    if let Some(limit) = limit {
                        prop_assert!(key.out <= limit, "{} out, limit {limit}", key.out);
                    }
                    out.push(record);
                }
                Ok(())
            };

            for op in ops {
                match op {
                    Op::Accept(k) => {
                        let record = item(&format!("k{k}"), accepted);
                        accepted += 1;
                        if let Some(record) = order.admit(record) {
                            send(vec![record], false, now, &due, &mut out, &mut seen)?;
                        }
                    }
                    Op::Settle(i) if !out.is_empty() => {
                        let record = out.remove(i % out.len());
                        let key = seen.get_mut(&record.key).unwrap();
                        key.out -= 1;
                        key.nacked.remove(&record.seq);
                        settled += 1;
                        let released = order.settled(&record.key, record.nacks > 0);
                        send(released, false, now, &due, &mut out, &mut seen)?;
                    }
                    Op::Nack(i, wait) if !out.is_empty() => {
                        let mut record = out.remove(i % out.len());
                        record.nacks += 1;
                        let key = seen.get_mut(&record.key).unwrap();
                        key.out -= 1;
                        key.nacked.insert(record.seq);
                        let at = now + tick * u32::from(wait);
                        due.insert(record.seq, at);
                        let first = record.nacks == 1;
                        order.nacked(record, first, at);
                    }
                    Op::Settle(_) | Op::Nack(..) => {}
                    Op::Tick(ticks) => {
                        now += tick * u32::from(ticks);
                        for k in 0..KEYS {
                            let key: Text = format!("k{k}").into();
                            if order.retry_at(&key).is_some_and(|at| at <= now) {
                                let records = order.retry(&key);
                                send(records, true, now, &due, &mut out, &mut seen)?;
                            }
                        }
                    }
                    Op::Reconnect => {
                        let mut records = Vec::new();
                        order.retry_all(&mut records);
                        due.clear();
                        records.sort_by_key(|r| r.seq);
                        send(records, true, now, &due, &mut out, &mut seen)?;
                    }
                }
            }

            // Drain: settle everything, retrying whatever is nacked, until nothing is left.
            loop {
                if let Some(record) = out.pop() {
                    seen.get_mut(&record.key).unwrap().out -= 1;
                    seen.get_mut(&record.key).unwrap().nacked.remove(&record.seq);
                    settled += 1;
                    let released = order.settled(&record.key, record.nacks > 0);
                    send(released, false, now, &due, &mut out, &mut seen)?;
                    continue;
                }
                let mut records = Vec::new();
                order.retry_all(&mut records);
                if records.is_empty() {
                    break;
                }
                due.clear();
                records.sort_by_key(|r| r.seq);
                send(records, true, now, &due, &mut out, &mut seen)?;
            }
            prop_assert_eq!(settled, accepted, "every record went out and was settled");
            prop_assert!(order.is_empty(), "nothing left once everything is settled");
        }
    }
}
