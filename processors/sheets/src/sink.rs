//! What the batcher hands a target: the pending rows of one form (organisation, form id), to be
//! written as one row per response, each at most once.
//!
//! Invariant shared by both targets: a form's targets (its spreadsheets, its file) are its own,
//! never shared with another organisation's form of the same id; in them, a response id has at
//! most one row; a row is replaced only by a higher revision; the target itself (the spreadsheet, the file) is read back to learn which
//! rows exist, so nothing of this lives only in memory or on a local disk.

use std::sync::Arc;

use formstream_core::identity::FormKey;
use formstream_schemas::{Form, Response};

use crate::api::ApiError;
use crate::google::Google;
use crate::local::LocalFiles;

/// One response revision waiting to be written.
#[derive(Debug, Clone)]
pub struct Pending {
    pub response: Response,
    /// The form as the runtime knew it for this record (the newest known version history).
    pub form: Arc<Form>,
    /// The partition assignment the record came from ([`formstream_runtime::Record::assignment`]):
    /// a newer one means the partition may have been elsewhere meanwhile, so the target is read
    /// back before writing.
    pub assignment: u64,
}

/// Where rows go.
pub enum Sink {
    Google(Google),
    Local(LocalFiles),
}

impl Sink {
    /// Writes `rows` (all of `form`, distinct response ids); one result per row, in order.
    pub async fn write(&self, form: &FormKey, rows: &[Pending]) -> Vec<Result<(), ApiError>> {
        match self {
            Sink::Google(google) => google.write(form, rows).await,
            Sink::Local(local) => local.write(form, rows).await,
        }
    }

    /// Whether the form's first spreadsheet is still to be created (a cheap guess; see
    /// [`Google::needs_spreadsheet`]). Local files never wait for one.
    pub fn needs_spreadsheet(&self, form: &FormKey, definition: &Form) -> bool {
        match self {
            Sink::Google(google) => google.needs_spreadsheet(form, definition),
            Sink::Local(_) => false,
        }
    }

    /// Creates the form's first spreadsheet if it has none, writing no row ([`Google::prepare`]).
    pub async fn prepare(&self, form: &FormKey, pending: &Pending) -> Result<(), ApiError> {
        match self {
            Sink::Google(google) => google.prepare(form, pending).await,
            Sink::Local(_) => Ok(()),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Sink::Google(_) => "google",
            Sink::Local(_) => "local",
        }
    }

    /// Whether rows go to Google (whose spreadsheets are targets with a circuit each).
    pub fn is_google(&self) -> bool {
        matches!(self, Sink::Google(_))
    }

    /// While a spreadsheet's circuit is open: can it be written again?
    pub async fn probe_spreadsheet(&self, spreadsheet_id: &str) -> Result<(), ApiError> {
        match self {
            Sink::Google(google) => google.probe_spreadsheet(spreadsheet_id).await,
            Sink::Local(local) => local.probe(),
        }
    }

    /// While the circuit is open: does the target answer?
    pub async fn probe(&self) -> Result<(), ApiError> {
        match self {
            Sink::Google(google) => google.probe().await,
            Sink::Local(local) => local.probe(),
        }
    }
}

/// The form with the longest version history among `rows` (they may have been fetched while a
/// new version was published): its layout has every column any of them needs.
pub fn newest_form(rows: &[Pending]) -> Option<&Arc<Form>> {
    rows.iter()
        .map(|p| &p.form)
        .max_by_key(|f| f.versions.len())
}
