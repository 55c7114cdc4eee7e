//! A stateful local fake of the Google Sheets API v4 and of Google's OAuth token endpoint, for
//! tests of the sheets exporter.
//!
//! It answers like the real service for the calls the exporter makes: `spreadsheets.create`,
//! `spreadsheets.get` (with `ranges` and `includeGridData`, their cells, each with only the
//! values its `fields` mask names, serialised without a JSON tree per cell so that a read-back of
//! tens of thousands of rows takes well under a second, as Google's does; a range of a tab that
//! does not exist is a 400), `spreadsheets.batchUpdate` (`addSheet`, `appendDimension`, `updateCells`
//! from a start coordinate, `appendCells`; atomic, and with `includeSpreadsheetInResponse`,
//! `responseRanges` and `responseIncludeGridData` the cells of those ranges after the update),
//! `values.append` (after the last row with data; `insertDataOption=OVERWRITE`, Google's
//! default, fills the grid's empty rows first and adds rows only past the grid, `INSERT_ROWS`
//! adds a row per row appended; `valueInputOption` required: `RAW` stores every value as sent,
//! `USER_ENTERED` parses a string as a person's typing would, `=...` a formula, `"7"` a number),
//! `values.batchUpdate`, `values.get` and `values.batchGet`, with Google's error bodies
//! (`{"error": {code, message, status}}`). Cells live in memory per spreadsheet and tab; the
//! cells-per-spreadsheet limit (configurable, small in tests) is enforced over every tab's grid
//! with Google's message, as is the limit of 50,000 characters per cell; writes outside a tab's
//! grid are refused as Google does. Every write (whatever its endpoint) is subject alike to the
//! quota, the scripted faults and the latency, and counted with its body's bytes.
//!
//! Auth is checked for real: the token endpoint verifies the JWT bearer assertion's RS256
//! signature against the test service account's public key (an RSA key generated at test time,
//! never committed), its `aud` (the token URI), `iss` and scope, and every API call must carry a
//! token it issued.
//!
//! A test scripts failures: 429s (with `Retry-After`), 5xx before or after a write is applied
//! (the ambiguous case), slowness, a per-minute write quota enforced like Google's (429 when
//! passed), and spreadsheets not shared with the service account (every call on them answers
//! 403 PERMISSION_DENIED, as Google does). Invariant: every write the fake applied is in its state, whatever it answered, and
//! [`FakeSheets::write_requests`] counts every write request received.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::twilio_fake::{FakeServer, lock};

/// The scope the exporter must ask for.
pub const SPREADSHEETS_SCOPE: &str = "https://www.googleapis.com/auth/spreadsheets";

/// The test service account: an RSA key generated once per test process.
pub struct TestServiceAccount {
    pub email: String,
    pub private_key_pem: String,
    pub public_key_pem: String,
}

pub static SERVICE_ACCOUNT: LazyLock<TestServiceAccount> = LazyLock::new(|| {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let mut rng = rand08::rngs::OsRng;
    let key = rsa::RsaPrivateKey::new(&mut rng, 2048).expect("generating a test RSA key");
    TestServiceAccount {
        email: "formstream-exporter@formstream-tests.iam.gserviceaccount.com".to_owned(),
        private_key_pem: key
            .to_pkcs8_pem(LineEnding::LF)
            .expect("PEM of the test key")
            .to_string(),
        public_key_pem: key
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("PEM of the test public key"),
    }
});

/// A scripted failure of one write request, applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// 429 RESOURCE_EXHAUSTED, nothing applied; `Retry-After: <seconds>` when given.
    TooManyRequests { retry_after: Option<u64> },
    /// This 5xx, nothing applied.
    FailBefore(u16),
    /// The write is applied, then this 5xx is answered: the ambiguous case.
    FailAfter(u16),
    /// The write is applied, then the answer comes after this delay (a client timeout).
    SlowAfter(Duration),
}

/// One tab.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeTab {
    pub sheet_id: i64,
    pub title: String,
    pub grid_rows: u64,
    pub grid_columns: u64,
    /// Row-major cells, as far as written.
    pub cells: Vec<Vec<Value>>,
}

impl FakeTab {
    /// Rows up to the last one with a non-empty cell.
    pub fn used_rows(&self) -> usize {
        self.cells
            .iter()
            .rposition(|row| row.iter().any(|c| !is_empty(c)))
            .map_or(0, |i| i + 1)
    }

    /// The used rows, each trimmed of trailing empty cells.
    pub fn rows(&self) -> Vec<Vec<Value>> {
        self.cells[..self.used_rows()]
            .iter()
            .map(|row| trim(row.clone()))
            .collect()
    }
}

/// One spreadsheet.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeSpreadsheet {
    pub id: String,
    pub title: String,
    pub tabs: Vec<FakeTab>,
}

impl FakeSpreadsheet {
    pub fn cells(&self) -> u64 {
        self.tabs.iter().map(|t| t.grid_rows * t.grid_columns).sum()
    }

    pub fn tab(&self, title: &str) -> Option<&FakeTab> {
        self.tabs.iter().find(|t| t.title == title)
    }
}

#[derive(Default)]
struct FakeState {
    spreadsheets: BTreeMap<String, FakeSpreadsheet>,
    tokens: HashSet<String>,
    next_id: u64,
    write_requests: usize,
    /// Bytes of the bodies of the write requests the quota let through (as Google counts a
    /// write against the quota: a 429 for the quota is not one).
    write_bytes: usize,
    /// The largest body of those.
    largest_write: usize,
    /// Those to `values.append`.
    value_appends: usize,
    read_requests: usize,
    token_requests: usize,
    throttled: usize,
    faults: VecDeque<Fault>,
    latency: Duration,
    cell_limit: u64,
    write_quota: Option<usize>,
    recent_writes: VecDeque<Instant>,
    /// Spreadsheets the service account has no access to.
    unshared: HashSet<String>,
    /// Calls refused with 403 because their spreadsheet is not shared.
    refused_requests: usize,
    /// Every write answered 429, as when the project's quota is used up elsewhere.
    exhausted: bool,
}

impl FakeState {
    /// Tab `title` of spreadsheet `id`.
    fn tab_mut(&mut self, id: &str, title: &str) -> Option<&mut FakeTab> {
        self.spreadsheets
            .get_mut(id)
            .and_then(|s| s.tabs.iter_mut().find(|t| t.title == title))
    }
}

#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<FakeState>>,
    token_uri: Arc<Mutex<String>>,
}

/// The fake, serving on 127.0.0.1.
pub struct FakeSheets {
    server: FakeServer,
    shared: Shared,
}

impl FakeSheets {
    /// Starts a fake with Google's cell limit (10,000,000) and no quota.
    pub async fn start() -> Self {
        let shared = Shared {
            state: Arc::new(Mutex::new(FakeState {
                cell_limit: 10_000_000,
                ..Default::default()
            })),
            token_uri: Arc::new(Mutex::new(String::new())),
        };
        let router = Router::new().fallback(handle).with_state(shared.clone());
        let server = FakeServer::start(router).await;
        *lock(&shared.token_uri) = format!("{}/token", server.url());
        FakeSheets { server, shared }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        lock(&self.shared.state)
    }

    pub fn base_url(&self) -> String {
        self.server.url()
    }

    /// A service-account key file, as Google issues them, whose `token_uri` is this fake.
    pub fn credentials_json(&self) -> String {
        let account = &*SERVICE_ACCOUNT;
        json!({
            "type": "service_account",
            "project_id": "formstream-tests",
            "private_key_id": "test",
            "private_key": account.private_key_pem,
            "client_email": account.email,
            "client_id": "1",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": *lock(&self.shared.token_uri),
        })
        .to_string()
    }

    /// Writes [`FakeSheets::credentials_json`] to `dir/credentials.json`.
    pub fn credentials_file(&self, dir: &Path) -> PathBuf {
        let path = dir.join("credentials.json");
        std::fs::write(&path, self.credentials_json()).expect("writing the credentials file");
        path
    }

    /// The exporter's flags for this fake, quick for tests: its credentials (written in `dir`), its
    /// URL, a short linger and timeout, reads unthrottled, and `ledger` as the ledger topic.
    pub fn exporter_flags(&self, dir: &Path, ledger: &str) -> Vec<String> {
        let credentials = self.credentials_file(dir);
        [
            "--sheets-credentials",
            &credentials.display().to_string(),
            "--sheets-base-url",
            &self.base_url(),
            "--sheets-linger",
            "100ms",
            "--sheets-reads-per-minute",
            "6000",
            "--sheets-timeout",
            "2s",
            "--ledger-topic",
            ledger,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }

    /// Writes an organisations file (`--organisations-file`) in `dir` that gives `organisation`
    /// every spreadsheet the fake holds now, as an operator lists the spreadsheets an
    /// organisation shared with the exporter.
    pub fn organisations_file(&self, dir: &Path, organisation: &str) -> PathBuf {
        let ids: Vec<String> = self
            .state()
            .spreadsheets
            .keys()
            .map(|id| format!("{id:?}"))
            .collect();
        let path = dir.join("organisations.toml");
        std::fs::write(
            &path,
            format!("[{organisation:?}]\nspreadsheets = [{}]\n", ids.join(", ")),
        )
        .expect("writing the organisations file");
        path
    }

    pub fn set_cell_limit(&self, cells: u64) {
        self.state().cell_limit = cells;
    }

    /// Answers writes beyond `per_minute` in any 60 s window with 429, as Google's quota does.
    pub fn set_write_quota(&self, per_minute: usize) {
        self.state().write_quota = Some(per_minute);
    }

    /// While `exhausted`, every write is answered 429 RESOURCE_EXHAUSTED (with `Retry-After`)
    /// and applies nothing, as when another client of the project used the quota up.
    pub fn set_exhausted(&self, exhausted: bool) {
        self.state().exhausted = exhausted;
    }

    /// Whether every write is answered 429 (see [`FakeSheets::set_exhausted`]).
    pub fn is_exhausted(&self) -> bool {
        self.state().exhausted
    }

    /// The first two cells (`Response ID`, `Revision` in the exporter's layout) of every row
    /// below the header of tab `tab`, in every spreadsheet: (spreadsheet id, row number, cells).
    pub fn key_cells(&self, tab: &str) -> Vec<(String, usize, Value, Value)> {
        let state = self.state();
        let mut keys = Vec::new();
        for sheet in state.spreadsheets.values() {
            let Some(tab) = sheet.tab(tab) else { continue };
            for (index, row) in tab.cells.iter().enumerate().take(tab.used_rows()).skip(1) {
                let cell = |c: usize| row.get(c).cloned().unwrap_or(Value::Null);
                keys.push((sheet.id.clone(), index + 1, cell(0), cell(1)));
            }
        }
        keys
    }

    /// Every API answer comes after this delay.
    pub fn set_latency(&self, latency: Duration) {
        self.state().latency = latency;
    }

    /// The next `n` write requests fail with `fault`.
    pub fn fail_next_writes(&self, n: usize, fault: Fault) {
        let mut state = self.state();
        for _ in 0..n {
            state.faults.push_back(fault.clone());
        }
    }

    /// Takes the service account's access to spreadsheet `id` away (or gives it back): every
    /// call on it answers 403 PERMISSION_DENIED, as Google does for a spreadsheet not shared.
    pub fn set_shared(&self, id: &str, shared: bool) {
        let mut state = self.state();
        if shared {
            state.unshared.remove(id);
        } else {
            state.unshared.insert(id.to_owned());
        }
    }

    /// Calls refused because their spreadsheet is not shared.
    pub fn refused_requests(&self) -> usize {
        self.state().refused_requests
    }

    /// Faults queued by `fail_next_writes` that no write has taken yet.
    pub fn pending_faults(&self) -> usize {
        self.state().faults.len()
    }

    /// A spreadsheet as a person makes one: a tab `Sheet1` of 1000 x 26.
    pub fn create_spreadsheet(&self, title: &str) -> String {
        let mut state = self.state();
        let id = new_id(&mut state);
        state.spreadsheets.insert(
            id.clone(),
            FakeSpreadsheet {
                id: id.clone(),
                title: title.to_owned(),
                tabs: vec![FakeTab {
                    sheet_id: 0,
                    title: "Sheet1".to_owned(),
                    grid_rows: 1000,
                    grid_columns: 26,
                    cells: Vec::new(),
                }],
            },
        );
        id
    }

    /// Adds an empty tab `title` (1000 x 26) to spreadsheet `id`, as a person would.
    pub fn add_tab(&self, id: &str, title: &str) {
        if let Some(sheet) = self.state().spreadsheets.get_mut(id) {
            let sheet_id = sheet.tabs.iter().map(|t| t.sheet_id).max().unwrap_or(0) + 1;
            sheet.tabs.push(FakeTab {
                sheet_id,
                title: title.to_owned(),
                grid_rows: 1000,
                grid_columns: 26,
                cells: Vec::new(),
            });
        }
    }

    /// Fills tab `title` of spreadsheet `id` with `rows` from row 1 (the grid grown to hold them),
    /// as an earlier run of the exporter would have left it.
    pub fn fill_tab(&self, id: &str, title: &str, rows: Vec<Vec<Value>>) {
        let mut state = self.state();
        let Some(tab) = state.tab_mut(id, title) else {
            return;
        };
        let columns = rows.iter().map(Vec::len).max().unwrap_or(0) as u64;
        tab.grid_rows = tab.grid_rows.max(rows.len() as u64);
        tab.grid_columns = tab.grid_columns.max(columns);
        tab.cells = rows;
    }

    /// Rows written to tab `tab` of every spreadsheet, the headers excluded.
    pub fn data_rows(&self, tab: &str) -> usize {
        self.state()
            .spreadsheets
            .values()
            .filter_map(|s| s.tab(tab))
            .map(|t| t.used_rows().saturating_sub(1))
            .sum()
    }

    pub fn spreadsheets(&self) -> Vec<FakeSpreadsheet> {
        self.state().spreadsheets.values().cloned().collect()
    }

    pub fn spreadsheet(&self, id: &str) -> Option<FakeSpreadsheet> {
        self.state().spreadsheets.get(id).cloned()
    }

    /// The used rows of tab `tab` of spreadsheet `id` (empty when either is missing).
    pub fn rows(&self, id: &str, tab: &str) -> Vec<Vec<Value>> {
        self.state()
            .spreadsheets
            .get(id)
            .and_then(|s| s.tab(tab))
            .map(FakeTab::rows)
            .unwrap_or_default()
    }

    pub fn write_requests(&self) -> usize {
        self.state().write_requests
    }

    /// Bytes of the bodies of the write requests the quota let through (not answered 429 for
    /// [`FakeSheets::set_write_quota`] or [`FakeSheets::set_exhausted`]).
    pub fn write_bytes(&self) -> usize {
        self.state().write_bytes
    }

    /// Bytes of the largest body of those.
    pub fn largest_write(&self) -> usize {
        self.state().largest_write
    }

    /// Those of them to `values.append` (counted in [`FakeSheets::write_requests`] too).
    pub fn value_appends(&self) -> usize {
        self.state().value_appends
    }

    /// Appends `row` after the last row with data of tab `tab` of spreadsheet `id` (the grid grown
    /// when needed), as another writer (a person, another program) would meanwhile.
    pub fn append_row(&self, id: &str, tab: &str, row: Vec<Value>) {
        let mut state = self.state();
        let Some(tab) = state.tab_mut(id, tab) else {
            return;
        };
        let number = tab.used_rows() as u64 + 1;
        tab.grid_rows = tab.grid_rows.max(number);
        tab.grid_columns = tab.grid_columns.max(row.len() as u64);
        put_row(tab, number, 1, row);
    }

    pub fn read_requests(&self) -> usize {
        self.state().read_requests
    }

    pub fn token_requests(&self) -> usize {
        self.state().token_requests
    }

    /// Writes answered 429 (scripted or over the quota).
    pub fn throttled(&self) -> usize {
        self.state().throttled
    }
}

fn new_id(state: &mut FakeState) -> String {
    state.next_id += 1;
    // Google's ids are 44 URL-safe characters.
    format!("1fake{:039}", state.next_id)
}

fn is_empty(value: &Value) -> bool {
    value.is_null() || value.as_str() == Some("")
}

fn trim(mut row: Vec<Value>) -> Vec<Value> {
    while row.last().is_some_and(is_empty) {
        row.pop();
    }
    row
}

fn google_error(status: StatusCode, message: &str) -> Response {
    let name = match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"error": {"code": status.as_u16(), "message": message, "status": name}}).to_string(),
    )
        .into_response()
}

fn ok(body: Value) -> Response {
    ok_serialized(&body)
}

fn ok_serialized(body: &impl serde::Serialize) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(body).unwrap_or_default(),
    )
        .into_response()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Deserialize)]
struct Claims {
    scope: String,
}

async fn handle(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let query: Vec<(String, String)> = uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    if path == "/token" && method == Method::POST {
        return token(&shared, &body);
    }
    let latency = lock(&shared.state).latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let authorised = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| lock(&shared.state).tokens.contains(t));
    if !authorised {
        return google_error(
            StatusCode::UNAUTHORIZED,
            "Request had invalid authentication credentials. Expected OAuth 2 access token.",
        );
    }
    let Some(rest) = path.strip_prefix("/v4/spreadsheets") else {
        return google_error(StatusCode::NOT_FOUND, "Not found");
    };
    let segments: Vec<String> = rest
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    // `{id}`, `{id}:batchUpdate`, `{id}/values/...`: the spreadsheet is the first segment.
    if let Some(id) = segments
        .first()
        .map(|s| s.split(':').next().unwrap_or_default())
    {
        let mut state = lock(&shared.state);
        if state.unshared.contains(id) {
            state.refused_requests += 1;
            return google_error(StatusCode::FORBIDDEN, "The caller does not have permission");
        }
    }
    let body_bytes = body.len();
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return google_error(
                    StatusCode::BAD_REQUEST,
                    &format!("Invalid JSON payload received. {e}"),
                );
            }
        }
    };
    if method == Method::GET {
        lock(&shared.state).read_requests += 1;
        return read(&shared, &segments, &query);
    }
    if method != Method::POST {
        return google_error(StatusCode::NOT_FOUND, "Not found");
    }
    // A write: count it, then the quota and scripted faults.
    let fault = {
        let mut state = lock(&shared.state);
        state.write_requests += 1;
        let now = Instant::now();
        while state
            .recent_writes
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            state.recent_writes.pop_front();
        }
        if state.exhausted
            || state
                .write_quota
                .is_some_and(|quota| state.recent_writes.len() >= quota)
        {
            state.throttled += 1;
            let mut response = google_error(
                StatusCode::TOO_MANY_REQUESTS,
                "Quota exceeded for quota metric 'Write requests' and limit 'Write requests per minute per user' of service 'sheets.googleapis.com'.",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, "1".parse().expect("header"));
            return response;
        }
        state.recent_writes.push_back(now);
        state.write_bytes += body_bytes;
        state.largest_write = state.largest_write.max(body_bytes);
        if segments.get(1).is_some_and(|s| s == "values")
            && segments.get(2).is_some_and(|s| s.ends_with(":append"))
        {
            state.value_appends += 1;
        }
        state.faults.pop_front()
    };
    match &fault {
        Some(Fault::TooManyRequests { retry_after }) => {
            lock(&shared.state).throttled += 1;
            let mut response = google_error(
                StatusCode::TOO_MANY_REQUESTS,
                "Quota exceeded for quota metric 'Write requests'.",
            );
            if let Some(after) = retry_after {
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    after.to_string().parse().expect("header"),
                );
            }
            return response;
        }
        Some(Fault::FailBefore(code)) => {
            return google_error(
                StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "The service is currently unavailable.",
            );
        }
        _ => {}
    }
    let response = write(&shared, &segments, &query, &body);
    match fault {
        Some(Fault::FailAfter(code)) if response.status().is_success() => google_error(
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "Internal error encountered.",
        ),
        Some(Fault::SlowAfter(delay)) => {
            tokio::time::sleep(delay).await;
            response
        }
        _ => response,
    }
}

fn token(shared: &Shared, body: &[u8]) -> Response {
    let form: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    lock(&shared.state).token_requests += 1;
    let invalid = |description: &str| {
        (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/json")],
            json!({"error": "invalid_grant", "error_description": description}).to_string(),
        )
            .into_response()
    };
    if field("grant_type").as_deref() != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return invalid("unsupported grant_type");
    }
    let Some(assertion) = field("assertion") else {
        return invalid("missing assertion");
    };
    let account = &*SERVICE_ACCOUNT;
    let Ok(key) = DecodingKey::from_rsa_pem(account.public_key_pem.as_bytes()) else {
        return invalid("test key");
    };
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[lock(&shared.token_uri).as_str()]);
    validation.set_issuer(&[account.email.as_str()]);
    validation.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
    let claims = match jsonwebtoken::decode::<Claims>(&assertion, &key, &validation) {
        Ok(data) => data.claims,
        Err(e) => return invalid(&format!("Invalid JWT: {e}")),
    };
    if !claims.scope.split(' ').any(|s| s == SPREADSHEETS_SCOPE) {
        return invalid("Invalid OAuth scope or ID token audience provided.");
    }
    let mut state = lock(&shared.state);
    let token = format!("ya29.fake-{}", state.token_requests);
    state.tokens.insert(token.clone());
    ok(json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"}))
}

/// A parsed A1 range: tab, and optional first/last column (1-based) and row (1-based).
#[derive(Debug)]
struct A1 {
    tab: String,
    first_column: Option<u64>,
    first_row: Option<u64>,
    last_column: Option<u64>,
    last_row: Option<u64>,
}

fn parse_cell(cell: &str) -> (Option<u64>, Option<u64>) {
    let letters: String = cell.chars().take_while(char::is_ascii_alphabetic).collect();
    let digits = &cell[letters.len()..];
    let column = (!letters.is_empty()).then(|| {
        letters
            .to_ascii_uppercase()
            .bytes()
            .fold(0u64, |n, b| n * 26 + u64::from(b - b'A' + 1))
    });
    (column, digits.parse().ok())
}

fn parse_a1(range: &str) -> A1 {
    let (tab, cells) = match range.rsplit_once('!') {
        Some((tab, cells)) => (tab, cells),
        None => (range, ""),
    };
    let tab = tab.trim_matches('\'').to_owned();
    let mut parts = cells.split(':');
    let (first_column, first_row) = parts.next().map(parse_cell).unwrap_or((None, None));
    let (last_column, last_row) = match parts.next() {
        Some(end) => parse_cell(end),
        None if cells.is_empty() => (None, None),
        None => (first_column, first_row),
    };
    A1 {
        tab,
        first_column,
        first_row,
        last_column,
        last_row,
    }
}

fn letters(mut n: u64) -> String {
    let mut out = Vec::new();
    while n > 0 {
        out.push(b'A' + ((n - 1) % 26) as u8);
        n = (n - 1) / 26;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

fn tab_properties(tab: &FakeTab) -> Value {
    json!({"sheetId": tab.sheet_id, "title": tab.title, "index": 0, "sheetType": "GRID",
           "gridProperties": {"rowCount": tab.grid_rows, "columnCount": tab.grid_columns}})
}

fn read(shared: &Shared, segments: &[String], query: &[(String, String)]) -> Response {
    let state = lock(&shared.state);
    let Some(id) = segments.first() else {
        return google_error(StatusCode::NOT_FOUND, "Not found");
    };
    let Some(sheet) = state.spreadsheets.get(id) else {
        return google_error(StatusCode::NOT_FOUND, "Requested entity was not found.");
    };
    let ranges: Vec<String> = match segments.get(1).map(String::as_str) {
        None => {
            // spreadsheets.get; with `ranges` and `includeGridData`, their cells too.
            let ranges: Vec<&String> = query
                .iter()
                .filter(|(k, _)| k == "ranges")
                .map(|(_, v)| v)
                .collect();
            if let Some(range) = ranges
                .iter()
                .find(|r| sheet.tab(&parse_a1(r).tab).is_none())
            {
                return google_error(
                    StatusCode::BAD_REQUEST,
                    &format!("Unable to parse range: {range}"),
                );
            }
            let grid = query
                .iter()
                .any(|(k, v)| k == "includeGridData" && v == "true");
            let body = json!({"responseRanges": ranges, "responseIncludeGridData": grid});
            // `fields` names the parts of the resource to answer; without it, everything.
            let effective = query
                .iter()
                .find(|(k, _)| k == "fields")
                .is_none_or(|(_, fields)| fields.contains("effectiveValue"));
            return ok_serialized(&spreadsheet_resource(sheet, &body, effective));
        }
        Some("values:batchGet") => query
            .iter()
            .filter(|(k, _)| k == "ranges")
            .map(|(_, v)| v.clone())
            .collect(),
        Some("values") => segments.get(2).cloned().into_iter().collect(),
        Some(_) => return google_error(StatusCode::NOT_FOUND, "Not found"),
    };
    let mut value_ranges = Vec::new();
    for range in &ranges {
        let a1 = parse_a1(range);
        let Some(tab) = sheet.tab(&a1.tab) else {
            return google_error(
                StatusCode::BAD_REQUEST,
                &format!("Unable to parse range: {range}"),
            );
        };
        let first_row = a1.first_row.unwrap_or(1).max(1) as usize;
        let last_row = a1.last_row.map_or(usize::MAX, |r| r as usize);
        let first_column = a1.first_column.unwrap_or(1).max(1) as usize;
        let last_column = a1.last_column.map_or(usize::MAX, |c| c as usize);
        let mut values: Vec<Value> = Vec::new();
        for (i, row) in tab.cells.iter().enumerate().take(tab.used_rows()) {
            let number = i + 1;
            if number < first_row || number > last_row {
                continue;
            }
            let cells: Vec<Value> = row
                .iter()
                .enumerate()
                .filter(|(c, _)| c + 1 >= first_column && *c < last_column)
                .map(|(_, v)| v.clone())
                .collect();
            values.push(Value::Array(trim(cells)));
        }
        while values
            .last()
            .is_some_and(|v| v.as_array().is_some_and(Vec::is_empty))
        {
            values.pop();
        }
        let mut value_range = json!({"range": range, "majorDimension": "ROWS"});
        if !values.is_empty() {
            value_range["values"] = Value::Array(values);
        }
        value_ranges.push(value_range);
    }
    if segments.get(1).map(String::as_str) == Some("values") {
        return ok(value_ranges.into_iter().next().unwrap_or(Value::Null));
    }
    ok(json!({"spreadsheetId": sheet.id, "valueRanges": value_ranges}))
}

fn cell_limit_error(limit: u64) -> Response {
    google_error(
        StatusCode::BAD_REQUEST,
        &format!(
            "This action would increase the number of cells in the workbook above the limit of {limit} cells."
        ),
    )
}

fn write(
    shared: &Shared,
    segments: &[String],
    query: &[(String, String)],
    body: &Value,
) -> Response {
    let mut state = lock(&shared.state);
    let limit = state.cell_limit;
    if segments.is_empty() {
        // spreadsheets.create
        let id = new_id(&mut state);
        let title = body
            .pointer("/properties/title")
            .and_then(Value::as_str)
            .unwrap_or("Untitled spreadsheet")
            .to_owned();
        let mut tabs = Vec::new();
        for (i, sheet) in body
            .get("sheets")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let properties = sheet.get("properties").cloned().unwrap_or(Value::Null);
            tabs.push(FakeTab {
                sheet_id: i as i64 * 7 + 1,
                title: properties
                    .get("title")
                    .and_then(Value::as_str)
                    .unwrap_or("Sheet1")
                    .to_owned(),
                grid_rows: properties
                    .pointer("/gridProperties/rowCount")
                    .and_then(Value::as_u64)
                    .unwrap_or(1000),
                grid_columns: properties
                    .pointer("/gridProperties/columnCount")
                    .and_then(Value::as_u64)
                    .unwrap_or(26),
                cells: Vec::new(),
            });
        }
        if tabs.is_empty() {
            tabs.push(FakeTab {
                sheet_id: 0,
                title: "Sheet1".into(),
                grid_rows: 1000,
                grid_columns: 26,
                cells: Vec::new(),
            });
        }
        let sheet = FakeSpreadsheet {
            id: id.clone(),
            title: title.clone(),
            tabs,
        };
        if sheet.cells() > limit {
            return cell_limit_error(limit);
        }
        let sheets: Vec<Value> = sheet
            .tabs
            .iter()
            .map(|t| json!({"properties": tab_properties(t)}))
            .collect();
        state.spreadsheets.insert(id.clone(), sheet);
        return ok(
            json!({"spreadsheetId": id, "properties": {"title": title}, "sheets": sheets,
                         "spreadsheetUrl": format!("https://docs.google.com/spreadsheets/d/{id}/edit")}),
        );
    }
    let id = segments[0].clone();
    let (id, method) = match id.split_once(':') {
        Some((id, method)) => (id.to_owned(), Some(method.to_owned())),
        None => (id, None),
    };
    let Some(sheet) = state.spreadsheets.get_mut(&id) else {
        return google_error(StatusCode::NOT_FOUND, "Requested entity was not found.");
    };
    let mut updated = sheet.clone();
    let answer = if method.as_deref() == Some("batchUpdate") {
        let mut replies = Vec::new();
        for request in body
            .get("requests")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            if let Some(add) = request.get("addSheet") {
                let title = add
                    .pointer("/properties/title")
                    .and_then(Value::as_str)
                    .unwrap_or("Sheet")
                    .to_owned();
                if updated.tab(&title).is_some() {
                    return google_error(
                        StatusCode::BAD_REQUEST,
                        &format!(
                            "Invalid requests[0].addSheet: A sheet with the name \"{title}\" already exists. Please enter another name."
                        ),
                    );
                }
                let tab = FakeTab {
                    sheet_id: updated.tabs.iter().map(|t| t.sheet_id).max().unwrap_or(0) + 1000,
                    title,
                    grid_rows: add
                        .pointer("/properties/gridProperties/rowCount")
                        .and_then(Value::as_u64)
                        .unwrap_or(1000),
                    grid_columns: add
                        .pointer("/properties/gridProperties/columnCount")
                        .and_then(Value::as_u64)
                        .unwrap_or(26),
                    cells: Vec::new(),
                };
                replies.push(json!({"addSheet": {"properties": tab_properties(&tab)}}));
                updated.tabs.push(tab);
            } else if let Some(append) = request.get("appendDimension") {
                let sheet_id = append.get("sheetId").and_then(Value::as_i64).unwrap_or(0);
                let length = append.get("length").and_then(Value::as_u64).unwrap_or(0);
                let Some(tab) = updated.tabs.iter_mut().find(|t| t.sheet_id == sheet_id) else {
                    return google_error(
                        StatusCode::BAD_REQUEST,
                        &format!("No grid with id: {sheet_id}"),
                    );
                };
                if append.get("dimension").and_then(Value::as_str) == Some("COLUMNS") {
                    tab.grid_columns += length;
                } else {
                    tab.grid_rows += length;
                }
                replies.push(json!({}));
            } else if let Some((kind, cells)) = request
                .get("updateCells")
                .map(|r| ("updateCells", r))
                .or_else(|| request.get("appendCells").map(|r| ("appendCells", r)))
            {
                let applied = match kind {
                    "updateCells" => update_cells(&mut updated, cells),
                    _ => append_cells(&mut updated, cells),
                };
                if let Err(message) = applied {
                    return google_error(
                        StatusCode::BAD_REQUEST,
                        &format!("Invalid requests[{}].{kind}: {message}", replies.len()),
                    );
                }
                replies.push(json!({}));
            } else {
                return google_error(
                    StatusCode::BAD_REQUEST,
                    "Invalid requests[0]: unsupported by the fake",
                );
            }
        }
        let mut answer = json!({"spreadsheetId": id, "replies": replies});
        if body.get("includeSpreadsheetInResponse") == Some(&Value::Bool(true)) {
            answer["updatedSpreadsheet"] =
                serde_json::to_value(spreadsheet_resource(&updated, body, true))
                    .unwrap_or(Value::Null);
        }
        answer
    } else if segments.get(1).map(String::as_str) == Some("values:batchUpdate") {
        let mut total = 0u64;
        let mut responses = Vec::new();
        for data in body
            .get("data")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            let range = data
                .get("range")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let a1 = parse_a1(range);
            let rows = data
                .get("values")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let Some(tab) = updated.tabs.iter_mut().find(|t| t.title == a1.tab) else {
                return google_error(
                    StatusCode::BAD_REQUEST,
                    &format!("Unable to parse range: {range}"),
                );
            };
            let first_row = a1.first_row.unwrap_or(1);
            let first_column = a1.first_column.unwrap_or(1);
            for (r, row) in rows.iter().enumerate() {
                let cells = row.as_array().cloned().unwrap_or_default();
                let number = first_row + r as u64;
                let last_column = first_column + cells.len() as u64 - 1;
                if number > tab.grid_rows || last_column > tab.grid_columns {
                    return google_error(
                        StatusCode::BAD_REQUEST,
                        &format!(
                            "Range ({}!{}{}) exceeds grid limits. Max rows: {}, max columns: {}",
                            tab.title,
                            letters(last_column),
                            number,
                            tab.grid_rows,
                            tab.grid_columns
                        ),
                    );
                }
                put_row(tab, number, first_column, cells);
                total += 1;
            }
            responses.push(json!({"updatedRange": range}));
        }
        json!({"spreadsheetId": id, "totalUpdatedRows": total, "responses": responses})
    } else if segments.get(1).map(String::as_str) == Some("values")
        && let Some(range) = segments.get(2).and_then(|s| s.strip_suffix(":append"))
    {
        let option = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let user_entered = match option("valueInputOption") {
            Some("RAW") => false,
            Some("USER_ENTERED") => true,
            Some(other) => {
                return google_error(
                    StatusCode::BAD_REQUEST,
                    &format!("Invalid value at 'value_input_option' ({other:?})"),
                );
            }
            None => {
                return google_error(
                    StatusCode::BAD_REQUEST,
                    "'valueInputOption' is required but not specified",
                );
            }
        };
        let insert_rows = match option("insertDataOption") {
            None | Some("OVERWRITE") => false,
            Some("INSERT_ROWS") => true,
            Some(other) => {
                return google_error(
                    StatusCode::BAD_REQUEST,
                    &format!("Invalid value at 'insert_data_option' ({other:?})"),
                );
            }
        };
        let a1 = parse_a1(range);
        let rows: Vec<Vec<Value>> = body
            .get("values")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|row| {
                row.as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(|value| entered(value, user_entered))
                    .collect()
            })
            .collect();
        if let Err(message) = check_cell_sizes(&rows) {
            return google_error(StatusCode::BAD_REQUEST, &message);
        }
        let Some(tab) = updated.tabs.iter_mut().find(|t| t.title == a1.tab) else {
            return google_error(
                StatusCode::BAD_REQUEST,
                &format!("Unable to parse range: {range}"),
            );
        };
        let first_column = a1.first_column.unwrap_or(1);
        let width = rows.iter().map(Vec::len).max().unwrap_or(0) as u64;
        if first_column + width - 1 > tab.grid_columns {
            return google_error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "Range ({}!{}) exceeds grid limits. Max columns: {}",
                    tab.title,
                    letters(first_column + width - 1),
                    tab.grid_columns
                ),
            );
        }
        // The table: its rows end at the last row with data; the new ones go below.
        let first = tab.used_rows() as u64 + 1;
        let last = first + rows.len() as u64 - 1;
        if insert_rows {
            // Rows are inserted for the data, below the table: the grid grows by as many.
            tab.grid_rows += rows.len() as u64;
        } else {
            // The grid's empty rows are written first; rows are added only past its end.
            tab.grid_rows = tab.grid_rows.max(last);
        }
        let appended = rows.len();
        for (r, row) in rows.into_iter().enumerate() {
            put_row(tab, first + r as u64, first_column, row);
        }
        let updated_range = format!(
            "{}!{}{}:{}{}",
            tab.title,
            letters(first_column),
            first,
            letters(first_column + width.max(1) - 1),
            last
        );
        json!({"spreadsheetId": id, "tableRange": format!("{}!A1:{}{}", tab.title, letters(first_column + width.max(1) - 1), first.saturating_sub(1).max(1)),
               "updates": {"spreadsheetId": id, "updatedRange": updated_range, "updatedRows": appended,
                           "updatedColumns": width, "updatedCells": appended as u64 * width}})
    } else {
        return google_error(StatusCode::NOT_FOUND, "Not found");
    };
    if updated.cells() > limit {
        return cell_limit_error(limit);
    }
    *sheet = updated;
    ok(answer)
}

/// Google's limit of characters in one cell.
const CELL_CHARACTERS: usize = 50_000;

/// Google's refusal of a cell over [`CELL_CHARACTERS`].
fn check_cell_sizes(rows: &[Vec<Value>]) -> Result<(), String> {
    let long = rows.iter().flatten().any(|v| {
        v.as_str()
            .is_some_and(|s| s.chars().count() > CELL_CHARACTERS)
    });
    if long {
        return Err(format!(
            "Your input contains more than the maximum of {CELL_CHARACTERS} characters in a single cell."
        ));
    }
    Ok(())
}

/// A `values` API value as the fake keeps it. `RAW`: as sent. `USER_ENTERED`: a string parsed as
/// if a person typed it, `=...` a formula (kept as `{"formulaValue": ...}`, which is not the
/// text sent), a number's text a number.
fn entered(value: &Value, user_entered: bool) -> Value {
    match value {
        Value::String(s) if user_entered && s.starts_with('=') => json!({"formulaValue": s}),
        Value::String(s) if user_entered => s
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| value.clone(), Value::Number),
        Value::Null => Value::from(""),
        other => other.clone(),
    }
}

/// A `CellData` as the value the fake keeps: `userEnteredValue`'s string, number or boolean; no
/// value (the cell cleared) as an empty string. A formula is refused: the exporter never sends one.
fn cell_of(data: &Value) -> Result<Value, String> {
    let Some(value) = data.get("userEnteredValue") else {
        return Ok(Value::from(""));
    };
    for kind in ["stringValue", "numberValue", "boolValue"] {
        if let Some(v) = value.get(kind) {
            return Ok(v.clone());
        }
    }
    Err(format!("unsupported userEnteredValue {value}"))
}

/// The cells of `RowData`s.
fn rows_of(rows: Option<&Value>) -> Result<Vec<Vec<Value>>, String> {
    rows.and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|row| {
            row.get("values")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(cell_of)
                .collect()
        })
        .collect()
}

/// Google's `fields` rule for updateCells and appendCells: a mask naming what is written.
fn check_fields(request: &Value) -> Result<(), String> {
    match request.get("fields").and_then(Value::as_str) {
        Some(fields)
            if fields
                .split(',')
                .any(|f| f.trim() == "userEnteredValue" || f.trim() == "*") =>
        {
            Ok(())
        }
        Some(_) => Err("the fake only writes fields \"userEnteredValue\"".into()),
        None => Err("At least one field must be specified in 'fields'.".into()),
    }
}

fn grid_error(tab: &FakeTab, row: u64, column: u64) -> String {
    format!(
        "Range ({}!{}{}) exceeds grid limits. Max rows: {}, max columns: {}",
        tab.title,
        letters(column),
        row,
        tab.grid_rows,
        tab.grid_columns
    )
}

/// The tab `sheet_id` and the cells of `request`'s `rows`.
fn grid_and_rows<'a>(
    sheet: &'a mut FakeSpreadsheet,
    sheet_id: i64,
    request: &Value,
) -> Result<(&'a mut FakeTab, Vec<Vec<Value>>), String> {
    let rows = rows_of(request.get("rows"))?;
    let tab = sheet
        .tabs
        .iter_mut()
        .find(|t| t.sheet_id == sheet_id)
        .ok_or_else(|| format!("No grid with id: {sheet_id}"))?;
    Ok((tab, rows))
}

/// `updateCells` from a `start` coordinate: each row's cells written from there; every cell must
/// be inside the grid.
fn update_cells(sheet: &mut FakeSpreadsheet, request: &Value) -> Result<(), String> {
    check_fields(request)?;
    let start = request
        .get("start")
        .ok_or("the fake supports updateCells with a start coordinate only")?;
    let sheet_id = start.get("sheetId").and_then(Value::as_i64).unwrap_or(0);
    let row_index = start.get("rowIndex").and_then(Value::as_u64).unwrap_or(0);
    let column_index = start
        .get("columnIndex")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let (tab, rows) = grid_and_rows(sheet, sheet_id, request)?;
    check_cell_sizes(&rows)?;
    for (r, cells) in rows.into_iter().enumerate() {
        let number = row_index + 1 + r as u64;
        let last_column = column_index + cells.len() as u64;
        if number > tab.grid_rows || last_column > tab.grid_columns {
            return Err(grid_error(tab, number, last_column));
        }
        put_row(tab, number, column_index + 1, cells);
    }
    Ok(())
}

/// `appendCells`: the rows go after the last row with data, into the grid's empty rows first,
/// then into rows inserted for them; their cells must fit the grid's columns.
fn append_cells(sheet: &mut FakeSpreadsheet, request: &Value) -> Result<(), String> {
    check_fields(request)?;
    let sheet_id = request.get("sheetId").and_then(Value::as_i64).unwrap_or(0);
    let (tab, rows) = grid_and_rows(sheet, sheet_id, request)?;
    check_cell_sizes(&rows)?;
    let first = tab.used_rows() as u64 + 1;
    if let Some(wide) = rows.iter().find(|r| r.len() as u64 > tab.grid_columns) {
        return Err(grid_error(tab, first, wide.len() as u64));
    }
    tab.grid_rows = tab.grid_rows.max(first - 1 + rows.len() as u64);
    for (r, cells) in rows.into_iter().enumerate() {
        put_row(tab, first + r as u64, 1, cells);
    }
    Ok(())
}

/// The `Spreadsheet` resource: every tab's properties and, with `responseIncludeGridData`
/// (`includeGridData` for `spreadsheets.get`), the cells of each of `responseRanges` (`ranges`)
/// as `GridData` (rows of `CellData`, an empty cell as `{}`, trailing empty rows left out). Each
/// cell carries its `effectiveValue` beside its `userEnteredValue` only when `effective` (Google
/// answers only the fields a request's `fields` mask names). Serialised straight from the cells,
/// without a `Value` per cell: a read-back of tens of thousands of rows is answered like Google's,
/// in well under a second, instead of seconds spent building the answer.
fn spreadsheet_resource<'a>(
    sheet: &'a FakeSpreadsheet,
    body: &Value,
    effective: bool,
) -> SpreadsheetResource<'a> {
    let ranges: Vec<A1> = body
        .get("responseRanges")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(Value::as_str)
        .map(parse_a1)
        .collect();
    let grid = body.get("responseIncludeGridData") == Some(&Value::Bool(true));
    let sheets = sheet
        .tabs
        .iter()
        .map(|tab| {
            let data: Vec<GridData<'a>> = ranges
                .iter()
                .filter(|a1| grid && a1.tab == tab.title)
                .map(|a1| {
                    let first_row = a1.first_row.unwrap_or(1).max(1);
                    let last_row = a1.last_row.unwrap_or(tab.grid_rows).min(tab.grid_rows);
                    let first_column = a1.first_column.unwrap_or(1).max(1);
                    let last_column = a1.last_column.unwrap_or(tab.grid_columns);
                    let columns = (first_column as usize - 1)..(last_column as usize);
                    // Trailing rows without a value in the range are left out, as Google does.
                    let last_used = (first_row..=last_row)
                        .rev()
                        .find(|&number| {
                            tab.cells.get(number as usize - 1).is_some_and(|row| {
                                row.iter()
                                    .enumerate()
                                    .any(|(c, v)| columns.contains(&c) && !is_empty(v))
                            })
                        })
                        .unwrap_or(first_row - 1);
                    let rows = (first_row..=last_used)
                        .map(|number| {
                            tab.cells
                                .get(number as usize - 1)
                                .map_or(&[][..], Vec::as_slice)
                        })
                        .collect();
                    GridData {
                        start_row: first_row - 1,
                        start_column: first_column - 1,
                        rows,
                        columns,
                        effective,
                    }
                })
                .collect();
            SheetResource {
                properties: tab_properties(tab),
                data,
            }
        })
        .collect();
    SpreadsheetResource {
        id: &sheet.id,
        title: &sheet.title,
        sheets,
    }
}

/// What [`spreadsheet_resource`] answers, serialised as Google's `Spreadsheet` JSON.
struct SpreadsheetResource<'a> {
    id: &'a str,
    title: &'a str,
    sheets: Vec<SheetResource<'a>>,
}

struct SheetResource<'a> {
    properties: Value,
    data: Vec<GridData<'a>>,
}

/// One range's cells: `rows` from `start_row`, each cut to `columns` (0-based).
struct GridData<'a> {
    start_row: u64,
    start_column: u64,
    rows: Vec<&'a [Value]>,
    columns: std::ops::Range<usize>,
    effective: bool,
}

/// One row of a [`GridData`] as `RowData`.
struct RowData<'a> {
    cells: &'a [Value],
    columns: std::ops::Range<usize>,
    effective: bool,
}

/// One cell as `CellData`: `{}` when empty.
struct CellData<'a> {
    value: Option<&'a Value>,
    effective: bool,
}

/// A value as `ExtendedValue`: `{"stringValue": ...}`, `{"numberValue": ...}` or `{"boolValue": ...}`.
struct ExtendedValue<'a>(&'a Value);

impl serde::Serialize for SpreadsheetResource<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("spreadsheetId", self.id)?;
        map.serialize_entry("properties", &json!({"title": self.title}))?;
        map.serialize_entry("sheets", &self.sheets)?;
        map.end()
    }
}

impl serde::Serialize for SheetResource<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("properties", &self.properties)?;
        if !self.data.is_empty() {
            map.serialize_entry("data", &self.data)?;
        }
        map.end()
    }
}

impl serde::Serialize for GridData<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("startRow", &self.start_row)?;
        map.serialize_entry("startColumn", &self.start_column)?;
        let rows: Vec<RowData> = self
            .rows
            .iter()
            .map(|cells| RowData {
                cells,
                columns: self.columns.clone(),
                effective: self.effective,
            })
            .collect();
        map.serialize_entry("rowData", &rows)?;
        map.end()
    }
}

impl serde::Serialize for RowData<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        struct Values<'b>(&'b RowData<'b>);
        impl serde::Serialize for Values<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let row = self.0;
                let mut seq = serializer.serialize_seq(Some(row.columns.len()))?;
                for c in row.columns.clone() {
                    seq.serialize_element(&CellData {
                        value: row.cells.get(c).filter(|v| !is_empty(v)),
                        effective: row.effective,
                    })?;
                }
                seq.end()
            }
        }
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry("values", &Values(self))?;
        map.end()
    }
}

impl serde::Serialize for CellData<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        if let Some(value) = self.value {
            map.serialize_entry("userEnteredValue", &ExtendedValue(value))?;
            if self.effective {
                map.serialize_entry("effectiveValue", &ExtendedValue(value))?;
            }
        }
        map.end()
    }
}

impl serde::Serialize for ExtendedValue<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        if let Value::Object(value) = self.0 {
            // Already an `ExtendedValue` (a formula entered with USER_ENTERED).
            return serde::Serialize::serialize(value, serializer);
        }
        let kind = match self.0 {
            Value::Number(_) => "numberValue",
            Value::Bool(_) => "boolValue",
            _ => "stringValue",
        };
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry(kind, self.0)?;
        map.end()
    }
}

fn put_row(tab: &mut FakeTab, number: u64, first_column: u64, cells: Vec<Value>) {
    let index = (number - 1) as usize;
    if tab.cells.len() <= index {
        tab.cells.resize(index + 1, Vec::new());
    }
    let row = &mut tab.cells[index];
    let start = (first_column - 1) as usize;
    if row.len() < start + cells.len() {
        row.resize(start + cells.len(), Value::from(""));
    }
    for (c, value) in cells.into_iter().enumerate() {
        row[start + c] = value;
    }
}
