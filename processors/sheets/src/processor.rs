//! [`Sheets`]: hands each response of an exported form to the batcher and reports the outcome of
//! the write that carried it.
//!
//! Invariant: `Ok` only once the row is in the target (appended, updated, or found there already
//! at the same or a higher revision); a failure says whether it is worth retrying, with Google's
//! `Retry-After` when it sent one. Rows go only to spreadsheets the form's organisation owns: one
//! the exporter created for that form (recorded in `sheets.ledger` under the organisation), or
//! one listed under the organisation in the organisations file; a form naming any other (saved
//! before the gateway checked, or through a gateway given another file) is dead-lettered with
//! the reason, and nothing is written.
//!
//! Target: each Google spreadsheet, with its form's organisation, has a circuit of its own, so
//! that one organisation's spreadsheet that refuses access (not shared: 403) or fails holds back
//! only that spreadsheet's rows; after `--forbidden-timeout` of refusals they are dead-lettered
//! with the reason. (Local CSV files have none: their failures are the exporter's own.)

use std::future::Future;
use std::sync::Arc;

use anyhow::anyhow;
use formstream_core::organisations::Organisations;
use formstream_runtime::{
    Failure, Ledger, Processor, Record, RuntimeConfig, Target, TargetRef, Targets,
};
use formstream_schemas::Response;
use tokio::task::JoinHandle;

use crate::api::{ApiError, SheetsApi};
use crate::auth::{ServiceAccountKey, TokenSource};
use crate::batcher::{BatchSettings, Batcher};
use crate::config::SheetsArgs;
use crate::google::Google;
use crate::local::LocalFiles;
use crate::sink::{Pending, Sink};

/// The processor's name: group `formstream-sheets`, dead letters on `sheets.dlq`, ledger of
/// created spreadsheets on `sheets.ledger`.
pub const NAME: &str = "sheets";

/// The kind of the exporter's targets.
pub const SPREADSHEET: &str = "spreadsheet";

pub struct Sheets {
    /// Who owns which existing spreadsheet: checked for every row bound for Google (the local
    /// files are per organisation by construction); `None` for the local target.
    owners: Option<Organisations>,
    batcher: Arc<Batcher>,
    sink: Arc<Sink>,
    writer: JoinHandle<()>,
}

impl std::fmt::Debug for Sheets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sheets")
            .field("sink", &self.sink.kind())
            .finish_non_exhaustive()
    }
}

impl Drop for Sheets {
    fn drop(&mut self) {
        self.writer.abort();
    }
}

impl Sheets {
    /// Google Sheets when credentials are configured (opening the ledger of created spreadsheets
    /// first), local CSV files otherwise. `Ok(None)` when `shutdown` completes first.
    pub async fn open(
        args: SheetsArgs,
        runtime: &RuntimeConfig,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<Option<Self>> {
        let settings = BatchSettings {
            linger: args.sheets_linger,
            max_wait: args.sheets_max_wait,
            max_bytes: args.sheets_max_request_bytes,
        };
        // Read even for the local target, so that a broken file fails now, not when credentials
        // are added.
        let owners = args.organisations.load()?;
        let Some(path) = &args.sheets_credentials else {
            tracing::info!(dir = %args.sheets_dir.display(), "No --sheets-credentials: rows go to local CSV files.");
            return Ok(Some(Self::new(
                Sink::Local(LocalFiles::new(args.sheets_dir.clone())?),
                settings,
            )));
        };
        tracing::info!(
            spreadsheets = owners.spreadsheets(),
            source = owners.source(),
            "Spreadsheets owned by organisations loaded."
        );
        let key = ServiceAccountKey::load(path)?;
        tracing::info!(account = %key.client_email, base_url = %args.sheets_base_url, "Exporting to Google Sheets.");
        let client = reqwest::Client::builder()
            .timeout(args.sheets_timeout)
            .build()?;
        let tokens = Arc::new(TokenSource::new(key, client.clone())?);
        let api = SheetsApi::new(
            &args.sheets_base_url,
            client,
            tokens,
            args.sheets_writes_per_minute,
            args.sheets_reads_per_minute,
        );
        let Some(ledger) = Ledger::open(&runtime.kafka, &args.ledger, NAME, shutdown).await? else {
            return Ok(None);
        };
        let google = Google::new(
            api,
            ledger,
            args.sheets_cell_limit,
            args.sheets_max_request_bytes,
        );
        Ok(Some(
            Self::new(Sink::Google(google), settings).with_owners(owners),
        ))
    }

    /// A processor writing to `sink` (tests build sinks directly). Without
    /// [`Sheets::with_owners`], named spreadsheets are not checked.
    pub fn new(sink: Sink, settings: BatchSettings) -> Self {
        let sink = Arc::new(sink);
        let batcher = Batcher::new(settings);
        let writer = tokio::spawn(batcher.clone().run(sink.clone()));
        Sheets {
            owners: None,
            batcher,
            sink,
            writer,
        }
    }
}

impl Sheets {
    /// Checks every named spreadsheet against `owners` before writing to it.
    pub fn with_owners(mut self, owners: Organisations) -> Self {
        self.owners = Some(owners);
        self
    }
}

impl Processor for Sheets {
    type Value = Response;

    fn name(&self) -> &str {
        NAME
    }

    /// A row is replaced only by a higher revision (in either target), so revisions need not
    /// wait for each other: a correction joins its first revision's row while that waits for the
    /// quota ([`crate::batcher`]), where ordered it would cost a write of its own after it.
    fn orders_revisions(&self) -> bool {
        false
    }

    async fn handle(&self, record: &Record<Response>) -> Result<(), Failure> {
        let response = &record.value;
        let form = record
            .form
            .clone()
            .ok_or_else(|| Failure::permanent(anyhow!("form {} is not known", response.form_id)))?;
        // The form's newest version decides whether and where it is exported, so that all its
        // responses (and their corrections) land in one place.
        let Some(action) = form.current().and_then(|v| v.sheets.as_ref()) else {
            return Ok(());
        };
        if let (Some(owners), Some(id)) = (&self.owners, &action.spreadsheet_id)
            && !owners.owns_spreadsheet(&response.organisation, id)
        {
            return Err(Failure::permanent(anyhow!(
                "form {} of organisation {:?} names spreadsheet {id}, which is not one that organisation owns ({} lists it under no organisation or another one); nothing was written. Add it to the organisation's spreadsheets there, or update the form to \"create\": true, then re-drive this dead letter",
                response.form_id,
                response.organisation,
                owners.source()
            )));
        }
        let pending = Pending {
            response: response.clone(),
            form,
            assignment: record.assignment,
        };
        self.batcher.submit(pending).await.map_err(|error| {
            tracing::warn!(response_id = %response.response_id, revision = response.revision, error = %error, "Row not written.");
            failure(error)
        })
    }

    async fn probe(&self) -> anyhow::Result<()> {
        self.sink.probe().await.map_err(anyhow::Error::new)
    }

    /// The spreadsheet the form's newest version exports to, when rows go to Google: named by
    /// its id, or, for a chain the exporter creates, by the form id.
    fn targets<'a>(&'a self, record: &'a Record<Response>) -> Targets<'a> {
        if !self.sink.is_google() {
            return Targets::none();
        }
        let Some(form) = record.form.as_deref() else {
            return Targets::none();
        };
        let Some(sheets) = form.current().and_then(|v| v.sheets.as_ref()) else {
            return Targets::none();
        };
        Targets::one(TargetRef {
            organisation: &form.organisation,
            kind: SPREADSHEET,
            address: sheets
                .spreadsheet_id
                .as_deref()
                .unwrap_or(&record.value.form_id),
        })
    }

    async fn probe_target(&self, target: &Target) -> anyhow::Result<()> {
        self.sink
            .probe_spreadsheet(target.address())
            .await
            .map_err(anyhow::Error::new)
    }

    fn target_name(&self, target: &Target) -> String {
        format!("spreadsheet {}", target.address())
    }
}

/// The API's outcomes as the runtime's: a spreadsheet's own failure counts against its circuit;
/// one that concerns every spreadsheet (a 429 of the project's quota, the credentials, the
/// ledger) against the processor's one circuit, which one probe closes for all.
pub fn failure(error: ApiError) -> Failure {
    if error.is_permanent() {
        return Failure::permanent(error);
    }
    let own = error.is_the_spreadsheets();
    let failure = if matches!(error, ApiError::Forbidden(_)) {
        Failure::forbidden(error)
    } else {
        match error.retry_after() {
            Some(after) => Failure::retry_after(error, after),
            None => Failure::retriable(error),
        }
    };
    if own {
        failure.at(SPREADSHEET)
    } else {
        failure
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_spreadsheets_own_failures_count_against_its_circuit() {
        let quota = ApiError::Throttled {
            status: 429,
            retry_after: None,
            detail: "Quota exceeded".into(),
        };
        assert_eq!(failure(quota).target(), None);
        assert_eq!(
            failure(ApiError::Ledger("broker down".into())).target(),
            None
        );
        assert_eq!(failure(ApiError::Auth("revoked".into())).target(), None);
        assert_eq!(
            failure(ApiError::Forbidden("not shared".into())).target(),
            Some(SPREADSHEET)
        );
        let failing = ApiError::Throttled {
            status: 503,
            retry_after: None,
            detail: String::new(),
        };
        assert_eq!(failure(failing).target(), Some(SPREADSHEET));
        assert_eq!(
            failure(ApiError::Unavailable("timed out".into())).target(),
            Some(SPREADSHEET)
        );
    }
}
