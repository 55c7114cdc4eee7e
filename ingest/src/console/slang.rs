//! `GET /console/api/slang/{form_id}/{question}/{words|answers}`: the console's Slang page, through
//! the gateway to the slang processor's search API (`--console-slang-url`), as the caller's
//! organisation. The console session holds the organisation, not a key the browser could send to
//! the search API itself, so the gateway forwards the key the session was opened with (kept on the
//! server, see [`super::sessions`]) or the key the request came with.
//!
//! Invariant: the caller's own form only (another organisation's form is the same 404 as a missing
//! one, checked here before anything is forwarded); only the configured base URL with these fixed
//! paths is ever requested (path segments percent-encoded, no redirects followed, only the known
//! query parameters passed on); every call is bounded in time ([`TIMEOUT`]) and size
//! ([`MAX_ANSWER_BYTES`]); the search API's status and JSON or problem+json body are relayed as
//! they are, and a search API that is down or slow is a 503 or 504 problem.

use axum::extract::{Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use formstream_core::api::{ApiError, Caller, PROBLEM_JSON, Problem};
use reqwest::Url;
use serde::Deserialize;
use std::time::Duration;

use crate::http::AppState;
use crate::http::state::{own_form, require_ready};

/// Longest a call to the search API may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer relayed: the search API's own caps (100 words per city, 100 answers per page)
/// fit well below it.
const MAX_ANSWER_BYTES: usize = 2 * 1024 * 1024;
/// Longest query parameter passed on (the search API's own limit is 500 characters).
const MAX_PARAM_CHARS: usize = 1_000;

/// The search API's base URL, if configured, and the client that calls it.
pub struct SlangSearch {
    base: Option<Url>,
    http: reqwest::Client,
}

/// `--console-slang-url`: an http or https URL that can take path segments.
pub fn parse_base_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim()).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(format!("{text:?} is not an http(s) base URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{text:?}: a base URL has no query or fragment"));
    }
    Ok(url)
}

impl SlangSearch {
    pub fn new(base: Option<Url>) -> Self {
        SlangSearch {
            base,
            http: reqwest::Client::builder()
                .timeout(TIMEOUT)
                .connect_timeout(TIMEOUT)
                // Never follow the search API elsewhere.
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
        }
    }

    /// `<base>/v1/forms/{form_id}/slang/{question}/{what}`, each segment percent-encoded.
    fn url(&self, form_id: &str, question: &str, what: &str) -> Option<Url> {
        let mut url = self.base.clone()?;
        url.path_segments_mut()
            .ok()?
            .pop_if_empty()
            .extend(["v1", "forms", form_id, "slang", question, what]);
        Some(url)
    }
}

/// The query parameters the page may pass on (the search API checks their values).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SlangParams {
    /// One city only.
    pub city: Option<String>,
    /// Words per city (`words`, 1 to 100) or answers per page (`answers`, 1 to 100).
    pub limit: Option<String>,
    /// Most answered cities shown (`words`).
    pub cities: Option<String>,
    /// The search text (`answers`, required there).
    pub q: Option<String>,
    /// Page start (`answers`).
    pub offset: Option<String>,
}

impl SlangParams {
    fn pairs(&self) -> Result<Vec<(&'static str, &str)>, ApiError> {
        let all = [
            ("city", &self.city),
            ("limit", &self.limit),
            ("cities", &self.cities),
            ("q", &self.q),
            ("offset", &self.offset),
        ];
        let mut pairs = Vec::new();
        for (name, value) in all {
            let Some(value) = value.as_deref() else {
                continue;
            };
            if value.chars().count() > MAX_PARAM_CHARS {
                return Err(ApiError::Invalid(vec![
                    formstream_core::problem::FieldProblem::new(
                        format!("/{name}"),
                        "too_long",
                        format!("at most {MAX_PARAM_CHARS} characters"),
                    ),
                ]));
            }
            pairs.push((name, value));
        }
        Ok(pairs)
    }
}

/// A problem of this proxy's own (the search API not configured, down, slow or answering
/// something else than JSON).
fn problem(
    status: StatusCode,
    kind: &'static str,
    title: &'static str,
    detail: String,
) -> Response {
    let body = Problem {
        kind,
        title,
        status: status.as_u16(),
        detail,
        errors: Vec::new(),
    };
    (
        status,
        [(header::CONTENT_TYPE, PROBLEM_JSON)],
        serde_json::to_vec(&body).unwrap_or_default(),
    )
        .into_response()
}

/// The key to call the search API with: the one the request came with, else its session's.
fn caller_key(state: &AppState, parts: &Parts) -> Option<String> {
    let headers = &parts.headers;
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(|key| key.trim().to_owned())
        .or_else(|| state.inner.sessions.api_key(headers))
}

async fn forward(
    state: &AppState,
    caller: &Caller,
    parts: &Parts,
    (form_id, question): (String, String),
    params: &SlangParams,
    what: &'static str,
) -> Result<Response, ApiError> {
    let search = &state.inner.slang;
    if search.base.is_none() {
        return Ok(problem(
            StatusCode::NOT_IMPLEMENTED,
            "/problems/slang-not-configured",
            "Slang search is not configured",
            "this gateway has no slang search API configured (--console-slang-url)".to_owned(),
        ));
    }
    require_ready(state)?;
    own_form(state, caller, &form_id)?;
    let pairs = params.pairs()?;
    let key = caller_key(state, parts).ok_or(ApiError::Unauthorized)?;
    let url = search
        .url(&form_id, &question, what)
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("the slang URL takes no path")))?;
    let sent = search
        .http
        .get(url)
        .query(&pairs)
        .bearer_auth(key)
        .send()
        .await;
    let mut answer = match sent {
        Ok(answer) => answer,
        Err(error) => return Ok(unreachable(error)),
    };
    let status = answer.status();
    let content_type = answer
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if !(content_type.starts_with("application/json") || content_type.starts_with(PROBLEM_JSON)) {
        return Ok(problem(
            StatusCode::BAD_GATEWAY,
            "/problems/bad-gateway",
            "Slang search answered something else",
            format!("the slang search API answered {status} without JSON"),
        ));
    }
    let mut body = Vec::new();
    loop {
        match answer.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Ok(problem(
                        StatusCode::BAD_GATEWAY,
                        "/problems/bad-gateway",
                        "Slang search answered too much",
                        format!("the slang search API's answer is over {MAX_ANSWER_BYTES} bytes"),
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(error) => return Ok(unreachable(error)),
        }
    }
    let content_type =
        HeaderValue::from_str(&content_type).unwrap_or(HeaderValue::from_static(PROBLEM_JSON));
    let status = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    Ok((status, [(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// 504 when the search API took too long, else 503.
fn unreachable(error: reqwest::Error) -> Response {
    if error.is_timeout() {
        return problem(
            StatusCode::GATEWAY_TIMEOUT,
            "/problems/slang-timeout",
            "Slang search did not answer in time",
            format!(
                "the slang search API did not answer within {} s",
                TIMEOUT.as_secs()
            ),
        );
    }
    tracing::warn!(error = %error.without_url(), "The slang search API is unreachable.");
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "/problems/slang-unavailable",
        "Slang search is unavailable",
        "the slang search API did not answer (is the slang processor running?); try again later"
            .to_owned(),
    )
}

/// What the console may ask the search API: its `words` (the top words and two-word phrases per
/// city) or its `answers` (those matching `q`, with their city) of one of the caller's forms'
/// indexed text questions (`GET /v1/forms/{form_id}/slang/{question}/words|answers` there).
#[utoipa::path(get, path = "/console/api/slang/{form_id}/{question}/{what}", tag = "console",
    params(("form_id" = String, Path), ("question" = String, Path),
        ("what" = String, Path, description = "`words` (query: city, limit, cities) or `answers` (query: q, city, limit, offset)"),
        SlangParams),
    responses(
        (status = 200, description = "The search API's answer: for `words` `{form_id, question, cities: [{city, answers, words: [{word, answers}], phrases}]}`; for `answers` `{form_id, question, next_offset, total, items: [{response_id, revision, cities, text, submitted_at, score}]}`", content_type = "application/json"),
        (status = 404, description = "Not the caller's form, not an indexed question, or `what` is neither `words` nor `answers`", body = Problem, content_type = PROBLEM_JSON),
        (status = 422, description = "A bad query parameter", body = Problem, content_type = PROBLEM_JSON),
        (status = 501, description = "No slang search API configured", body = Problem, content_type = PROBLEM_JSON),
        (status = 503, description = "The slang search API is down", body = Problem, content_type = PROBLEM_JSON),
        (status = 504, description = "The slang search API did not answer in time", body = Problem, content_type = PROBLEM_JSON),
    ))]
pub(crate) async fn search(
    State(state): State<AppState>,
    caller: Caller,
    Path((form_id, question, what)): Path<(String, String, String)>,
    Query(params): Query<SlangParams>,
    parts: Parts,
) -> Result<Response, ApiError> {
    let what = match what.as_str() {
        "words" => "words",
        "answers" => "answers",
        _ => return Err(ApiError::NotFound("route")),
    };
    forward(&state, &caller, &parts, (form_id, question), &params, what).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_base_with_the_fixed_path_and_encoded_segments_is_requested() {
        let search = SlangSearch::new(Some(parse_base_url("http://slang:8090/").expect("a base")));
        let url = search.url("a/../b?x", "q#1", "words").expect("a URL");
        assert_eq!(
            url.as_str(),
            "http://slang:8090/v1/forms/a%2F..%2Fb%3Fx/slang/q%231/words"
        );
        assert!(parse_base_url("file:///etc").is_err());
        assert!(parse_base_url("http://slang:8090/?x=1").is_err());
        assert!(SlangSearch::new(None).url("f", "q", "words").is_none());
    }
}
