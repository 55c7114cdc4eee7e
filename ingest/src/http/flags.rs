//! `GET /v1/forms/{form_id}/flags`: a form's flagged responses, a page at a time.
//!
//! Invariant: never a partial list: until the flags view has caught up, the answer is 503.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use formstream_core::api::{ApiError, Caller, PROBLEM_JSON, Problem};

use super::state::{AppState, own_form, require_ready};
use crate::flags::{FlagList, FlagsQuery};

/// A form's flagged responses, open or resolved, a page at a time.
///
/// Served from the flags view, which follows the response-flags topic on its own: until it has
/// caught up, this answers 503 with `Retry-After` rather than a partial list. `/readyz` does not
/// wait for it, on purpose: accepting responses does not depend on flags, and a long flags topic
/// must not keep a restarted gateway out of its load balancer.
#[utoipa::path(get, path = "/v1/forms/{form_id}/flags", tag = "flags",
    params(("form_id" = String, Path, description = "The form"), FlagsQuery),
    responses(
        (status = 200, description = "A page of flags, oldest first", body = FlagList),
        (status = 404, description = "No such form in the caller's organisation", body = Problem, content_type = PROBLEM_JSON),
        (status = 422, description = "Every problem of the query, at its parameter", body = Problem, content_type = PROBLEM_JSON),
    ))]
pub(crate) async fn list_flags(
    State(state): State<AppState>,
    caller: Caller,
    Path(form_id): Path<String>,
    query: Result<Query<FlagsQuery>, QueryRejection>,
) -> Result<axum::Json<FlagList>, ApiError> {
    require_ready(&state)?;
    let form = own_form(&state, &caller, &form_id)?;
    let query = super::extract::query(query)?;
    let listing = query.check().map_err(ApiError::Invalid)?;
    let flags = &state.inner.flags;
    if !flags.is_ready() {
        return Err(ApiError::NotReady {
            view: "flags",
            retry_after_secs: state.inner.retry_after_secs,
        });
    }
    let page = flags.page(
        &form.id,
        &form.organisation,
        listing.status,
        listing.after.as_ref(),
        listing.limit,
    );
    Ok(axum::Json(FlagList::of(&form.id, listing.status, page)))
}
