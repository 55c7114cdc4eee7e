//! What every handler shares: the gateway's state, and the checks most handlers start with (the
//! forms view is ready, the form is the caller's).
//!
//! Invariant: a handler sees only the caller's own forms; another organisation's form answers
//! exactly as a missing one does (404).

use std::sync::Arc;

use axum::http::request::Parts;

use formstream_core::api::{ApiError, ApiKeys, Caller, HasApiKeys};
use formstream_core::forms::{FormActions, FormsView};
use formstream_core::organisations::Organisations;
use formstream_core::phones::Phones;
use formstream_schemas::{Encoder, Form, Response};

use super::dead_letters::DeadLetters;
use super::responses::RetryCacheEntry;
use crate::flags::FlagsView;
use crate::idempotency::Submissions;
use crate::kafka::{PublishError, Publisher};
use crate::metrics::Metrics;

/// Everything a handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Inner>,
}

/// The gateway's shared state; see each field.
pub struct Inner {
    pub keys: ApiKeys,
    /// The existing spreadsheets each organisation owns (`--organisations-file`): a form naming
    /// any other is refused at save.
    pub organisations: Organisations,
    pub view: Arc<FormsView>,
    /// Flagged responses, for `GET /v1/forms/{form_id}/flags`.
    pub flags: Arc<FlagsView>,
    /// The processors' dead letters, for `/v1/dead-letters`.
    pub dead_letters: DeadLetters,
    /// Responses' producer: a record goes on being delivered after its caller's 503.
    pub publisher: Publisher,
    /// Forms' producer: a record is given up when its caller is answered.
    pub form_publisher: Publisher,
    pub forms_topic: String,
    pub responses_topic: String,
    pub form_encoder: Encoder<Form>,
    pub response_encoder: Encoder<Response>,
    pub metrics: Metrics,
    pub max_text_chars: usize,
    pub max_batch_items: usize,
    pub phones: Phones,
    pub retry_after_secs: u64,
    /// Recent submissions with a client-supplied id, to answer retries without publishing again.
    pub submissions: Arc<Submissions<RetryCacheEntry>>,
    /// Form writes are rare; one at a time per instance keeps version numbers gap-free here.
    pub form_writes: tokio::sync::Mutex<()>,
    /// The web console's sessions (cookie -> caller).
    pub sessions: crate::console::Sessions,
    /// Topic totals and processor lag for the console's Live page.
    pub live: Arc<crate::console::live::Live>,
    /// The slang search API the console's Slang page reaches through the gateway.
    pub slang: crate::console::slang::SlangSearch,
    /// The actions the registered processors declare; a form's `actions` are checked by them.
    pub form_actions: FormActions,
}

impl AppState {
    pub fn new(inner: Inner) -> Self {
        AppState {
            inner: Arc::new(inner),
        }
    }
}

impl HasApiKeys for AppState {
    fn api_keys(&self) -> &ApiKeys {
        &self.inner.keys
    }

    fn session_caller(&self, parts: &Parts) -> Option<Result<Caller, ApiError>> {
        self.inner.sessions.caller(parts)
    }
}

/// 503 with `Retry-After` until the forms view has caught up: a form missing from a view that is
/// still loading must not answer 404.
pub(crate) fn require_ready(state: &AppState) -> Result<(), ApiError> {
    if state.inner.view.is_ready() {
        Ok(())
    } else {
        Err(ApiError::NotReady {
            view: "forms",
            retry_after_secs: state.inner.retry_after_secs,
        })
    }
}

/// The caller's form, or 404: another organisation's form of that id is not the caller's, and
/// is indistinguishable from a missing one.
pub(crate) fn own_form(
    state: &AppState,
    caller: &Caller,
    form_id: &str,
) -> Result<Arc<Form>, ApiError> {
    state
        .inner
        .view
        .get(&caller.organisation, form_id)
        .ok_or(ApiError::NotFound("form"))
}

/// The answer for a record Kafka did not acknowledge: 413 when it is larger than Kafka accepts
/// (retrying would fail the same way, so a 503 would make clients retry forever), else 503.
pub(crate) fn unavailable(state: &AppState, error: PublishError) -> ApiError {
    if error.kind() == "too_large" {
        return ApiError::RecordTooLarge;
    }
    ApiError::Unavailable {
        retry_after_secs: state.inner.retry_after_secs,
        cause: error.to_string(),
    }
}
