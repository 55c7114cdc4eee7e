//! The Twilio and Sheets fakes as standalone servers (`fake-twilio`, `fake-sheets` binaries of
//! this crate), for runs where the processors are separate processes (bench/e2e.sh and the
//! end-to-end test): an admin API beside each fake, on a port of its own, switches its faults
//! and reports what it holds, and a small client drives it.
//!
//! Invariant: the fake's service API is exactly the in-process fake's (same paths, auth, errors,
//! latencies and quotas); the admin API only switches faults the in-process fake already has and
//! reads its state, so a standalone fake behaves like the real service as much as a test's does.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{Query, State};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::sheets_fake::FakeSheets;
use crate::twilio_fake::FakeTwilio;

/// The first line a standalone fake prints on stdout: where it serves and how to log in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Announce {
    /// Base URL of the service API (what the processors are pointed at).
    pub api: String,
    /// Base URL of the admin API.
    pub admin: String,
    /// Twilio only: the account's SID and auth token.
    #[serde(default)]
    pub account_sid: Option<String>,
    #[serde(default)]
    pub auth_token: Option<String>,
    /// Sheets only: a service-account key file whose `token_uri` is the fake.
    #[serde(default)]
    pub credentials: Option<String>,
}

/// One message the Twilio fake created, as the admin API lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Message {
    pub sid: String,
    pub to: String,
    pub body: String,
    /// Creation time, Unix milliseconds.
    pub created_ms: i64,
}

/// One data row of a spreadsheet tab, as the Sheets fake's admin API lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SheetRow {
    pub spreadsheet: String,
    pub row: usize,
    pub response_id: Value,
    pub revision: Value,
}

/// Counters of a fake, for progress and the report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Twilio: messages created. Sheets: data rows held (all tabs named `responses`).
    pub effects: usize,
    /// Create (Twilio) or write (Sheets) requests received, refused ones included.
    pub writes: usize,
    /// Sheets: writes answered 429. Twilio: 0.
    pub throttled: usize,
    /// Twilio: the service answers 503. Sheets: every write is answered 429.
    pub down: bool,
}

#[derive(Deserialize)]
struct Switch {
    on: bool,
}

/// The admin API of a Twilio fake.
pub fn twilio_admin(twilio: FakeTwilio) -> Router {
    Router::new()
        .route("/down", post(twilio_down))
        .route("/invalid", post(twilio_invalid))
        .route("/messages", get(twilio_messages))
        .route("/stats", get(twilio_stats))
        .with_state(twilio)
}

async fn twilio_down(State(twilio): State<FakeTwilio>, Query(switch): Query<Switch>) {
    twilio.set_down(switch.on);
}

async fn twilio_invalid(
    State(twilio): State<FakeTwilio>,
    axum::Json(numbers): axum::Json<Vec<String>>,
) {
    for number in numbers {
        twilio.reject_as_invalid(&number);
    }
}

async fn twilio_messages(State(twilio): State<FakeTwilio>) -> impl IntoResponse {
    let mut lines = String::new();
    for m in twilio.messages() {
        let message = Message {
            sid: m.sid,
            to: m.to,
            body: m.body,
            created_ms: (m.date_created.unix_timestamp_nanos() / 1_000_000) as i64,
        };
        if let Ok(line) = serde_json::to_string(&message) {
            lines.push_str(&line);
            lines.push('\n');
        }
    }
    lines
}

async fn twilio_stats(State(twilio): State<FakeTwilio>) -> axum::Json<Stats> {
    axum::Json(Stats {
        effects: twilio.message_count(),
        writes: twilio.requests_of("POST"),
        throttled: 0,
        down: twilio.is_down(),
    })
}

/// The admin API of a Sheets fake.
pub fn sheets_admin(sheets: std::sync::Arc<FakeSheets>) -> Router {
    Router::new()
        .route("/exhausted", post(sheets_exhausted))
        .route("/rows", get(sheets_rows))
        .route("/stats", get(sheets_stats))
        .with_state(sheets)
}

/// The tab the exporter writes responses to.
const TAB: &str = "responses";

async fn sheets_exhausted(
    State(sheets): State<std::sync::Arc<FakeSheets>>,
    Query(switch): Query<Switch>,
) {
    sheets.set_exhausted(switch.on);
}

async fn sheets_rows(State(sheets): State<std::sync::Arc<FakeSheets>>) -> impl IntoResponse {
    let mut lines = String::new();
    for (spreadsheet, row, response_id, revision) in sheets.key_cells(TAB) {
        let row = SheetRow {
            spreadsheet,
            row,
            response_id,
            revision,
        };
        if let Ok(line) = serde_json::to_string(&row) {
            lines.push_str(&line);
            lines.push('\n');
        }
    }
    lines
}

async fn sheets_stats(State(sheets): State<std::sync::Arc<FakeSheets>>) -> axum::Json<Stats> {
    axum::Json(Stats {
        effects: sheets.data_rows(TAB),
        writes: sheets.write_requests(),
        throttled: sheets.throttled(),
        down: sheets.is_exhausted(),
    })
}

/// Serves `router` on `listen` in the background; returns the bound address.
pub async fn serve_admin(listen: SocketAddr, router: Router) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(address)
}

/// Which fake an admin client talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeKind {
    Twilio,
    Sheets,
}

/// A client of a standalone fake's admin API.
#[derive(Clone)]
pub struct FakeAdmin {
    kind: FakeKind,
    base: String,
    client: reqwest::Client,
}

impl FakeAdmin {
    pub fn new(kind: FakeKind, base: &str) -> Self {
        FakeAdmin {
            kind,
            base: base.trim_end_matches('/').to_owned(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(600))
                .build()
                .expect("an HTTP client"),
        }
    }

    async fn post(&self, path: &str, body: Option<&Value>) -> anyhow::Result<()> {
        let mut request = self.client.post(format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        anyhow::ensure!(
            response.status().is_success(),
            "POST {path}: {}",
            response.status()
        );
        Ok(())
    }

    async fn lines<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<Vec<T>> {
        let text = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .with_context(|| format!("GET {path}"))?
            .error_for_status()?
            .text()
            .await?;
        text.lines()
            .map(|line| serde_json::from_str(line).with_context(|| format!("a line of {path}")))
            .collect()
    }

    /// Twilio: the whole service answers 503 (`true`) or works again. Sheets: every write is
    /// answered 429 (`true`) or the quota is back.
    pub async fn set_down(&self, down: bool) -> anyhow::Result<()> {
        let path = match self.kind {
            FakeKind::Sheets => format!("/exhausted?on={down}"),
            FakeKind::Twilio => format!("/down?on={down}"),
        };
        self.post(&path, None).await
    }

    /// Twilio: numbers refused as invalid (400/21211), though well-formed.
    pub async fn refuse_numbers(&self, numbers: &[String]) -> anyhow::Result<()> {
        self.post("/invalid", Some(&serde_json::to_value(numbers)?))
            .await
    }

    pub async fn stats(&self) -> anyhow::Result<Stats> {
        Ok(self
            .client
            .get(format!("{}/stats", self.base))
            .timeout(Duration::from_secs(10))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// Twilio: every message created.
    pub async fn messages(&self) -> anyhow::Result<Vec<Message>> {
        self.lines("/messages").await
    }

    /// Sheets: every data row of every spreadsheet.
    pub async fn rows(&self) -> anyhow::Result<Vec<SheetRow>> {
        self.lines("/rows").await
    }
}
