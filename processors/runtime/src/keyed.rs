//! Per-key ordering within a partition (Parallel Consumer's KEY mode): the revisions of one
//! response are handled one at a time and in offset order, while different responses run
//! concurrently.
//!
//! Invariant: at most one item per key is running, and a key's items start in the order they
//! were pushed. Memory is bounded by the keys in flight: a key is forgotten as soon as it has
//! nothing running or waiting.
//!
//! Keys are 64-bit digests of the ordering keys (response ids), made by the engine with a
//! per-process random seed: no string is copied or compared per record. Two different response
//! ids with the same digest are treated as one key: they run one after the other, in offset
//! order, which keeps every promise and only costs concurrency, for a pair that is vanishingly
//! rare (about n² / 2⁶⁵ for n keys in flight) and that clients cannot aim for without the seed.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};

/// The digests are already uniformly spread: the maps only need a cheap, fixed mixing of them.
type Hasher = foldhash::fast::FixedState;

/// Items with the same key run one at a time in arrival order; different keys run concurrently.
#[derive(Debug)]
pub struct KeyedQueue<T> {
    /// The busy keys: exactly those with an item running. An idle key is not here.
    busy: HashSet<u64, Hasher>,
    /// The items waiting behind a busy key's running one, oldest first: only for keys that have
    /// any (a subset of `busy`, never an empty queue). Most keys never have a second item in
    /// flight, so most records touch only the small `busy` set.
    queues: HashMap<u64, VecDeque<T>, Hasher>,
    /// Items waiting over all keys, kept so that `waiting()` does not walk every key, and so
    /// that `finish` skips `queues` while nothing waits.
    waiting: usize,
}

impl<T> KeyedQueue<T> {
    pub fn new() -> Self {
        KeyedQueue {
            busy: HashSet::default(),
            queues: HashMap::default(),
            waiting: 0,
        }
    }

    /// Adds an item. If its key has nothing running, the item is returned to be run now (the
    /// key is now busy); otherwise it waits behind the key's earlier items and `None` is
    /// returned.
    pub fn push(&mut self, key: u64, item: T) -> Option<T> {
        if self.busy.insert(key) {
            return Some(item);
        }
        self.queues.entry(key).or_default().push_back(item);
        self.waiting += 1;
        None
    }

    /// The key's running item finished. Returns the key's next waiting item (the key stays
    /// busy), or `None` (the key becomes idle and is forgotten, so memory is bounded by keys in
    /// flight). Finishing a key that is not busy is a no-op returning `None`.
    pub fn finish(&mut self, key: u64) -> Option<T> {
        if self.waiting > 0
            && let Entry::Occupied(mut queue) = self.queues.entry(key)
        {
            let next = queue.get_mut().pop_front();
            if queue.get().is_empty() {
                queue.remove();
            }
            if next.is_some() {
                self.waiting -= 1;
                return next;
            }
        }
        self.busy.remove(&key);
        None
    }

    /// Items waiting (not running).
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// Keys with an item running.
    pub fn busy_keys(&self) -> usize {
        self.busy.len()
    }

    /// Drops everything (partition revoked); returns the number of waiting items dropped.
    /// Running items are the caller's: it knows whether to wait for them or abandon them.
    pub fn clear(&mut self) -> usize {
        let dropped = self.waiting;
        self.busy = HashSet::default();
        self.queues = HashMap::default();
        self.waiting = 0;
        dropped
    }
}

impl<T> Default for KeyedQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn different_keys_run_at_once() {
        let mut queue = KeyedQueue::new();
        assert_eq!(queue.push(1, 1), Some(1));
        assert_eq!(queue.push(2, 2), Some(2));
        assert_eq!(queue.busy_keys(), 2);
        assert_eq!(queue.waiting(), 0);
    }

    #[test]
    fn same_key_waits_and_runs_in_push_order() {
        let mut queue = KeyedQueue::new();
        assert_eq!(queue.push(1, 1), Some(1));
        assert_eq!(queue.push(1, 2), None);
        assert_eq!(queue.push(1, 3), None);
        assert_eq!(queue.waiting(), 2);
        assert_eq!(queue.busy_keys(), 1);
        assert_eq!(queue.finish(1), Some(2));
        assert_eq!(queue.finish(1), Some(3));
        assert_eq!(queue.waiting(), 0);
        assert_eq!(queue.busy_keys(), 1);
        assert_eq!(queue.finish(1), None);
        assert_eq!(queue.busy_keys(), 0);
        // Idle again: the next item runs at once.
        assert_eq!(queue.push(1, 4), Some(4));
    }

    #[test]
    fn finishing_an_idle_key_is_a_no_op() {
        let mut queue: KeyedQueue<u32> = KeyedQueue::new();
        assert_eq!(queue.finish(1), None);
        assert_eq!(queue.busy_keys(), 0);
    }

    #[test]
    fn clear_drops_waiting_items_and_forgets_keys() {
        let mut queue = KeyedQueue::new();
        queue.push(1, 1);
        queue.push(1, 2);
        queue.push(2, 3);
        queue.push(2, 4);
        queue.push(2, 5);
        assert_eq!(queue.clear(), 3);
        assert_eq!(queue.waiting(), 0);
        assert_eq!(queue.busy_keys(), 0);
        assert_eq!(queue.push(2, 6), Some(6));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(u8),
        Finish(u8),
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            10 => (0..4u8).prop_map(Op::Push),
            10 => (0..4u8).prop_map(Op::Finish),
            1 => Just(Op::Clear),
        ]
    }

    proptest! {
        #[test]
        fn same_key_items_start_in_push_order_one_at_a_time(
            ops in prop::collection::vec(op(), 0..300),
        ) {
            let mut queue = KeyedQueue::new();
            // Per key: the items pushed and not dropped by a clear, in push order, and the
            // items started so far; the key is running while `running` holds it.
            let mut pushed: BTreeMap<u8, Vec<usize>> = BTreeMap::new();
            let mut started: BTreeMap<u8, Vec<usize>> = BTreeMap::new();
            let mut running: BTreeSet<u8> = BTreeSet::new();
            for (seq, op) in ops.into_iter().enumerate() {
                let out = match op {
                    Op::Push(key) => {
                        pushed.entry(key).or_default().push(seq);
                        queue.push(u64::from(key), (key, seq))
                    }
                    Op::Finish(key) => {
                        let next = queue.finish(u64::from(key));
                        if next.is_none() {
                            running.remove(&key);
                        }
                        next
                    }
                    Op::Clear => {
                        let expected: usize = pushed
                            .iter()
                            .map(|(key, items)| items.len() - started.get(key).map_or(0, Vec::len))
                            .sum();
                        prop_assert_eq!(queue.clear(), expected);
                        pushed.clear();
                        started.clear();
                        running.clear();
                        None
                    }
                };
                if let Some((key, item)) = out {
                    // Never two at once for a key: a finish hands over, it does not add.
                    if !matches!(op, Op::Finish(_)) {
                        prop_assert!(running.insert(key), "key {key} started twice");
                    }
                    prop_assert!(running.contains(&key));
                    let started = started.entry(key).or_default();
                    started.push(item);
                    let order = pushed.get(&key).map_or(&[][..], Vec::as_slice);
                    prop_assert!(
                        order.starts_with(started),
                        "key {key} started {started:?}, pushed {order:?}"
                    );
                }
                let waiting: usize = pushed
                    .iter()
                    .map(|(key, items)| items.len() - started.get(key).map_or(0, Vec::len))
                    .sum();
                prop_assert_eq!(queue.waiting(), waiting);
                prop_assert_eq!(queue.busy_keys(), running.len());
                // A key waits only behind a running item.
                for (key, items) in &pushed {
                    let key_started = started.get(key).map_or(0, Vec::len);
                    if items.len() > key_started {
                        prop_assert!(running.contains(key));
                    }
                }
            }
        }
    }
}
