//! The outbox: where SMS go when no Twilio credentials are configured (the local default), one
//! JSON line per message, so that a developer sees exactly what would have been sent.
//!
//! Invariant: the file holds only whole lines. A message is appended with one write of its whole
//! line followed by `sync_data`, and `send` returns `Ok` only after both; a failed write is cut
//! back off. A crash mid-write can still leave a torn last line: [`Outbox::open`] cuts it off
//! (that message was never acknowledged, so its sender will send it again). The in-memory index
//! used by [`Outbox::find_sent`] is rebuilt from the file at open, so it is a cache only.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime};

use crate::error::{ConfigError, SmsError};
use crate::redact;
use crate::segments::{Encoding, check_body};
use crate::twilio::{MessageRecord, SentMessage};

/// The status an outbox message reports: it was written, nothing more.
pub const OUTBOX_STATUS: &str = "outboxed";

/// One line of the outbox file.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutboxEntry {
    /// `OB` + 32 hex digits: the length of a Twilio sid, so ledgers need no special case.
    pub sid: String,
    pub to: String,
    pub body: String,
    pub segments: usize,
    pub ucs2: bool,
    /// RFC 3339, UTC.
    pub created_at: String,
}

impl std::fmt::Debug for OutboxEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxEntry")
            .field("sid", &self.sid)
            .field("to", &redact::phone(&self.to))
            .field("body_chars", &self.body.chars().count())
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

impl OutboxEntry {
    fn created_on(&self) -> Option<Date> {
        OffsetDateTime::parse(&self.created_at, &Rfc3339)
            .ok()
            .map(|at| at.date())
    }

    fn record(&self) -> MessageRecord {
        MessageRecord {
            sid: self.sid.clone(),
            to: self.to.clone(),
            body: self.body.clone(),
            status: OUTBOX_STATUS.to_owned(),
            date_created: Some(self.created_at.clone()),
            date_sent: Some(self.created_at.clone()),
            error_code: None,
        }
    }
}

/// The open file and the index of what it holds, behind one lock so that they agree.
struct State {
    file: File,
    /// Entries by recipient, in file order.
    by_recipient: HashMap<String, Vec<OutboxEntry>>,
}

/// An append-only outbox file. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    path: PathBuf,
    /// A std mutex: it is only taken inside `spawn_blocking` or for in-memory lookups.
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("path", &self.path).finish()
    }
}

impl Outbox {
    /// Opens (or creates, with its folders) the outbox, cuts off a torn last line and indexes
    /// the rest. A malformed line that is not the last one is corruption, not a crash, and fails.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, ConfigError> {
        let path = path.into();
        let io = |what: &str| {
            let what = format!("{what} {}", path.display());
            move |source| ConfigError::Io { what, source }
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io("creating the folder of"))?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io("opening the outbox"))?;
        let mut content = Vec::new();
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.read_to_end(&mut content))
            .map_err(io("reading the outbox"))?;
        let whole = content
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |last| last + 1);
        if whole < content.len() {
            tracing::warn!(path = %path.display(), bytes = content.len() - whole, "Cutting a torn last line off the outbox.");
            file.set_len(whole as u64)
                .and_then(|()| file.sync_data())
                .map_err(io("cutting the torn line off"))?;
        }
        let mut by_recipient: HashMap<String, Vec<OutboxEntry>> = HashMap::new();
        for (number, line) in content[..whole].split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let entry: OutboxEntry = serde_json::from_slice(line).map_err(|e| {
                ConfigError::Invalid(format!(
                    "line {} of the outbox {} is not an outbox entry: {e}",
                    number + 1,
                    path.display()
                ))
            })?;
            by_recipient
                .entry(entry.to.clone())
                .or_default()
                .push(entry);
        }
        tracing::info!(path = %path.display(), recipients = by_recipient.len(), "Outbox open.");
        Ok(Outbox {
            path,
            state: Arc::new(Mutex::new(State { file, by_recipient })),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one message, durably. Refuses what Twilio would refuse (an invalid `To`, a body
    /// that is empty or too long), so that a local run fails where production would.
    pub async fn send(&self, to: &str, body: &str) -> Result<SentMessage, SmsError> {
        let segments = check_body(body)?;
        if !is_e164(to) {
            return Err(SmsError::Permanent {
                status: None,
                code: Some(21211),
                message: format!(
                    "the 'To' number {} is not a valid phone number",
                    redact::phone(to)
                ),
            });
        }
        let now = OffsetDateTime::now_utc();
        let entry = OutboxEntry {
            sid: format!("OB{}", hex::encode(rand::random::<[u8; 16]>())),
            to: to.to_owned(),
            body: body.to_owned(),
            segments: segments.count,
            ucs2: segments.encoding == Encoding::Ucs2,
            created_at: now
                .format(&Rfc3339)
                .map_err(|e| SmsError::Unavailable(format!("formatting the time: {e}")))?,
        };
        let mut line = serde_json::to_string(&entry)
            .map_err(|e| SmsError::Unavailable(format!("encoding the outbox line: {e}")))?;
        line.push('\n');
        let state = self.state.clone();
        let written = entry.clone();
        tokio::task::spawn_blocking(move || {
            let mut state = state
                .lock()
                .map_err(|_| SmsError::Unavailable("the outbox lock is poisoned".to_owned()))?;
            append_line(&mut state.file, line.as_bytes())?;
            state
                .by_recipient
                .entry(written.to.clone())
                .or_default()
                .push(written);
            Ok::<(), SmsError>(())
        })
        .await
        .map_err(|e| SmsError::Ambiguous(format!("the outbox writer stopped: {e}")))??;
        tracing::info!(to = %redact::phone(to), sid = %entry.sid, segments = entry.segments, "SMS written to the outbox.");
        Ok(SentMessage {
            sid: entry.sid,
            status: OUTBOX_STATUS.to_owned(),
            to: entry.to,
            error_code: None,
            error_message: None,
            num_segments: u32::try_from(entry.segments).ok(),
            price: None,
            uri: None,
            date_created: Some(entry.created_at),
        })
    }

    /// The first message to `to`, written on or after `since` (UTC day), whose body contains
    /// `reference`; the same lookup as [`crate::TwilioClient::find_sent`].
    pub fn find_sent(
        &self,
        to: &str,
        reference: &str,
        since: Date,
    ) -> Result<Option<MessageRecord>, SmsError> {
        let state = self
            .state
            .lock()
            .map_err(|_| SmsError::Unavailable("the outbox lock is poisoned".to_owned()))?;
        Ok(state.by_recipient.get(to).and_then(|entries| {
            entries
                .iter()
                .find(|e| e.body.contains(reference) && e.created_on().is_some_and(|d| d >= since))
                .map(OutboxEntry::record)
        }))
    }

    /// Every message in the outbox, in file order (for tests and local inspection).
    pub fn entries(&self) -> Vec<OutboxEntry> {
        let Ok(state) = self.state.lock() else {
            return Vec::new();
        };
        let mut all: Vec<OutboxEntry> = state.by_recipient.values().flatten().cloned().collect();
        all.sort_by(|a, b| a.created_at.cmp(&b.created_at));
        all
    }
}

/// Writes a whole line and syncs it, or leaves the file as it was. Only if even the cut fails
/// is the outcome unknown (the line may be there, whole or torn).
fn append_line(file: &mut File, line: &[u8]) -> Result<(), SmsError> {
    let length = file
        .metadata()
        .map_err(|e| SmsError::Unavailable(format!("reading the outbox length: {e}")))?
        .len();
    let written = file
        .write_all(line)
        .and_then(|()| file.flush())
        .and_then(|()| file.sync_data());
    match written {
        Ok(()) => Ok(()),
        Err(error) => match file.set_len(length) {
            Ok(()) => Err(SmsError::Unavailable(format!(
                "writing the outbox (rolled back): {error}"
            ))),
            Err(cut) => Err(SmsError::Ambiguous(format!(
                "writing the outbox: {error}; cutting the partial line: {cut}"
            ))),
        },
    }
}

/// E.164: `+`, a non-zero digit, at most 15 digits in all; what Twilio accepts in `To`.
pub fn is_e164(number: &str) -> bool {
    number.strip_prefix('+').is_some_and(|digits| {
        (8..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> Date {
        OffsetDateTime::now_utc().date()
    }

    #[tokio::test]
    async fn messages_are_lines_and_can_be_found_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/outbox.jsonl");
        let outbox = Outbox::open(&path).unwrap();
        let sent = outbox
            .send("+919876543210", "Receipt R-abc1-0: thank you")
            .await
            .unwrap();
        assert!(sent.sid.starts_with("OB") && sent.sid.len() == 34);
        outbox
            .send("+919876543211", "Receipt R-def2-0")
            .await
            .unwrap();
        let content = std::fs::read_to_string(&path).unwrap();
        assert_eq!(content.lines().count(), 2);
        assert!(content.ends_with('\n'));

        let reopened = Outbox::open(&path).unwrap();
        let found = reopened
            .find_sent("+919876543210", "R-abc1-0", today())
            .unwrap()
            .unwrap();
        assert_eq!(found.sid, sent.sid);
        // The reference must match the recipient too, and the day.
        assert!(
            reopened
                .find_sent("+919876543211", "R-abc1-0", today())
                .unwrap()
                .is_none()
        );
        let tomorrow = today().next_day().unwrap();
        assert!(
            reopened
                .find_sent("+919876543210", "R-abc1-0", tomorrow)
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_torn_last_line_is_cut_off_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.jsonl");
        let outbox = Outbox::open(&path).unwrap();
        outbox.send("+919876543210", "first R-1").await.unwrap();
        drop(outbox);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(br#"{"sid":"OB00","to":"+9198765"#).unwrap();
        drop(file);

        let outbox = Outbox::open(&path).unwrap();
        assert_eq!(outbox.entries().len(), 1);
        // The next line starts on a clean line, so the file stays parseable.
        outbox.send("+919876543210", "second R-2").await.unwrap();
        let content = std::fs::read_to_string(&path).unwrap();
        assert_eq!(content.lines().count(), 2);
        assert_eq!(Outbox::open(&path).unwrap().entries().len(), 2);
    }

    #[test]
    fn a_corrupt_middle_line_fails_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.jsonl");
        std::fs::write(&path, "not json\n{}\n").unwrap();
        let error = Outbox::open(&path).unwrap_err();
        assert!(error.to_string().contains("line 1"), "{error}");
    }

    #[tokio::test]
    async fn refuses_what_twilio_would_refuse_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.jsonl");
        let outbox = Outbox::open(&path).unwrap();
        let error = outbox.send("98765 43210", "hello").await.unwrap_err();
        assert_eq!(error.code(), Some(21211));
        let error = outbox
            .send("+919876543210", &"a".repeat(1601))
            .await
            .unwrap_err();
        assert_eq!(error.code(), Some(21617));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }

    #[test]
    fn e164() {
        assert!(is_e164("+919876543210"));
        assert!(is_e164("+14155550123"));
        assert!(!is_e164("919876543210"));
        assert!(!is_e164("+0123456789"));
        assert!(!is_e164("+1234567890123456"));
        assert!(!is_e164("+91 98765 43210"));
    }
}
