//! Recognising a retried submission: the same organisation, response id and revision, with the
//! same content (form included).
//!
//! Invariants: while a key is remembered, at most one content is ever published for it by this
//! instance: a different content gets a conflict, even while the first is still in flight. A key
//! whose record Kafka has not answered yet is never forgotten, and is never published again until
//! Kafka answered. Answered keys are a cache, bounded and per instance; downstream effects are
//! idempotent per (response id, revision) whatever it forgets.

use std::num::NonZeroUsize;
use std::sync::Arc;

use quick_cache::sync::{Cache, DefaultLifecycle, EntryAction, EntryResult};
use quick_cache::{DefaultHashBuilder, OptionsBuilder, Weighter};
use uuid::Uuid;

/// Who submitted which revision of which response. Scoped by organisation, so that one
/// organisation's submissions never answer another's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub organisation: Arc<str>,
    pub response_id: Uuid,
    pub revision: i32,
}

/// SHA-256 of what was submitted, form id included.
pub type Digest = [u8; 32];

#[derive(Debug, Clone)]
enum Entry<A> {
    /// Being published; the answer is not known yet.
    Pending(Digest),
    /// Acknowledged by Kafka, with the answer the client got.
    Accepted(Digest, A),
}

/// What a submission may do.
#[derive(Debug, PartialEq)]
pub enum Claim<A> {
    /// Nothing is remembered for the key: publish, then `accepted` or `release`.
    Fresh,
    /// The same content was accepted already: answer this without publishing.
    Repeat(A),
    /// The same content is being published by another request, and Kafka has not answered for it
    /// yet: ask the client to retry later. Publishing it again would write it twice if the first
    /// record lands (a broker that wrote it but could not answer in time).
    InFlight,
    /// Other content holds the key.
    Conflict,
}

/// The remembered submissions: quick_cache's sharded S3-FIFO cache, whose every operation on a
/// key is atomic under its shard's lock. Every response of a gateway goes through it twice (its
/// claim, then its answer from the delivery report), on request threads and librdkafka's at once:
/// a single LRU behind one mutex cost several times more, in contention and in the cache misses
/// of relinking its list.
///
/// A claim still waiting for Kafka weighs nothing, which quick_cache keeps out of eviction: it
/// stays until its record is answered (a broker restart may take minutes), and its number is
/// bounded by the records the producer holds. An answered entry weighs one, and sits in the
/// cache's cold part until it is used again (a retry) or pushed out; half the capacity for the
/// hot part keeps the cold part large.
pub struct Submissions<A> {
    entries: Cache<Key, Entry<A>, PendingWeighsNothing>,
}

/// The weight of an entry: none while it waits for Kafka (so that it is never evicted), else one.
#[derive(Debug, Clone, Copy)]
struct PendingWeighsNothing;

impl<A> Weighter<Key, Entry<A>> for PendingWeighsNothing {
    fn weight(&self, _key: &Key, entry: &Entry<A>) -> u64 {
        match entry {
            Entry::Pending(_) => 0,
            Entry::Accepted(..) => 1,
        }
    }
}

/// The part of the capacity for entries used more than once (answered claims).
const HOT_ALLOCATION: f64 = 0.5;

impl<A: Clone> Submissions<A> {
    pub fn new(capacity: NonZeroUsize) -> Self {
        let items = capacity.get();
        let entries = OptionsBuilder::new()
            .estimated_items_capacity(items)
            .weight_capacity(u64::try_from(items).unwrap_or(u64::MAX))
            .hot_allocation(HOT_ALLOCATION)
            .build()
            .map(|options| {
                Cache::with_options(
                    options,
                    PendingWeighsNothing,
                    DefaultHashBuilder::default(),
                    DefaultLifecycle::default(),
                )
            })
            // Only for options out of their range, which these are not.
            .unwrap_or_else(|_| {
                Cache::with_weighter(
                    items,
                    u64::try_from(items).unwrap_or(u64::MAX),
                    PendingWeighsNothing,
                )
            });
        Submissions { entries }
    }

    pub fn claim(&self, key: &Key, digest: &Digest) -> Claim<A> {
        // One atomic step whether the key is new or not: a concurrent claim of the same key
        // waits for this one's placeholder to be filled, so two claims are never both `Fresh`.
        let held = self.entries.entry(key, None, |_, held| {
            EntryAction::Retain(match held {
                Entry::Pending(held) if held == digest => Claim::InFlight,
                Entry::Accepted(held, answer) if held == digest => Claim::Repeat(answer.clone()),
                _ => Claim::Conflict,
            })
        });
        match held {
            EntryResult::Retained(claim) => claim,
            EntryResult::Vacant(slot) => match slot.insert(Entry::Pending(*digest)) {
                Ok(()) => Claim::Fresh,
                // The placeholder was taken away (the cache was cleared): what it held is unknown.
                Err(_) => Claim::Conflict,
            },
            // Neither comes from `Retain` without a timeout; refusing is what keeps the invariant.
            EntryResult::Removed(..) | EntryResult::Replaced(..) | EntryResult::Timeout => {
                Claim::Conflict
            }
        }
    }

    /// Records the answer of a `Fresh` claim that Kafka acknowledged. Only the claim's owner calls
    /// this, so what it replaces is its own pending entry. A plain insert, rather than a change in
    /// place: quick_cache evicts on an insert that takes it past its capacity, never on a change
    /// of weight in place, so answered entries would otherwise pile up without bound.
    pub fn accepted(&self, key: Key, digest: Digest, answer: A) {
        self.entries.insert(key, Entry::Accepted(digest, answer));
    }

    /// Forgets a `Fresh` claim whose publish failed, so that a retry can try again.
    pub fn release(&self, key: &Key, digest: &Digest) {
        self.entries.remove_if(
            key,
            |held| matches!(held, Entry::Pending(held) if held == digest),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(organisation: &str, revision: i32) -> Key {
        Key {
            organisation: organisation.into(),
            response_id: Uuid::from_u128(7),
            revision,
        }
    }

    fn cache() -> Submissions<&'static str> {
        Submissions::new(NonZeroUsize::new(16).expect("non-zero"))
    }

    #[test]
    fn same_content_repeats_and_other_content_conflicts() {
        let cache = cache();
        assert_eq!(cache.claim(&key("a", 0), &[1; 32]), Claim::Fresh);
        assert_eq!(cache.claim(&key("a", 0), &[1; 32]), Claim::InFlight);
        assert_eq!(
            cache.claim(&key("a", 0), &[2; 32]),
            Claim::Conflict,
            "conflict while in flight"
        );
        cache.accepted(key("a", 0), [1; 32], "answer");
        assert_eq!(cache.claim(&key("a", 0), &[1; 32]), Claim::Repeat("answer"));
        assert_eq!(cache.claim(&key("a", 0), &[2; 32]), Claim::Conflict);
    }

    #[test]
    fn organisations_and_revisions_are_separate() {
        let cache = cache();
        assert_eq!(cache.claim(&key("a", 0), &[1; 32]), Claim::Fresh);
        assert_eq!(cache.claim(&key("b", 0), &[2; 32]), Claim::Fresh);
        assert_eq!(cache.claim(&key("a", 1), &[3; 32]), Claim::Fresh);
    }

    #[test]
    fn of_many_concurrent_claims_of_a_key_exactly_one_is_fresh() {
        for round in 0..200 {
            let cache = cache();
            let claims: Vec<Claim<&str>> = std::thread::scope(|scope| {
                let threads: Vec<_> = (0..4)
                    .map(|_| scope.spawn(|| cache.claim(&key("a", round), &[1; 32])))
                    .collect();
                threads
                    .into_iter()
                    .map(|t| t.join().expect("no panic"))
                    .collect()
            });
            let fresh = claims.iter().filter(|c| **c == Claim::Fresh).count();
            assert_eq!(fresh, 1, "round {round}: {claims:?}");
            assert!(
                claims
                    .iter()
                    .all(|c| matches!(c, Claim::Fresh | Claim::InFlight))
            );
        }
    }

    #[test]
    fn a_claim_waiting_for_kafka_is_never_evicted_and_its_answer_is_kept() {
        let cache = cache();
        // A full cache first: a claim made then is new, and goes where new entries are evicted.
        for revision in 1..=64 {
            cache.claim(&key("b", revision), &[2; 32]);
            cache.accepted(key("b", revision), [2; 32], "answer");
        }
        assert_eq!(cache.claim(&key("a", 0), &[1; 32]), Claim::Fresh);
        // Sixty times the capacity of answered claims later (a long broker restart)...
        for revision in 65..=1_000 {
            cache.claim(&key("b", revision), &[2; 32]);
            cache.accepted(key("b", revision), [2; 32], "answer");
        }
        // ...a retry still waits rather than publishing it a second time.
        assert_eq!(cache.claim(&key("a", 0), &[1; 32]), Claim::InFlight);
        assert_eq!(cache.claim(&key("a", 0), &[2; 32]), Claim::Conflict);
        cache.accepted(key("a", 0), [1; 32], "answer");
        assert_eq!(cache.claim(&key("a", 0), &[1; 32]), Claim::Repeat("answer"));
        assert!(
            cache.entries.weight() <= 16,
            "answered entries stay within the capacity: {}",
            cache.entries.weight()
        );
    }

    #[test]
    fn an_unanswered_claim_outlives_many_newer_ones() {
        let cache = Submissions::<&str>::new(NonZeroUsize::new(1_000).expect("non-zero"));
        // Steady traffic: each claim is answered soon after.
        let submit = |revision| {
            cache.claim(&key("b", revision), &[2; 32]);
            cache.accepted(key("b", revision), [2; 32], "answer");
        };
        (1..=2_000).for_each(submit);
        assert_eq!(cache.claim(&key("a", 0), &[1; 32]), Claim::Fresh);
        // Far more than quick_cache's default cold part (3 %) would keep unanswered.
        (2_001..=2_300).for_each(submit);
        assert_eq!(cache.claim(&key("a", 0), &[2; 32]), Claim::Conflict);
    }

    #[test]
    fn a_released_claim_can_be_claimed_again() {
        let cache = cache();
        assert_eq!(cache.claim(&key("a", 0), &[1; 32]), Claim::Fresh);
        cache.release(&key("a", 0), &[2; 32]);
        assert_eq!(
            cache.claim(&key("a", 0), &[2; 32]),
            Claim::Conflict,
            "only the owner's digest releases"
        );
        cache.release(&key("a", 0), &[1; 32]);
        assert_eq!(cache.claim(&key("a", 0), &[2; 32]), Claim::Fresh);
    }
}
