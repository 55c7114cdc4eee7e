//! The search API over the slang index: top words and phrases per city, the cities of a word, and
//! the answers matching a query, for one text question of one form.
//!
//! Invariant: a caller sees only its own organisation's forms (another organisation's form is a
//! 404, indistinguishable from an unknown one, as in the gateway), and only questions that the
//! form's slang action indexes. Errors are RFC 9457 problem+json (the gateway's `ApiError`).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use formstream_core::api::{ApiError, ApiKeys, Caller, HasApiKeys};
use formstream_core::forms::FormsView;
use formstream_core::problem::FieldProblem;
use formstream_schemas::Form;
use serde::{Deserialize, Serialize};

use crate::index::{CityCount, CityWords, Hits, Scope, SlangIndex};

/// Most words or phrases per city in one answer.
const MAX_WORDS: u32 = 100;
/// Most cities in one answer.
const MAX_CITIES: u32 = 1_000;
/// Most answers per page.
const MAX_PAGE: usize = 100;
/// Deepest page start: deep offsets cost a sort of everything before them.
const MAX_OFFSET: usize = 10_000;
/// Longest query or word, in characters.
const MAX_QUERY_CHARS: usize = 500;

/// What the handlers share.
#[derive(Clone)]
pub struct SearchState {
    pub index: Arc<SlangIndex>,
    pub forms: Arc<FormsView>,
    pub keys: ApiKeys,
    /// `Retry-After` of a 503 while the forms view is loading.
    pub retry_after_secs: u64,
}

impl HasApiKeys for SearchState {
    fn api_keys(&self) -> &ApiKeys {
        &self.keys
    }
}

/// The search routes (plus `/healthz`).
pub fn router(state: SearchState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/forms/{form_id}/slang/{question}/words", get(top_words))
        .route("/v1/forms/{form_id}/slang/{question}/cities", get(cities))
        .route("/v1/forms/{form_id}/slang/{question}/answers", get(answers))
        .with_state(state)
}

/// Query parameters arrive as text, so that every bad one is reported with its name.
#[derive(Debug, Default, Deserialize)]
pub struct Params {
    pub city: Option<String>,
    pub limit: Option<String>,
    pub cities: Option<String>,
    pub word: Option<String>,
    pub q: Option<String>,
    pub offset: Option<String>,
}

fn number<T: std::str::FromStr + PartialOrd + Copy + std::fmt::Display>(
    value: Option<&str>,
    name: &str,
    default: T,
    min: T,
    max: T,
    problems: &mut Vec<FieldProblem>,
) -> T {
    let Some(text) = value else {
        return default;
    };
    match text.parse::<T>() {
        Ok(n) if n >= min && n <= max => n,
        _ => {
            problems.push(FieldProblem::new(
                format!("/{name}"),
                "out_of_range",
                format!("{name} is a whole number from {min} to {max}"),
            ));
            default
        }
    }
}

fn text_param(
    value: Option<&str>,
    name: &str,
    required: bool,
    problems: &mut Vec<FieldProblem>,
) -> Option<String> {
    match value.map(str::trim) {
        None | Some("") if required => {
            problems.push(FieldProblem::new(
                format!("/{name}"),
                "required",
                format!("{name} is required"),
            ));
            None
        }
        None | Some("") => None,
        Some(text) if text.chars().count() > MAX_QUERY_CHARS => {
            problems.push(FieldProblem::new(
                format!("/{name}"),
                "too_long",
                format!("at most {MAX_QUERY_CHARS} characters"),
            ));
            None
        }
        Some(text) => Some(text.to_owned()),
    }
}

fn params(query: Result<Query<Params>, QueryRejection>) -> Result<Params, ApiError> {
    query.map(|Query(p)| p).map_err(|rejection| {
        ApiError::Invalid(vec![FieldProblem::new(
            "",
            "invalid_query",
            rejection.body_text(),
        )])
    })
}

/// The caller's form, if the question is one its slang action indexes (in any version, so that
/// answers indexed before a question left the action stay searchable).
fn scoped(
    state: &SearchState,
    caller: &Caller,
    form_id: &str,
    question: &str,
) -> Result<Arc<Form>, ApiError> {
    if !state.forms.is_ready() {
        return Err(ApiError::NotReady {
            view: "forms",
            retry_after_secs: state.retry_after_secs,
        });
    }
    let form = state
        .forms
        .get(&caller.organisation, form_id)
        .ok_or(ApiError::NotFound("form"))?;
    let indexed = form.versions.iter().any(|v| {
        v.slang
            .as_ref()
            .is_some_and(|s| s.text_questions.iter().any(|q| q == question))
    });
    if !indexed {
        return Err(ApiError::NotFound("indexed text question"));
    }
    Ok(form)
}

fn scope<'a>(form: &'a Form, question: &'a str) -> Scope<'a> {
    Scope {
        organisation: &form.organisation,
        form_id: &form.id,
        question,
    }
}

/// Runs an index query off the async runtime (searches are CPU-bound).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, crate::index::IndexError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("search task failed: {e}")))?
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("searching the slang index")))
}

#[derive(Debug, Serialize)]
pub struct WordsAnswer {
    pub form_id: String,
    pub question: String,
    pub cities: Vec<CityWords>,
}

/// `GET .../words[?city=C][&limit=N][&cities=N]`: the `limit` most frequent words and two-word
/// phrases (counted in answers that use them) of each of the `cities` most answered cities, or of
/// city `C` only.
async fn top_words(
    State(state): State<SearchState>,
    caller: Caller,
    Path((form_id, question)): Path<(String, String)>,
    query: Result<Query<Params>, QueryRejection>,
) -> Result<Json<WordsAnswer>, ApiError> {
    let form = scoped(&state, &caller, &form_id, &question)?;
    let p = params(query)?;
    let mut problems = Vec::new();
    let limit = number(p.limit.as_deref(), "limit", 20, 1, MAX_WORDS, &mut problems);
    let cities = number(
        p.cities.as_deref(),
        "cities",
        100,
        1,
        MAX_CITIES,
        &mut problems,
    );
    let city = text_param(p.city.as_deref(), "city", false, &mut problems);
    if !problems.is_empty() {
        return Err(ApiError::Invalid(problems));
    }
    let index = state.index.clone();
    let (f, q) = (form.clone(), question.clone());
    let found =
        blocking(move || index.top_words(scope(&f, &q), city.as_deref(), cities, limit)).await?;
    Ok(Json(WordsAnswer {
        form_id: form.id.clone(),
        question,
        cities: found,
    }))
}

#[derive(Debug, Serialize)]
pub struct CitiesAnswer {
    pub form_id: String,
    pub question: String,
    pub word: String,
    pub cities: Vec<CityCount>,
}

/// `GET .../cities?word=W[&limit=N]`: the cities whose answers use `W` (a word, or several as a
/// phrase), with how many answers in each, most first.
async fn cities(
    State(state): State<SearchState>,
    caller: Caller,
    Path((form_id, question)): Path<(String, String)>,
    query: Result<Query<Params>, QueryRejection>,
) -> Result<Json<CitiesAnswer>, ApiError> {
    let form = scoped(&state, &caller, &form_id, &question)?;
    let p = params(query)?;
    let mut problems = Vec::new();
    let limit = number(
        p.limit.as_deref(),
        "limit",
        100,
        1,
        MAX_CITIES,
        &mut problems,
    );
    let word = text_param(p.word.as_deref(), "word", true, &mut problems);
    let Some(word) = word.filter(|_| problems.is_empty()) else {
        return Err(ApiError::Invalid(problems));
    };
    let index = state.index.clone();
    let (f, q, w) = (form.clone(), question.clone(), word.clone());
    let found = blocking(move || index.cities_of(scope(&f, &q), &w, limit)).await?;
    Ok(Json(CitiesAnswer {
        form_id: form.id.clone(),
        question,
        word,
        cities: found,
    }))
}

#[derive(Debug, Serialize)]
pub struct AnswersPage {
    pub form_id: String,
    pub question: String,
    /// The `offset` of the next page; `null` on the last one.
    pub next_offset: Option<usize>,
    #[serde(flatten)]
    pub hits: Hits,
}

/// `GET .../answers?q=Q[&city=C][&limit=N][&offset=N]`: answers containing every word of `Q`
/// (the exact phrase when `Q` is in double quotes), best match first, optionally of one city.
async fn answers(
    State(state): State<SearchState>,
    caller: Caller,
    Path((form_id, question)): Path<(String, String)>,
    query: Result<Query<Params>, QueryRejection>,
) -> Result<Json<AnswersPage>, ApiError> {
    let form = scoped(&state, &caller, &form_id, &question)?;
    let p = params(query)?;
    let mut problems = Vec::new();
    let limit = number(p.limit.as_deref(), "limit", 20, 1, MAX_PAGE, &mut problems);
    let offset = number(
        p.offset.as_deref(),
        "offset",
        0,
        0,
        MAX_OFFSET,
        &mut problems,
    );
    let city = text_param(p.city.as_deref(), "city", false, &mut problems);
    let q = text_param(p.q.as_deref(), "q", true, &mut problems);
    let Some(q) = q.filter(|_| problems.is_empty()) else {
        return Err(ApiError::Invalid(problems));
    };
    let index = state.index.clone();
    let (f, qn) = (form.clone(), question.clone());
    let hits =
        blocking(move || index.search(scope(&f, &qn), &q, city.as_deref(), limit, offset)).await?;
    let shown = offset + hits.items.len();
    Ok(Json(AnswersPage {
        form_id: form.id.clone(),
        question,
        next_offset: (shown < hits.total && !hits.items.is_empty()).then_some(shown),
        hits,
    }))
}
