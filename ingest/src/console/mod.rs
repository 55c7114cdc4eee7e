//! The web console at `/console`: its pages (HTML, CSS and JavaScript built into the binary: no
//! CDN, no external font, it works with no internet) and its session routes. The pages call the
//! same organisation-scoped `/v1` routes as any client, authenticated by the session cookie
//! ([`sessions`]) instead of a key.
//!
//! Invariant: the console sees exactly what its organisation's API key sees; the key itself is
//! sent once, at sign-in, and never kept by the browser (the gateway keeps it in the session, for
//! [`slang`]'s calls to the slang search API as the organisation).

pub mod live;
pub mod sessions;
pub mod slang;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use formstream_core::api::{ApiError, HasApiKeys, PROBLEM_JSON, Problem};
use serde::Deserialize;

use crate::http::AppState;
use crate::http::extract::ApiJson;
pub use sessions::{SessionView, Sessions};

const INDEX_HTML: &str = include_str!("../../console/index.html");
const CONSOLE_JS: &str = include_str!("../../console/console.js");
const CONSOLE_CSS: &str = include_str!("../../console/console.css");

/// Only this origin's own files run or load; no framing (clickjacking), no inline script.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The console's page.
#[utoipa::path(get, path = "/console", tag = "console",
    responses((status = 200, description = "The console (HTML)", content_type = "text/html")))]
pub(crate) async fn page() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// The console's script.
#[utoipa::path(get, path = "/console/console.js", tag = "console",
    responses((status = 200, description = "JavaScript", content_type = "text/javascript")))]
pub(crate) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", CONSOLE_JS)
}

/// The console's style sheet.
#[utoipa::path(get, path = "/console/console.css", tag = "console",
    responses((status = 200, description = "CSS", content_type = "text/css")))]
pub(crate) async fn style() -> Response {
    asset("text/css; charset=utf-8", CONSOLE_CSS)
}

/// The body of `POST /console/api/session`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    /// An API key of the organisation.
    pub api_key: String,
}

/// Signs in with an API key: answers the session (organisation, CSRF token) and sets its cookie
/// (HttpOnly, SameSite=Strict; Secure behind an HTTPS proxy).
#[utoipa::path(post, path = "/console/api/session", tag = "console", request_body = SignIn,
    responses(
        (status = 201, description = "Signed in; the session cookie is set", body = SessionView),
        (status = 401, description = "Unknown key", body = Problem, content_type = PROBLEM_JSON),
    ))]
pub(crate) async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SignIn>,
) -> Result<Response, ApiError> {
    let caller = state
        .api_keys()
        .authenticate(body.api_key.trim())
        .ok_or(ApiError::Unauthorized)?;
    let sessions = &state.inner.sessions;
    tracing::info!(organisation = %caller.organisation, key = %caller.key_name, "Console session opened.");
    let (token, view) = sessions.open(caller, body.api_key.trim());
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie = format!(
        "{}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
        sessions::COOKIE,
        sessions.absolute().as_secs(),
        if secure { "; Secure" } else { "" }
    );
    let cookie =
        HeaderValue::from_str(&cookie).map_err(|e| ApiError::Internal(anyhow::anyhow!(e)))?;
    Ok((
        StatusCode::CREATED,
        [(header::SET_COOKIE, cookie)],
        axum::Json(view),
    )
        .into_response())
}

/// The current session (after a reload, the page gets its CSRF token here), or 401.
#[utoipa::path(get, path = "/console/api/session", tag = "console",
    responses(
        (status = 200, description = "The session", body = SessionView),
        (status = 401, description = "No session, or it expired", body = Problem, content_type = PROBLEM_JSON),
    ))]
pub(crate) async fn current(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<axum::Json<SessionView>, ApiError> {
    state
        .inner
        .sessions
        .current(&headers)
        .map(axum::Json)
        .ok_or(ApiError::Unauthorized)
}

/// Signs out: ends the session on the server and clears its cookie. Needs `x-csrf-token`.
#[utoipa::path(delete, path = "/console/api/session", tag = "console",
    responses(
        (status = 204, description = "Signed out"),
        (status = 403, description = "No CSRF token", body = Problem, content_type = PROBLEM_JSON),
    ))]
pub(crate) async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let sessions = &state.inner.sessions;
    if !sessions.csrf_ok(&headers) {
        return Err(ApiError::Forbidden(
            "signing out needs the session's x-csrf-token header",
        ));
    }
    sessions.close(&headers);
    let clear = format!(
        "{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
        sessions::COOKIE
    );
    let clear =
        HeaderValue::from_str(&clear).map_err(|e| ApiError::Internal(anyhow::anyhow!(e)))?;
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, clear)]).into_response())
}
