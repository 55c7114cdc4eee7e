//! A client of the handful of Sheets API v4 endpoints the exporter uses, with its quotas: every
//! call waits for the read or write rate limiter first, so that the exporter stays within the
//! configured per-minute quota instead of discovering it through 429s.
//!
//! Invariant: each error says what happens next ([`ApiError`]): a 429, 408 or 5xx and a lost
//! connection are retried (with Google's `Retry-After` when it sends one); a write whose answer was
//! lost may have been applied ([`ApiError::is_ambiguous`]), which the caller settles by reading
//! the sheet back before writing again. No token or key ever appears in an error.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use formstream_runtime::http::HttpError;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::auth::TokenSource;

/// What went wrong with a call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// 408, 429 or 5xx: try again later (after `retry_after` if Google said).
    #[error("the Sheets API answered {status}: {detail}")]
    Throttled {
        status: u16,
        retry_after: Option<Duration>,
        detail: String,
    },
    /// No answer (refused, reset, timed out).
    #[error("no answer from the Sheets API: {0}")]
    Unavailable(String),
    /// The credentials were refused (401, or no token could be had): retried (the circuit
    /// opens) while an operator fixes them, rather than dead-lettering rows.
    #[error("Google refused the credentials: {0}")]
    Auth(String),
    /// 403 PERMISSION_DENIED: the spreadsheet is not shared with the service account. Retried
    /// while someone shares it, until the spreadsheet has refused for `--forbidden-timeout`;
    /// then its rows are dead-lettered with this reason.
    #[error(
        "Google refused access to the spreadsheet (is it shared with the exporter's service account?): {0}"
    )]
    Forbidden(String),
    /// The ledger of created spreadsheets (a Kafka topic) did not answer: the exporter's own
    /// trouble (the broker restarting, say), retried, and no spreadsheet's fault.
    #[error("the ledger of spreadsheets: {0}")]
    Ledger(String),
    /// Any other 4xx: the request can never succeed as it is.
    #[error("the Sheets API refused the request ({status}): {detail}")]
    Rejected { status: u16, detail: String },
}

impl ApiError {
    /// A write that failed this way may still have been applied.
    pub fn is_ambiguous(&self) -> bool {
        match self {
            ApiError::Unavailable(_) => true,
            ApiError::Throttled { status, .. } => *status >= 500 || *status == 408,
            _ => false,
        }
    }

    /// Google's answer to a write that would pass the cells-per-spreadsheet limit.
    pub fn is_cell_limit(&self) -> bool {
        matches!(self, ApiError::Rejected { status: 400, detail } if detail.contains("above the limit of"))
    }

    /// Google's answer to a write outside the tab's grid (our idea of the grid was out of date).
    pub fn is_grid_limit(&self) -> bool {
        matches!(self, ApiError::Rejected { status: 400, detail } if detail.contains("exceeds grid limits"))
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Throttled { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the failure is one spreadsheet's own (it refuses access, it is at its cell
    /// limit, it fails or times out), so that only its rows wait; the others (the per-minute
    /// quota, which is the whole project's; the credentials; the ledger) concern every
    /// spreadsheet alike, and holding them per spreadsheet would open one circuit per form,
    /// each closed only by a probe of its own under the read quota.
    pub fn is_the_spreadsheets(&self) -> bool {
        match self {
            ApiError::Forbidden(_) | ApiError::Unavailable(_) | ApiError::Rejected { .. } => true,
            ApiError::Throttled { status, .. } => *status != 429,
            ApiError::Auth(_) | ApiError::Ledger(_) => false,
        }
    }

    pub fn is_permanent(&self) -> bool {
        matches!(self, ApiError::Rejected { .. })
    }
}

/// A tab of a spreadsheet, as `spreadsheets.get` describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Tab {
    pub sheet_id: i64,
    pub title: String,
    pub rows: u64,
    pub columns: u64,
}

/// How long one call keeps retrying 429s before the error goes up to the runtime: Google's quota
/// is per minute, so a minute of 429s is the quota used up elsewhere, not a passing excess.
const THROTTLED_FOR: Duration = Duration::from_secs(60);

/// The longest wait between two tries of a throttled call without a `Retry-After`: short, so that
/// the call goes through soon after the quota frees up.
const THROTTLED_WAIT_MAX: Duration = Duration::from_secs(4);

/// A rate limiter of `per_minute` calls, spread evenly (a burst of one) with 2 % to spare: Google
/// counts quota per minute, and an even spread a little below the quota never exceeds it in any
/// window, whatever the timers' jitter.
fn limiter(per_minute: u32) -> DefaultDirectRateLimiter {
    let per_minute = per_minute.max(1);
    let period = Duration::from_secs(60) * 102 / 100 / per_minute;
    let quota = Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_minute(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::MIN);
    RateLimiter::direct(quota)
}

/// The Sheets API client.
pub struct SheetsApi {
    base_url: String,
    client: reqwest::Client,
    tokens: Arc<TokenSource>,
    writes: DefaultDirectRateLimiter,
    reads: DefaultDirectRateLimiter,
}

impl std::fmt::Debug for SheetsApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SheetsApi")
            .field("base_url", &self.base_url)
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

enum Kind {
    Read,
    Write,
}

impl SheetsApi {
    pub fn new(
        base_url: &str,
        client: reqwest::Client,
        tokens: Arc<TokenSource>,
        writes_per_minute: u32,
        reads_per_minute: u32,
    ) -> Self {
        SheetsApi {
            base_url: base_url.trim_end_matches('/').to_owned(),
            client,
            tokens,
            writes: limiter(writes_per_minute),
            reads: limiter(reads_per_minute),
        }
    }

    /// `<base>/v4/spreadsheets[/<segment>...]`, each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Result<url::Url, ApiError> {
        let mut url =
            url::Url::parse(&format!("{}/v4/spreadsheets", self.base_url)).map_err(|e| {
                ApiError::Rejected {
                    status: 0,
                    detail: format!("--sheets-base-url: {e}"),
                }
            })?;
        if let Ok(mut path) = url.path_segments_mut() {
            path.extend(segments);
        }
        Ok(url)
    }

    /// One call, with 429s absorbed here for up to [`THROTTLED_FOR`]: Google applied nothing, so
    /// waiting (its `Retry-After`, or 1, 2, 4, 4... s) and sending again is safe, and it keeps a
    /// throttled call from failing every row of its batch (which would open the runtime's circuit,
    /// whose probes back off up to `--probe-max`, for a quota that frees up within the minute).
    async fn call<T: DeserializeOwned>(
        &self,
        kind: Kind,
        method: reqwest::Method,
        url: url::Url,
        body: Option<&Value>,
    ) -> Result<T, ApiError> {
        let mut attempt = 0u32;
        let mut waited = Duration::ZERO;
        loop {
            let outcome = self
                .call_once(&kind, method.clone(), url.clone(), body)
                .await;
            match outcome {
                Err(ApiError::Throttled {
                    status: 429,
                    retry_after,
                    ..
                }) if waited < THROTTLED_FOR => {
                    let backoff = Duration::from_secs(1 << attempt.min(8)).min(THROTTLED_WAIT_MAX);
                    let wait = retry_after.unwrap_or(backoff);
                    tracing::debug!(?wait, attempt, "The Sheets API throttled a call; waiting.");
                    tokio::time::sleep(wait).await;
                    waited += wait;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn call_once<T: DeserializeOwned>(
        &self,
        kind: &Kind,
        method: reqwest::Method,
        url: url::Url,
        body: Option<&Value>,
    ) -> Result<T, ApiError> {
        match kind {
            Kind::Read => self.reads.until_ready().await,
            Kind::Write => self.writes.until_ready().await,
        }
        let token = self.tokens.token().await?;
        let mut request = self.client.request(method, url).bearer_auth(token.expose());
        if let Some(body) = body {
            request = request.json(body);
        }
        let answer = request
            .send()
            .await
            .map_err(|e| ApiError::Unavailable(e.without_url().to_string()))?;
        let status = answer.status();
        if status.is_success() {
            return answer.json().await.map_err(|e| {
                ApiError::Unavailable(format!("reading the answer: {}", e.without_url()))
            });
        }
        // Google's error body, {"error": {"code", "message", "status"}}, read by the runtime.
        let error = HttpError::read(answer).await;
        let after = error.retry_after;
        let detail = match &error.code {
            Some(status) => format!("{status} {}", error.message),
            None => error.message,
        };
        let code = status.as_u16();
        Err(match code {
            401 => {
                self.tokens.invalidate().await;
                ApiError::Auth(detail)
            }
            403 if !detail.contains("RATE_LIMIT") => ApiError::Forbidden(detail),
            403 | 408 | 429 => ApiError::Throttled {
                status: code,
                retry_after: after,
                detail,
            },
            _ if status.is_server_error() => ApiError::Throttled {
                status: code,
                retry_after: after,
                detail,
            },
            _ => ApiError::Rejected {
                status: code,
                detail,
            },
        })
    }

    /// `spreadsheets.get`, properties of the tabs only.
    pub async fn tabs(&self, spreadsheet_id: &str) -> Result<Vec<Tab>, ApiError> {
        let mut url = self.url(&[spreadsheet_id])?;
        url.query_pairs_mut().append_pair(
            "fields",
            "sheets.properties(sheetId,title,gridProperties(rowCount,columnCount))",
        );
        let answer: Value = self
            .call(Kind::Read, reqwest::Method::GET, url, None)
            .await?;
        Ok(answer
            .get("sheets")
            .and_then(Value::as_array)
            .map(|sheets| {
                sheets
                    .iter()
                    .filter_map(|s| tab_of(s.get("properties")?))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// One `spreadsheets.get` of the tabs' properties and, with `includeGridData`, the cells of
    /// `ranges` of tab `tab` (each as rows of values from column A, trailing empty rows
    /// trimmed): a read-back in one read of the quota instead of a `spreadsheets.get` and a
    /// `values.batchGet`. `None` when the spreadsheet has no tab `tab` (Google cannot parse the
    /// ranges: 400).
    pub async fn tabs_and_cells(
        &self,
        spreadsheet_id: &str,
        tab: &str,
        ranges: &[&str],
    ) -> Result<Option<(Vec<Tab>, Vec<Vec<Vec<Value>>>)>, ApiError> {
        let mut url = self.url(&[spreadsheet_id])?;
        {
            let mut query = url.query_pairs_mut();
            for range in ranges {
                query.append_pair("ranges", &format!("{tab}!{range}"));
            }
            query.append_pair("includeGridData", "true").append_pair(
                "fields",
                "sheets(properties(sheetId,title,gridProperties(rowCount,columnCount)),data(startRow,rowData(values(userEnteredValue))))",
            );
        }
        // Parsed straight into the few fields read (a read-back of tens of thousands of rows is
        // megabytes of JSON: no tree of maps per cell).
        let answer: GridAnswer = match self.call(Kind::Read, reqwest::Method::GET, url, None).await
        {
            Ok(answer) => answer,
            Err(ApiError::Rejected {
                status: 400,
                detail,
            }) if detail.contains("Unable to parse range") => {
                return Ok(None);
            }
            Err(error) => return Err(error),
        };
        let tabs = answer
            .sheets
            .iter()
            .filter_map(|s| tab_of(&s.properties))
            .collect();
        let data = answer
            .sheets
            .into_iter()
            .find(|s| s.properties.get("title").and_then(Value::as_str) == Some(tab))
            .map(|s| s.data)
            .unwrap_or_default();
        let cells = data
            .into_iter()
            .map(|grid| {
                let mut rows: Vec<Vec<Value>> = vec![Vec::new(); grid.start_row];
                for row in grid.row_data {
                    let mut values: Vec<Value> =
                        row.values.into_iter().map(CellData::into_value).collect();
                    while values.last().is_some_and(|c| c.as_str() == Some("")) {
                        values.pop();
                    }
                    rows.push(values);
                }
                while rows.last().is_some_and(Vec::is_empty) {
                    rows.pop();
                }
                rows
            })
            .collect();
        Ok(Some((tabs, cells)))
    }

    /// `spreadsheets.batchUpdate` (addSheet, appendDimension, ...): the replies.
    pub async fn batch_update(
        &self,
        spreadsheet_id: &str,
        requests: Vec<Value>,
    ) -> Result<Vec<Value>, ApiError> {
        let url = self.url(&[&format!("{spreadsheet_id}:batchUpdate")])?;
        let body = json!({"requests": requests});
        let answer: Value = self
            .call(Kind::Write, reqwest::Method::POST, url, Some(&body))
            .await?;
        Ok(answer
            .get("replies")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    /// `spreadsheets.batchUpdate` of `requests` (applied atomically: all or none) that also
    /// answers the cells of `checks` (A1 ranges of one column of one tab) as they are after the
    /// update (`includeSpreadsheetInResponse` with `responseRanges`): row number to value (an
    /// empty cell as an empty string). This is how one write both appends (`appendCells`, whose
    /// reply is empty) and learns where the rows went.
    pub async fn update_and_check(
        &self,
        spreadsheet_id: &str,
        requests: Vec<Value>,
        checks: &[String],
    ) -> Result<HashMap<u64, Value>, ApiError> {
        let url = self.url(&[&format!("{spreadsheet_id}:batchUpdate")])?;
        let body = json!({
            "requests": requests,
            "includeSpreadsheetInResponse": true,
            "responseRanges": checks,
            "responseIncludeGridData": true,
        });
        let answer: Value = self
            .call(Kind::Write, reqwest::Method::POST, url, Some(&body))
            .await?;
        let sheets = answer
            .pointer("/updatedSpreadsheet/sheets")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                ApiError::Unavailable("a batchUpdate answer without the spreadsheet".into())
            })?;
        let mut cells = HashMap::new();
        for data in sheets
            .iter()
            .filter_map(|s| s.get("data").and_then(Value::as_array))
            .flatten()
        {
            let start = data.get("startRow").and_then(Value::as_u64).unwrap_or(0);
            let rows = data.get("rowData").and_then(Value::as_array);
            for (i, row) in rows.into_iter().flatten().enumerate() {
                let cell = row.pointer("/values/0").map_or(Value::from(""), cell_value);
                cells.insert(start + i as u64 + 1, cell);
            }
        }
        Ok(cells)
    }

    /// `values.append` of `rows` to tab `tab`, `valueInputOption=RAW` (every value stored as
    /// sent: a string is never parsed, so an answer like `=IMPORTXML(...)` stays text) and
    /// `insertDataOption=OVERWRITE` (the rows go after the last row with data, into the grid's
    /// empty rows first, then into rows added for them: the cell accounting of `appendCells`).
    /// Each cell is a bare JSON value, 37 bytes less than a `CellData` when it has a value (0.31x
    /// the bytes for the benchmark's rows, bench/RESULTS.md). Where the rows went, from the answer's
    /// `updates.updatedRange`.
    pub async fn append_values(
        &self,
        spreadsheet_id: &str,
        tab: &str,
        rows: &[Vec<Value>],
    ) -> Result<Appended, ApiError> {
        let mut url = self.url(&[spreadsheet_id, "values", &format!("{tab}:append")])?;
        url.query_pairs_mut()
            .append_pair("valueInputOption", "RAW")
            .append_pair("insertDataOption", "OVERWRITE");
        let body = json!({"majorDimension": "ROWS", "values": rows});
        let answer: AppendAnswer = self
            .call(Kind::Write, reqwest::Method::POST, url, Some(&body))
            .await?;
        let range = answer.updates.updated_range;
        let first_row = first_row_of(&range).ok_or_else(|| {
            ApiError::Unavailable(format!(
                "a values.append answer without its rows: {range:?}"
            ))
        })?;
        Ok(Appended {
            first_row,
            rows: answer.updates.updated_rows,
        })
    }

    /// Adds a tab `title` of `columns` columns and one row; its sheet id.
    pub async fn add_tab(
        &self,
        spreadsheet_id: &str,
        title: &str,
        columns: u64,
    ) -> Result<Tab, ApiError> {
        let replies = self
            .batch_update(
                spreadsheet_id,
                vec![json!({"addSheet": {"properties": {"title": title,
                    "gridProperties": {"rowCount": 1, "columnCount": columns}}}})],
            )
            .await?;
        replies
            .first()
            .and_then(|r| tab_of(r.pointer("/addSheet/properties")?))
            .ok_or_else(|| ApiError::Unavailable("an addSheet answer without the new tab".into()))
    }

    /// `spreadsheets.create` with one tab `tab` of `columns` columns and one row: the new
    /// spreadsheet's id and its tab.
    pub async fn create(
        &self,
        title: &str,
        tab: &str,
        columns: u64,
    ) -> Result<(String, Tab), ApiError> {
        let url = self.url(&[])?;
        let body = json!({
            "properties": {"title": title},
            "sheets": [{"properties": {"title": tab, "gridProperties": {"rowCount": 1, "columnCount": columns}}}]
        });
        let answer: Value = self
            .call(Kind::Write, reqwest::Method::POST, url, Some(&body))
            .await?;
        let id = answer.get("spreadsheetId").and_then(Value::as_str);
        let tab = answer.pointer("/sheets/0/properties").and_then(tab_of);
        match (id, tab) {
            (Some(id), Some(tab)) => Ok((id.to_owned(), tab)),
            _ => Err(ApiError::Unavailable(
                "a create answer without the spreadsheet's id and tab".into(),
            )),
        }
    }
}

/// Where a `values.append` put its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The first row written (1-based).
    pub first_row: u64,
    /// Rows written.
    pub rows: u64,
}

/// The parts of a `values.append` answer the exporter reads.
#[derive(Deserialize)]
struct AppendAnswer {
    updates: AppendUpdates,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AppendUpdates {
    #[serde(default)]
    updated_range: String,
    #[serde(default)]
    updated_rows: u64,
}

/// The first row of an A1 range such as `responses!A5:H104` or `'my tab'!A5`.
fn first_row_of(range: &str) -> Option<u64> {
    let cells = range.rsplit_once('!').map_or(range, |(_, cells)| cells);
    let first = cells.split(':').next()?;
    first
        .trim_start_matches(|c: char| c.is_ascii_alphabetic())
        .parse()
        .ok()
}

/// The parts of a `spreadsheets.get` answer with `includeGridData` that a read-back uses.
#[derive(Deserialize)]
struct GridAnswer {
    #[serde(default)]
    sheets: Vec<GridSheet>,
}

#[derive(Deserialize)]
struct GridSheet {
    #[serde(default)]
    properties: Value,
    #[serde(default)]
    data: Vec<GridData>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GridData {
    #[serde(default)]
    start_row: usize,
    #[serde(default)]
    row_data: Vec<RowData>,
}

#[derive(Deserialize)]
struct RowData {
    #[serde(default)]
    values: Vec<CellData>,
}

/// A `CellData`: its value as entered, else as shown.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CellData {
    user_entered_value: Option<ExtendedValue>,
    effective_value: Option<ExtendedValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExtendedValue {
    string_value: Option<String>,
    number_value: Option<serde_json::Number>,
    bool_value: Option<bool>,
}

impl CellData {
    /// The cell as a value, as [`cell_value`] reads one (an empty cell as an empty string).
    fn into_value(self) -> Value {
        let Some(value) = self.user_entered_value.or(self.effective_value) else {
            return Value::from("");
        };
        match value {
            ExtendedValue {
                string_value: Some(s),
                ..
            } => Value::String(s),
            ExtendedValue {
                number_value: Some(n),
                ..
            } => Value::Number(n),
            ExtendedValue {
                bool_value: Some(b),
                ..
            } => Value::Bool(b),
            _ => Value::from(""),
        }
    }
}

/// A cell as `updateCells`/`appendCells` write it (`fields: "userEnteredValue"`): strings
/// as `stringValue` (never a formula, like RAW), numbers and booleans as such; an empty
/// string or null as no value, which clears the cell.
pub fn cell_data(value: &Value) -> Value {
    match value {
        Value::String(s) if s.is_empty() => json!({}),
        Value::String(s) => json!({"userEnteredValue": {"stringValue": s}}),
        Value::Number(n) => json!({"userEnteredValue": {"numberValue": n}}),
        Value::Bool(b) => json!({"userEnteredValue": {"boolValue": b}}),
        Value::Null => json!({}),
        other => json!({"userEnteredValue": {"stringValue": other.to_string()}}),
    }
}

/// A `CellData` of an answer back as a value (an empty cell as an empty string).
fn cell_value(cell: &Value) -> Value {
    let Some(value) = cell
        .get("userEnteredValue")
        .or_else(|| cell.get("effectiveValue"))
    else {
        return Value::from("");
    };
    value
        .get("stringValue")
        .or_else(|| value.get("numberValue"))
        .or_else(|| value.get("boolValue"))
        .cloned()
        .unwrap_or_else(|| Value::from(""))
}

/// Bytes a row adds to a `spreadsheets.batchUpdate` body as `RowData`: its values plus the
/// `{"userEnteredValue":{"stringValue":...}}` around each.
pub fn row_data_bytes(row: &[Value]) -> usize {
    crate::layout::row_bytes(row) + 12 + 40 * row.len()
}

fn tab_of(properties: &Value) -> Option<Tab> {
    Some(Tab {
        sheet_id: properties
            .get("sheetId")
            .and_then(Value::as_i64)
            .unwrap_or(0),
        title: properties.get("title")?.as_str()?.to_owned(),
        rows: properties
            .pointer("/gridProperties/rowCount")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        columns: properties
            .pointer("/gridProperties/columnCount")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    })
}

/// The A1 letters of 1-based column `n` (1 → A, 27 → AA).
pub fn column_letters(mut n: u64) -> String {
    let mut letters = Vec::new();
    while n > 0 {
        let rem = ((n - 1) % 26) as u8;
        letters.push(b'A' + rem);
        n = (n - 1) / 26;
    }
    letters.reverse();
    String::from_utf8(letters).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a1_notation() {
        assert_eq!(column_letters(1), "A");
        assert_eq!(column_letters(26), "Z");
        assert_eq!(column_letters(27), "AA");
        assert_eq!(column_letters(18_278), "ZZZ");
    }

    #[test]
    fn the_first_row_of_an_appended_range() {
        assert_eq!(first_row_of("responses!A5:H104"), Some(5));
        assert_eq!(first_row_of("'my tab'!A1"), Some(1));
        assert_eq!(first_row_of("responses!AB12:AC12"), Some(12));
        assert_eq!(first_row_of("responses"), None);
    }

    #[test]
    fn errors_say_what_happens_next() {
        let throttled = ApiError::Throttled {
            status: 429,
            retry_after: Some(Duration::from_secs(3)),
            detail: String::new(),
        };
        assert!(!throttled.is_ambiguous() && !throttled.is_permanent());
        assert_eq!(throttled.retry_after(), Some(Duration::from_secs(3)));
        assert!(
            ApiError::Throttled {
                status: 503,
                retry_after: None,
                detail: String::new()
            }
            .is_ambiguous()
        );
        assert!(ApiError::Unavailable("reset".into()).is_ambiguous());
        let limit = ApiError::Rejected {
            status: 400,
            detail: "INVALID_ARGUMENT This action would increase the number of cells in the workbook above the limit of 10000000 cells.".into(),
        };
        assert!(limit.is_cell_limit() && limit.is_permanent());
    }
}
