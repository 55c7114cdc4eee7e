//! Word and phrase counts of the committed index, per question (of a form of an organisation) and
//! per city: what the "most frequent words and phrases" query reads. Aggregating a million
//! answers' words at query time takes seconds; these counts change by a few entries per answer and
//! answer that query from memory.
//!
//! Invariants:
//! - The counts are those of the index's last commit: the index adds an answer's
//!   [`Contribution`] (and removes that of the answer it replaces) once the commit that holds it
//!   has succeeded, never before. On open they come from the snapshot of that very commit
//!   ([`crate::snapshot`]), or are built again from the stored answers: they cannot drift from the
//!   index across restarts.
//! - A word, or a two-word phrase, counts once per answer that uses it, in each city of that
//!   answer (a multiple-choice city question may give several); an answer without a city counts
//!   in none. A city's `answers` is its number of answers to the question.
//! - Counts that fall to zero are removed, so a query never reports a word no answer uses.
//!   Interned words are kept (the vocabulary of a question only grows; it is small next to the
//!   answers).
//! - After [`Counts::refresh`], each city's [`PRECOMPUTED`] most used words and phrases, and each
//!   question's cities by answers, are ranked ahead of queries: a commit changes the counts, so
//!   it ranks what it changed once, instead of every query ranking a million phrases. A city
//!   changed since the last refresh is ranked by the query that reads it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::collections::{HashMap, HashSet};

/// Maps with keys of our own (interned ids, city names, question keys): foldhash, several times
/// cheaper than SipHash on these short keys.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

use crate::index::{CityWords, WordCount};

/// What one answer adds to the counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contribution {
    /// The question's key in [`Counts`]: see [`scope_key`].
    scope: String,
    cities: Vec<String>,
    /// The answer's distinct words.
    words: Vec<String>,
    /// Its distinct pairs of consecutive words, as indexes into `words`.
    pairs: Vec<(u32, u32)>,
}

impl Contribution {
    /// The question's key: see [`scope_key`].
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// The contribution in the binary form of [`crate::snapshot`]'s log.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_str(out, &self.scope);
        put_u64(out, self.cities.len() as u64);
        for city in &self.cities {
            put_str(out, city);
        }
        put_u64(out, self.words.len() as u64);
        for word in &self.words {
            put_str(out, word);
        }
        put_u64(out, self.pairs.len() as u64);
        for &(a, b) in &self.pairs {
            put_u64(out, (u64::from(a) << 32) | u64::from(b));
        }
    }

    /// The next contribution [`Contribution::encode`] wrote in `input`, which moves past it.
    pub fn decode(input: &mut &[u8]) -> Option<Contribution> {
        let scope = get_str(input)?.to_owned();
        let cities = (0..get_u64(input)?)
            .map(|_| get_str(input).map(str::to_owned))
            .collect::<Option<Vec<_>>>()?;
        let words = (0..get_u64(input)?)
            .map(|_| get_str(input).map(str::to_owned))
            .collect::<Option<Vec<_>>>()?;
        let known = |id: u64| (id < words.len() as u64).then_some(id as u32);
        let pairs = (0..get_u64(input)?)
            .map(|_| {
                let pair = get_u64(input)?;
                Some((known(pair >> 32)?, known(pair & u64::from(u32::MAX))?))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Contribution {
            scope,
            cities,
            words,
            pairs,
        })
    }

    /// The contribution of answer `text` to question `scope` (a [`scope_key`]) in `cities`.
    pub fn new(scope: String, cities: &[String], text: &str) -> Self {
        let mut words: Vec<String> = Vec::new();
        let mut order: Vec<u32> = Vec::new();
        for (_, _, word) in crate::tokenizer::words(text) {
            // Answers are a few words: a scan beats hashing.
            let id = match words.iter().position(|w| *w == word) {
                Some(i) => i as u32,
                None => {
                    words.push(word);
                    (words.len() - 1) as u32
                }
            };
            order.push(id);
        }
        let mut pairs: Vec<(u32, u32)> = order.windows(2).map(|w| (w[0], w[1])).collect();
        pairs.sort_unstable();
        pairs.dedup();
        Contribution {
            scope,
            cities: cities.to_vec(),
            words,
            pairs,
        }
    }
}

/// The key of a question in [`Counts`]. The parts cannot contain the separator: organisation and
/// form ids and question keys are identifiers.
pub fn scope_key(organisation: &str, form_id: &str, question: &str) -> String {
    format!("{organisation}\u{1f}{form_id}\u{1f}{question}")
}

/// Whether a contribution is added or taken away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Add,
    Remove,
}

/// How many of each city's most used words and phrases are ranked ahead of queries: the most a
/// query may ask for (the API's `limit`) without ranking them itself.
pub const PRECOMPUTED: usize = 100;

/// The counts of every question.
#[derive(Debug, Default)]
pub struct Counts {
    scopes: Map<String, ScopeCounts>,
    /// Questions changed since the last refresh.
    changed: HashSet<String, foldhash::fast::RandomState>,
}

#[derive(Debug, Default)]
struct ScopeCounts {
    /// Interned words: `ids[words[i]] == i`.
    ids: Map<Box<str>, u32>,
    words: Vec<Box<str>>,
    cities: Map<Box<str>, CityCounts>,
    /// The cities, most answered first (as of the last refresh).
    ranked: Vec<Box<str>>,
    /// A city's number of answers changed since the last refresh.
    reorder: bool,
}

#[derive(Debug, Default)]
struct CityCounts {
    answers: u64,
    /// Answers using each word, by word id.
    words: Map<u32, u64>,
    /// Answers using each phrase, by the ids of its two words (first in the high half).
    phrases: Map<u64, u64>,
    /// The [`PRECOMPUTED`] most used words and phrases, best first (as of the last refresh).
    top_words: Vec<(u64, u32)>,
    top_phrases: Vec<(u64, u64)>,
    /// Changed since the last refresh.
    changed: bool,
}

/// A city's most used words and phrases, best first: (answers, word id) and (answers, phrase).
type Ranked = (Vec<(u64, u32)>, Vec<(u64, u64)>);

impl CityCounts {
    /// Ranks this city's words and phrases of `scope`: `limit` of each.
    fn rank(&self, words: &[Box<str>], limit: usize) -> Ranked {
        let word = |id: u32| words[id as usize].as_ref();
        let ranked_words = top_k(
            self.words.iter().map(|(&id, &n)| (n, (word(id), id))),
            limit,
        );
        let ranked_phrases = top_k(
            self.phrases
                .iter()
                .map(|(&key, &n)| (n, ((word((key >> 32) as u32), word(key as u32)), key))),
            limit,
        );
        (
            ranked_words
                .into_iter()
                .map(|(n, (_, id))| (n, id))
                .collect(),
            ranked_phrases
                .into_iter()
                .map(|(n, (_, key))| (n, key))
                .collect(),
        )
    }
}

impl ScopeCounts {
    fn intern(&mut self, word: &str) -> u32 {
        if let Some(&id) = self.ids.get(word) {
            return id;
        }
        let id = self.words.len() as u32;
        self.words.push(word.into());
        self.ids.insert(word.into(), id);
        id
    }
}

fn bump<K: std::hash::Hash + Eq>(counts: &mut Map<K, u64>, key: K, change: Change) {
    match change {
        Change::Add => *counts.entry(key).or_insert(0) += 1,
        Change::Remove => {
            if let std::collections::hash_map::Entry::Occupied(mut count) = counts.entry(key) {
                *count.get_mut() -= 1;
                if *count.get() == 0 {
                    count.remove();
                }
            }
        }
    }
}

impl Counts {
    /// Adds or removes one answer.
    pub fn apply(&mut self, contribution: &Contribution, change: Change) {
        if contribution.cities.is_empty() {
            return;
        }
        if !self.changed.contains(&contribution.scope) {
            self.changed.insert(contribution.scope.clone());
        }
        if !self.scopes.contains_key(&contribution.scope) {
            self.scopes
                .insert(contribution.scope.clone(), ScopeCounts::default());
        }
        let Some(scope) = self.scopes.get_mut(&contribution.scope) else {
            return;
        };
        scope.reorder = true;
        let ids: Vec<u32> = contribution.words.iter().map(|w| scope.intern(w)).collect();
        for city in &contribution.cities {
            if !scope.cities.contains_key(city.as_str()) {
                scope
                    .cities
                    .insert(city.as_str().into(), CityCounts::default());
            }
            let Some(counts) = scope.cities.get_mut(city.as_str()) else {
                continue;
            };
            counts.changed = true;
            counts.answers = match change {
                Change::Add => counts.answers + 1,
                Change::Remove => counts.answers.saturating_sub(1),
            };
            for &id in &ids {
                bump(&mut counts.words, id, change);
            }
            for &(a, b) in &contribution.pairs {
                let key = (u64::from(ids[a as usize]) << 32) | u64::from(ids[b as usize]);
                bump(&mut counts.phrases, key, change);
            }
            if counts.answers == 0 {
                scope.cities.remove(city.as_str());
            }
        }
    }

    /// An estimate of the memory the counts take, in bytes, from their tables' capacities
    /// (hashbrown: one control byte per slot besides the entry).
    pub fn estimated_bytes(&self) -> usize {
        fn table<K, V>(map: &Map<K, V>) -> usize {
            map.capacity() * (std::mem::size_of::<(K, V)>() + 1)
        }
        self.scopes
            .iter()
            .map(|(key, scope)| {
                let words: usize = scope.words.iter().map(|w| w.len() * 2).sum();
                let cities: usize = scope
                    .cities
                    .iter()
                    .map(|(name, c)| {
                        name.len()
                            + table(&c.words)
                            + table(&c.phrases)
                            + (c.top_words.capacity() + c.top_phrases.capacity()) * 16
                    })
                    .sum();
                key.len() + table(&scope.ids) + scope.words.capacity() * 16 + words + cities
            })
            .sum::<usize>()
            + table(&self.scopes)
    }

    /// Ranks what changed since the last refresh (see the module's invariants).
    pub fn refresh(&mut self) {
        for key in std::mem::take(&mut self.changed) {
            let Some(scope) = self.scopes.get_mut(&key) else {
                continue;
            };
            for counts in scope.cities.values_mut().filter(|c| c.changed) {
                (counts.top_words, counts.top_phrases) = counts.rank(&scope.words, PRECOMPUTED);
                counts.changed = false;
            }
            if scope.reorder {
                scope.ranked = ranked_cities(&scope.cities, usize::MAX);
                scope.reorder = false;
            }
        }
    }

    /// The `limit` most frequent words and phrases of question `scope` (a [`scope_key`]) in
    /// `city`, or in each of its `cities` most answered cities; most answered cities first.
    pub fn top(
        &self,
        scope: &str,
        city: Option<&str>,
        cities: usize,
        limit: usize,
    ) -> Vec<CityWords> {
        let Some(scope) = self.scopes.get(scope) else {
            return Vec::new();
        };
        let names: Vec<Box<str>> = match city {
            Some(city) => scope
                .cities
                .get_key_value(city)
                .map(|(name, _)| name.clone())
                .into_iter()
                .collect(),
            None if scope.reorder => ranked_cities(&scope.cities, cities),
            None => scope.ranked.iter().take(cities).cloned().collect(),
        };
        let word = |id: u32| scope.words[id as usize].as_ref();
        names
            .iter()
            .filter_map(|name| scope.cities.get_key_value(name))
            .map(|(name, counts)| {
                let fresh;
                let (words, phrases) = if counts.changed || limit > PRECOMPUTED {
                    fresh = counts.rank(&scope.words, limit);
                    (&fresh.0[..], &fresh.1[..])
                } else {
                    (
                        &counts.top_words[..limit.min(counts.top_words.len())],
                        &counts.top_phrases[..limit.min(counts.top_phrases.len())],
                    )
                };
                CityWords {
                    city: name.to_string(),
                    answers: counts.answers,
                    words: words
                        .iter()
                        .map(|&(answers, id)| WordCount {
                            word: word(id).to_owned(),
                            answers,
                        })
                        .collect(),
                    phrases: phrases
                        .iter()
                        .map(|&(answers, key)| WordCount {
                            word: format!("{} {}", word((key >> 32) as u32), word(key as u32)),
                            answers,
                        })
                        .collect(),
                }
            })
            .collect()
    }
}

impl Counts {
    /// The counts in a compact binary form, for [`crate::snapshot`]: per question, its words
    /// (their ids are their positions) and per city its answers, words and phrases. Rankings
    /// are not written: [`Counts::decode`] ranks again.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, self.scopes.len() as u64);
        for (key, scope) in &self.scopes {
            put_str(out, key);
            put_u64(out, scope.words.len() as u64);
            for word in &scope.words {
                put_str(out, word);
            }
            put_u64(out, scope.cities.len() as u64);
            for (name, city) in &scope.cities {
                put_str(out, name);
                put_u64(out, city.answers);
                put_u64(out, city.words.len() as u64);
                for (&id, &n) in &city.words {
                    put_u64(out, u64::from(id));
                    put_u64(out, n);
                }
                put_u64(out, city.phrases.len() as u64);
                for (&key, &n) in &city.phrases {
                    put_u64(out, key);
                    put_u64(out, n);
                }
            }
        }
    }

    /// The counts [`Counts::encode`] wrote, ranked; `None` when `bytes` are not such counts (a
    /// torn or foreign file: the caller rebuilds them from the index).
    pub fn decode(mut bytes: &[u8]) -> Option<Counts> {
        let input = &mut bytes;
        let mut counts = Counts::default();
        for _ in 0..get_u64(input)? {
            let key = get_str(input)?.to_owned();
            let mut scope = ScopeCounts::default();
            let words = get_u64(input)?;
            for _ in 0..words {
                let word = get_str(input)?;
                let id = scope.words.len() as u32;
                scope.words.push(word.into());
                scope.ids.insert(word.into(), id);
            }
            let known = |id: u64| (id < words).then_some(id as u32);
            for _ in 0..get_u64(input)? {
                let name: Box<str> = get_str(input)?.into();
                let mut city = CityCounts {
                    answers: get_u64(input)?,
                    changed: true,
                    ..CityCounts::default()
                };
                for _ in 0..get_u64(input)? {
                    let id = known(get_u64(input)?)?;
                    city.words.insert(id, get_u64(input)?);
                }
                for _ in 0..get_u64(input)? {
                    let pair = get_u64(input)?;
                    known(pair >> 32)?;
                    known(pair & u64::from(u32::MAX))?;
                    city.phrases.insert(pair, get_u64(input)?);
                }
                scope.cities.insert(name, city);
            }
            scope.reorder = true;
            counts.changed.insert(key.clone());
            counts.scopes.insert(key, scope);
        }
        if !input.is_empty() {
            return None;
        }
        counts.refresh();
        Some(counts)
    }
}

pub(crate) fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

pub(crate) fn put_str(out: &mut Vec<u8>, text: &str) {
    put_u64(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

/// The next little-endian u64 of `input`, which moves past it.
pub(crate) fn get_u64(input: &mut &[u8]) -> Option<u64> {
    let (head, rest) = input.split_first_chunk::<8>()?;
    *input = rest;
    Some(u64::from_le_bytes(*head))
}

/// The next string [`put_str`] wrote.
pub(crate) fn get_str<'a>(input: &mut &'a [u8]) -> Option<&'a str> {
    let len = usize::try_from(get_u64(input)?).ok()?;
    if input.len() < len {
        return None;
    }
    let (text, rest) = input.split_at(len);
    *input = rest;
    std::str::from_utf8(text).ok()
}

/// The `k` most answered cities, ties in name order.
fn ranked_cities(cities: &Map<Box<str>, CityCounts>, k: usize) -> Vec<Box<str>> {
    let mut all: Vec<(&Box<str>, u64)> = cities.iter().map(|(n, c)| (n, c.answers)).collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    all.into_iter().take(k).map(|(n, _)| n.clone()).collect()
}

/// The `k` entries with the highest counts, ties in name order, best first; one pass, a heap of
/// `k`. Names are compared only when counts tie with the worst kept.
fn top_k<N: Ord + Copy>(entries: impl Iterator<Item = (u64, N)>, k: usize) -> Vec<(u64, N)> {
    if k == 0 {
        return Vec::new();
    }
    // Ranked by (fewer answers, later name): the heap's top is the worst entry kept.
    let mut heap: BinaryHeap<(Reverse<u64>, N)> = BinaryHeap::with_capacity(k + 1);
    for (count, name) in entries {
        if heap.len() == k {
            let Some(&(Reverse(worst), worst_name)) = heap.peek() else {
                continue;
            };
            if count < worst || (count == worst && name >= worst_name) {
                continue;
            }
            heap.pop();
        }
        heap.push((Reverse(count), name));
    }
    heap.into_sorted_vec()
        .into_iter()
        .map(|(Reverse(count), name)| (count, name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(city: &str, text: &str) -> Contribution {
        Contribution::new(scope_key("acme", "f", "q"), &[city.to_owned()], text)
    }

    fn words(city: &CityWords) -> Vec<(&str, u64)> {
        city.words
            .iter()
            .map(|w| (w.word.as_str(), w.answers))
            .collect()
    }

    fn phrases(city: &CityWords) -> Vec<(&str, u64)> {
        city.phrases
            .iter()
            .map(|w| (w.word.as_str(), w.answers))
            .collect()
    }

    #[test]
    fn a_word_counts_once_per_answer_and_phrases_are_consecutive_pairs() {
        let mut counts = Counts::default();
        counts.apply(&answer("pune", "mast mast bhai mast bhai"), Change::Add);
        counts.apply(&answer("pune", "bhai mast"), Change::Add);
        let top = counts.top(&scope_key("acme", "f", "q"), None, 10, 10);
        counts.refresh();
        assert_eq!(counts.top(&scope_key("acme", "f", "q"), None, 10, 10), top);
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].answers, 2);
        assert_eq!(words(&top[0]), [("bhai", 2), ("mast", 2)]);
        assert_eq!(
            phrases(&top[0]),
            [("bhai mast", 2), ("mast bhai", 1), ("mast mast", 1)]
        );
    }

    #[test]
    fn removing_an_answer_undoes_it_and_empty_cities_disappear() {
        let mut counts = Counts::default();
        let old = answer("pune", "पुराना शब्द");
        counts.apply(&old, Change::Add);
        counts.apply(&answer("delhi", "नया शब्द"), Change::Add);
        counts.refresh();
        assert_eq!(
            counts.top(&scope_key("acme", "f", "q"), None, 10, 10).len(),
            2
        );
        // Changes since the refresh show at once: the query ranks a changed city itself.
        counts.apply(&old, Change::Remove);
        let top = counts.top(&scope_key("acme", "f", "q"), None, 10, 10);
        assert_eq!(top.len(), 1, "{top:?}");
        assert_eq!(top[0].city, "delhi");
        assert_eq!(words(&top[0]), [("नया", 1), ("शब्द", 1)]);
        assert!(
            counts
                .top(&scope_key("acme", "f", "q"), Some("pune"), 10, 10)
                .is_empty()
        );
    }

    #[test]
    fn most_answered_cities_first_then_by_name_and_limits_hold() {
        let mut counts = Counts::default();
        for (city, n) in [("b", 2), ("a", 2), ("c", 3), ("d", 1)] {
            for _ in 0..n {
                counts.apply(&answer(city, "x y z"), Change::Add);
            }
        }
        let scope = scope_key("acme", "f", "q");
        counts.refresh();
        let names: Vec<String> = counts
            .top(&scope, None, 3, 2)
            .into_iter()
            .map(|c| c.city)
            .collect();
        assert_eq!(names, ["c", "a", "b"]);
        let one = counts.top(&scope, Some("d"), 3, 2);
        assert_eq!(one.len(), 1);
        assert_eq!(words(&one[0]), [("x", 1), ("y", 1)]);
        assert_eq!(phrases(&one[0]), [("x y", 1), ("y z", 1)]);
        assert!(counts.top(&scope, None, 3, 0)[0].words.is_empty());
        assert!(
            counts
                .top(&scope_key("acme", "f", "other"), None, 3, 2)
                .is_empty()
        );
    }

    #[test]
    fn an_answer_without_a_city_counts_nowhere_and_several_cities_count_in_each() {
        let mut counts = Counts::default();
        let scope = scope_key("acme", "f", "q");
        counts.apply(&Contribution::new(scope.clone(), &[], "mast"), Change::Add);
        assert!(counts.top(&scope, None, 10, 10).is_empty());
        let both = Contribution::new(scope.clone(), &["a".into(), "b".into()], "mast");
        counts.apply(&both, Change::Add);
        let top = counts.top(&scope, None, 10, 10);
        assert_eq!(top.len(), 2);
        assert!(top.iter().all(|c| words(c) == [("mast", 1)]));
    }

    #[test]
    fn encoded_counts_decode_to_the_same_answers_and_damage_is_refused() {
        let mut counts = Counts::default();
        counts.apply(&answer("pune", "mast mast bhai"), Change::Add);
        counts.apply(&answer("delhi", "bhai log"), Change::Add);
        counts.apply(
            &Contribution::new(scope_key("acme", "g", "q"), &["goa".into()], "susegad"),
            Change::Add,
        );
        counts.refresh();
        let mut bytes = Vec::new();
        counts.encode(&mut bytes);
        let decoded = Counts::decode(&bytes).expect("decoded");
        for scope in [scope_key("acme", "f", "q"), scope_key("acme", "g", "q")] {
            assert_eq!(
                decoded.top(&scope, None, 10, 10),
                counts.top(&scope, None, 10, 10)
            );
        }
        assert!(Counts::decode(&bytes[..bytes.len() - 1]).is_none());
        bytes.push(0);
        assert!(Counts::decode(&bytes).is_none());
    }

    #[test]
    fn top_k_matches_a_full_sort() {
        let entries: Vec<(u64, u32)> = (0..500u32).map(|i| (u64::from(i * 7919 % 13), i)).collect();
        let mut sorted = entries.clone();
        sorted.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for k in [1, 5, 13, 499, 500, 600] {
            assert_eq!(
                top_k(entries.iter().copied(), k),
                sorted[..k.min(sorted.len())].to_vec(),
                "k = {k}"
            );
        }
    }
}
