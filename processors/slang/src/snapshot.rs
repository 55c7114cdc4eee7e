//! The word counts of the last commit, kept beside the index so that opening it reads them
//! instead of every stored answer: open time no longer grows with the index. Two files in the
//! index directory (Tantivy leaves files it did not write alone):
//! - `slang-counts.snapshot`, the base: all the counts as of one commit;
//! - `slang-counts.log`: the count changes of each later commit, in commit order. When the log
//!   has grown past the base (and past 1 MiB), a commit writes a new base instead (and starts a
//!   new log): each commit writes its changes, and a base is rewritten only after as many bytes
//!   of changes, however large the counts.
//!
//! Invariants:
//! - The counts loaded are exactly those of the index's commit, or none: the base and every log
//!   entry name their commit ([`Tag`]: opstamp, live documents, payload) and carry a checksum;
//!   the log names the base it continues. The base plus the whole entries of its log must end at
//!   the commit the index opened at; anything else (a crash between the index's commit and the
//!   write, a torn or foreign file) is ignored and the counts are rebuilt from the stored answers.
//! - The log never skips a commit: after a failed write, or an open that rebuilt the counts, the
//!   next commit writes a base.
//! - A base is written to a temporary file and renamed over the last one, then a new log naming
//!   it replaces the old one the same way: a reader never sees half of either.

use std::hash::BuildHasher;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::counts::{Change, Contribution, Counts, get_str, get_u64, put_str, put_u64};

/// The base's file.
pub const BASE: &str = "slang-counts.snapshot";
/// The log's file.
pub const LOG: &str = "slang-counts.log";

/// The log may grow to this many bytes however small the base (rewriting a small base at
/// every other commit gains nothing).
const LOG_FLOOR: u64 = 1 << 20;

/// The format's marks; a change of format changes them (old files are then ignored).
const BASE_MAGIC: &[u8; 8] = b"FSSLNGB1";
const LOG_MAGIC: &[u8; 8] = b"FSSLNGL1";

/// The commit a base or a log entry belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    /// Tantivy's opstamp of the commit (kept by merges, which rewrite the meta of a commit).
    pub opstamp: u64,
    /// Live documents in that commit.
    pub documents: u64,
    /// The commit's payload (its offsets), as stored.
    pub payload: String,
}

impl Tag {
    fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, self.opstamp);
        put_u64(out, self.documents);
        put_str(out, &self.payload);
    }

    fn decode(input: &mut &[u8]) -> Option<Tag> {
        Some(Tag {
            opstamp: get_u64(input)?,
            documents: get_u64(input)?,
            payload: get_str(input)?.to_owned(),
        })
    }
}

fn checksum(body: &[u8]) -> u64 {
    foldhash::fast::FixedState::default().hash_one(body)
}

/// `body` framed: its length, its checksum, itself.
fn frame(body: &[u8], out: &mut Vec<u8>) {
    put_u64(out, body.len() as u64);
    put_u64(out, checksum(body));
    out.extend_from_slice(body);
}

/// The next framed body of `input`, whole and unchanged; `None` otherwise.
fn unframe<'a>(input: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(get_u64(input)?).ok()?;
    let sum = get_u64(input)?;
    if input.len() < len {
        return None;
    }
    let (body, rest) = input.split_at(len);
    *input = rest;
    (checksum(body) == sum).then_some(body)
}

/// Writes `bytes` as `path`, atomically (a temporary file renamed over it).
fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path)
}

/// The snapshot files of one index directory, as its commits keep them.
#[derive(Debug)]
pub struct Snapshots {
    dir: PathBuf,
    /// The size of the base and of its log, as written.
    base_bytes: u64,
    log_bytes: u64,
    /// The next commit writes a base (the files do not end at the last commit).
    base_due: bool,
}

impl Snapshots {
    /// Reads the counts of `dir`'s files when they end at the commit `tag` (the index's);
    /// `None` for the counts otherwise (the caller rebuilds them, and the next commit writes a
    /// base).
    pub fn load(dir: &Path, tag: &Tag) -> (Snapshots, Option<Counts>) {
        let mut snapshots = Snapshots {
            dir: dir.to_owned(),
            base_bytes: 0,
            log_bytes: 0,
            base_due: true,
        };
        let counts = snapshots.read(tag);
        (snapshots, counts)
    }

    fn read(&mut self, tag: &Tag) -> Option<Counts> {
        let base = std::fs::read(self.dir.join(BASE)).ok()?;
        let input = &mut base.as_slice();
        let (magic, rest) = input.split_first_chunk::<8>()?;
        *input = rest;
        if magic != BASE_MAGIC {
            return None;
        }
        let body = &mut unframe(input)?;
        let base_tag = Tag::decode(body)?;
        let mut counts = Counts::decode(body)?;
        self.base_bytes = base.len() as u64;
        let mut last = base_tag.clone();
        // The log, when it continues this base: its whole entries, in order.
        let log = std::fs::read(self.dir.join(LOG)).unwrap_or_default();
        let input = &mut log.as_slice();
        if let Some((magic, rest)) = input.split_first_chunk::<8>()
            && magic == LOG_MAGIC
        {
            *input = rest;
            if unframe(input).and_then(|mut b| Tag::decode(&mut b)) == Some(base_tag) {
                while let Some(mut entry) = unframe(input) {
                    let entry = &mut entry;
                    let Some(entry_tag) = Tag::decode(entry) else {
                        break;
                    };
                    let Some(changes) = decode_changes(entry) else {
                        break;
                    };
                    for (change, contribution) in &changes {
                        counts.apply(contribution, *change);
                    }
                    last = entry_tag;
                }
                self.log_bytes = (log.len() - input.len()) as u64;
                // Appends may go on only where the whole entries end.
                self.base_due = !input.is_empty();
            }
        }
        if last != *tag {
            self.base_due = true;
            return None;
        }
        counts.refresh();
        Some(counts)
    }

    /// Records the commit `tag`, whose `changes` made `counts`: a log entry, or a new base
    /// when one is due or the log has outgrown the base. After an error the next commit writes
    /// a base.
    pub fn record(
        &mut self,
        tag: &Tag,
        changes: &[(Change, Arc<Contribution>)],
        counts: &Counts,
    ) -> std::io::Result<()> {
        let outcome = if self.base_due || self.log_bytes > self.base_bytes.max(LOG_FLOOR) {
            self.write_base(tag, counts)
        } else {
            self.append(tag, changes)
        };
        self.base_due = outcome.is_err();
        outcome
    }

    fn write_base(&mut self, tag: &Tag, counts: &Counts) -> std::io::Result<()> {
        let mut body = Vec::new();
        tag.encode(&mut body);
        counts.encode(&mut body);
        let mut base = BASE_MAGIC.to_vec();
        frame(&body, &mut base);
        replace(&self.dir.join(BASE), &base)?;
        let mut header = Vec::new();
        tag.encode(&mut header);
        let mut log = LOG_MAGIC.to_vec();
        frame(&header, &mut log);
        replace(&self.dir.join(LOG), &log)?;
        self.base_bytes = base.len() as u64;
        self.log_bytes = log.len() as u64;
        Ok(())
    }

    fn append(
        &mut self,
        tag: &Tag,
        changes: &[(Change, Arc<Contribution>)],
    ) -> std::io::Result<()> {
        let mut body = Vec::new();
        tag.encode(&mut body);
        put_u64(&mut body, changes.len() as u64);
        for (change, contribution) in changes {
            body.push(match change {
                Change::Add => 0,
                Change::Remove => 1,
            });
            contribution.encode(&mut body);
        }
        let mut entry = Vec::with_capacity(body.len() + 16);
        frame(&body, &mut entry);
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join(LOG))?;
        log.write_all(&entry)?;
        self.log_bytes += entry.len() as u64;
        Ok(())
    }
}

fn decode_changes(input: &mut &[u8]) -> Option<Vec<(Change, Contribution)>> {
    (0..get_u64(input)?)
        .map(|_| {
            let (kind, rest) = input.split_first()?;
            *input = rest;
            let change = match kind {
                0 => Change::Add,
                1 => Change::Remove,
                _ => return None,
            };
            Some((change, Contribution::decode(input)?))
        })
        .collect()
}
