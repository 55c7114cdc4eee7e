//! A stateful local fake of Twilio Programmable Messaging, for tests of the code that sends SMS.
//!
//! It answers like the real API: the same paths, Basic auth (401/20003), form-encoded parameters,
//! E.164 validation (400/21211), Twilio-shaped JSON and error bodies, `SM` sids of 34 characters,
//! and a paged listing with `To` and `DateSent>=` filters. A test scripts its failures: rate
//! limits (429/20429, with or without `Retry-After`), 5xx before or after the message is created
//! (the ambiguous case), slow answers after creating (client timeouts), unsubscribed (21610) and
//! non-mobile (21614) numbers, and a whole-service outage (503 everything, or refused
//! connections).
//!
//! Invariant: every message the fake created is in [`FakeTwilio::messages`], whatever it answered,
//! so a test can assert exactly what a real account would hold. Each test starts its own fake on
//! 127.0.0.1:0, so tests run in parallel.
//!
//! [`FakeServer`] (also used by the webhook receiver) serves a router and can refuse connections.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use formstream_notify::twilio::{Originator, TwilioConfig};
use serde_json::{Value, json};
use time::format_description::well_known::Rfc2822;
use time::macros::format_description;
use time::{Date, OffsetDateTime};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// A router served on 127.0.0.1 that can stop accepting and come back on the same port.
///
/// Connections are served by tasks owned by the accept loop, so stopping it also closes every
/// open (keep-alive) connection: clients then see exactly what a dead host gives, refused
/// connections, rather than a pooled connection that still answers.
pub struct FakeServer {
    address: SocketAddr,
    router: Router,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl FakeServer {
    /// Serves `router` on a free port of 127.0.0.1.
    pub async fn start(router: Router) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a port for a fake");
        let address = listener.local_addr().expect("the fake's address");
        let task = Mutex::new(Some(serve(listener, router.clone())));
        FakeServer {
            address,
            router,
            task,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Closes the listener and every open connection: new connections are refused.
    pub fn stop(&self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }

    /// Listens again on the same port (after [`FakeServer::stop`]).
    pub async fn restart(&self) {
        self.stop();
        // The aborted accept loop releases the port once it has unwound; retry briefly.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.address).await {
                Ok(listener) => break listener,
                Err(_) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => panic!("rebinding {}: {error}", self.address),
            }
        };
        *lock(&self.task) = Some(serve(listener, self.router.clone()));
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(listener: TcpListener, router: Router) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = hyper_util::service::TowerToHyperService::new(router.clone());
            connections.spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
            while connections.try_join_next().is_some() {}
        }
    })
}

/// A poisoned lock only means another test thread panicked; the data is still what it was.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A scripted failure of one create request (`POST .../Messages.json`), applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// 429 with code 20429, nothing created; `Retry-After: <seconds>` when given.
    RateLimit { retry_after: Option<u64> },
    /// This 5xx, nothing created.
    FailBeforeCreate(u16),
    /// The message is created, then this 5xx is answered: the ambiguous case.
    FailAfterCreate(u16),
    /// The message is created, then the 201 comes after this delay (a client timeout).
    SlowAfterCreate(Duration),
}

/// A message the fake holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeMessage {
    pub sid: String,
    pub to: String,
    pub from: Option<String>,
    pub messaging_service_sid: Option<String>,
    pub body: String,
    pub status: String,
    pub status_callback: Option<String>,
    pub date_created: OffsetDateTime,
}

/// One request the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    pub method: String,
    /// Path and query, as sent.
    pub uri: String,
}

#[derive(Default)]
struct Twilio {
    messages: Vec<FakeMessage>,
    /// Positions in `messages` per recipient: a list filtered by `To` reads only those, as
    /// Twilio's does, however many messages the account holds.
    by_recipient: HashMap<String, Vec<usize>>,
    faults: VecDeque<Fault>,
    unsubscribed: HashSet<String>,
    not_mobile: HashSet<String>,
    /// Numbers Twilio's own lookup refuses (21211) although they are well-formed E.164.
    invalid: HashSet<String>,
    /// Added before every create is handled: a service's usual answer time (benchmarks).
    latency: Duration,
    down: bool,
    requests: Vec<SeenRequest>,
}

struct Shared {
    account_sid: String,
    auth_token: String,
    state: Mutex<Twilio>,
}

/// A running fake Twilio. Clones share the same server and state.
#[derive(Clone)]
pub struct FakeTwilio {
    shared: Arc<Shared>,
    server: Arc<FakeServer>,
}

/// The number the fake's configs send from (Twilio's magic test "From").
pub const FAKE_FROM: &str = "+15005550006";

impl FakeTwilio {
    /// Starts a fake with a fresh account SID and auth token.
    pub async fn start() -> Self {
        let shared = Arc::new(Shared {
            account_sid: format!("AC{}", uuid::Uuid::new_v4().simple()),
            auth_token: uuid::Uuid::new_v4().simple().to_string(),
            state: Mutex::new(Twilio::default()),
        });
        let router = Router::new()
            .route(
                "/2010-04-01/Accounts/{account}/Messages.json",
                post(create).get(list),
            )
            .with_state(shared.clone());
        let server = Arc::new(FakeServer::start(router).await);
        FakeTwilio { shared, server }
    }

    pub fn base_url(&self) -> String {
        self.server.url()
    }

    pub fn account_sid(&self) -> &str {
        &self.shared.account_sid
    }

    pub fn auth_token(&self) -> &str {
        &self.shared.auth_token
    }

    /// A client config for this fake, sending from [`FAKE_FROM`].
    pub fn config(&self) -> TwilioConfig {
        self.config_with(Originator::From(FAKE_FROM.to_owned()))
    }

    pub fn config_with(&self, originator: Originator) -> TwilioConfig {
        let mut config = TwilioConfig::new(self.account_sid(), self.auth_token(), originator);
        config.base_url = self.base_url();
        config
    }

    /// The next `n` create requests fail with `fault`, after any already scripted.
    pub fn fail_next(&self, n: usize, fault: Fault) {
        let mut state = self.state();
        state.faults.extend(std::iter::repeat_n(fault, n));
    }

    /// Scripted faults not yet applied (a test waits for 0 to know they all hit).
    pub fn pending_faults(&self) -> usize {
        self.state().faults.len()
    }

    /// `number` has replied STOP: sends to it fail with 21610.
    pub fn unsubscribe(&self, number: &str) {
        self.state().unsubscribed.insert(number.to_owned());
    }

    /// `number` is a landline: sends to it fail with 21614.
    pub fn mark_not_mobile(&self, number: &str) {
        self.state().not_mobile.insert(number.to_owned());
    }

    /// `number` is refused as invalid (400/21211), as Twilio refuses numbers that are well-formed
    /// but not assigned.
    pub fn reject_as_invalid(&self, number: &str) {
        self.state().invalid.insert(number.to_owned());
    }

    /// Every create request waits `latency` before it is handled (and answered).
    pub fn set_latency(&self, latency: Duration) {
        self.state().latency = latency;
    }

    /// How many messages the fake holds.
    pub fn message_count(&self) -> usize {
        self.state().messages.len()
    }

    /// Whether the service answers 503 (see [`FakeTwilio::set_down`]).
    pub fn is_down(&self) -> bool {
        self.state().down
    }

    /// While down, every request gets 503 (and creates nothing).
    pub fn set_down(&self, down: bool) {
        self.state().down = down;
    }

    /// Closes the port: connections are refused until [`FakeTwilio::accept_connections`].
    pub fn refuse_connections(&self) {
        self.server.stop();
    }

    pub async fn accept_connections(&self) {
        self.server.restart().await;
    }

    /// Adds a message as if it had been sent at `date_created` (for listing filters).
    pub fn seed(&self, to: &str, body: &str, date_created: OffsetDateTime) -> String {
        let message = FakeMessage {
            sid: new_sid(),
            to: to.to_owned(),
            from: Some(FAKE_FROM.to_owned()),
            messaging_service_sid: None,
            body: body.to_owned(),
            status: "delivered".to_owned(),
            status_callback: None,
            date_created,
        };
        let sid = message.sid.clone();
        self.state().hold(message);
        sid
    }

    /// Every message created, oldest first.
    pub fn messages(&self) -> Vec<FakeMessage> {
        self.state().messages.clone()
    }

    /// The messages created for `to`, oldest first.
    pub fn messages_to(&self, to: &str) -> Vec<FakeMessage> {
        let state = self.state();
        state
            .messages
            .iter()
            .filter(|m| m.to == to)
            .cloned()
            .collect()
    }

    /// How many messages each recipient got.
    pub fn counts_by_recipient(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for message in self.state().messages.iter() {
            *counts.entry(message.to.clone()).or_default() += 1;
        }
        counts
    }

    /// Every request received, in order (including refused ones).
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.state().requests.clone()
    }

    /// How many requests of `method` were received.
    pub fn requests_of(&self, method: &str) -> usize {
        self.state()
            .requests
            .iter()
            .filter(|r| r.method == method)
            .count()
    }

    fn state(&self) -> MutexGuard<'_, Twilio> {
        lock(&self.shared.state)
    }
}

impl Twilio {
    fn hold(&mut self, message: FakeMessage) {
        self.by_recipient
            .entry(message.to.clone())
            .or_default()
            .push(self.messages.len());
        self.messages.push(message);
    }
}

fn new_sid() -> String {
    format!("SM{}", uuid::Uuid::new_v4().simple())
}

fn twilio_error(status: StatusCode, code: u32, message: &str) -> Response {
    let body = json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status.as_u16(),
    });
    (status, axum::Json(body)).into_response()
}

/// Records the request, then answers 503 while down or 401 on bad credentials.
fn admit(
    shared: &Shared,
    account: &str,
    headers: &HeaderMap,
    request: SeenRequest,
) -> Option<Response> {
    let mut state = lock(&shared.state);
    state.requests.push(request);
    if state.down {
        return Some(twilio_error(
            StatusCode::SERVICE_UNAVAILABLE,
            20503,
            "Service Unavailable",
        ));
    }
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|encoded| BASE64.decode(encoded).ok())
        .and_then(|decoded| String::from_utf8(decoded).ok())
        .is_some_and(|pair| {
            pair == format!("{}:{}", shared.account_sid, shared.auth_token)
                && account == shared.account_sid
        });
    (!authorized).then(|| {
        twilio_error(
            StatusCode::UNAUTHORIZED,
            20003,
            "Authentication Error - invalid username",
        )
    })
}

fn seen(request: &Request) -> SeenRequest {
    SeenRequest {
        method: request.method().to_string(),
        uri: request
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
    }
}

async fn create(
    State(shared): State<Arc<Shared>>,
    Path(account): Path<String>,
    request: Request,
) -> Response {
    let headers = request.headers().clone();
    if let Some(refused) = admit(&shared, &account, &headers, seen(&request)) {
        return refused;
    }
    let form = headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes()
            .starts_with(b"application/x-www-form-urlencoded")
    });
    let params: HashMap<String, String> = if form {
        match axum::Form::<HashMap<String, String>>::from_request(request, &()).await {
            Ok(axum::Form(params)) => params,
            Err(_) => HashMap::new(),
        }
    } else {
        // Twilio reads only form parameters: a JSON body has no `To`.
        HashMap::new()
    };

    let latency = lock(&shared.state).latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let fault = lock(&shared.state).faults.pop_front();
    match fault {
        Some(Fault::RateLimit { retry_after }) => {
            let mut response =
                twilio_error(StatusCode::TOO_MANY_REQUESTS, 20429, "Too Many Requests");
            if let Some(seconds) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            return response;
        }
        Some(Fault::FailBeforeCreate(status)) => return server_error(status),
        _ => {}
    }

    let param = |name: &str| params.get(name).filter(|v| !v.is_empty()).cloned();
    let Some(to) = param("To") else {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21604,
            "A 'To' phone number is required.",
        );
    };
    let Some(body) = param("Body") else {
        return twilio_error(StatusCode::BAD_REQUEST, 21602, "Message body is required.");
    };
    let (from, service) = (param("From"), param("MessagingServiceSid"));
    if from.is_none() && service.is_none() {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21603,
            "A 'From' phone number is required.",
        );
    }
    if !formstream_notify::outbox::is_e164(&to) {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21211,
            &format!("The 'To' number {to} is not a valid phone number."),
        );
    }
    if body.chars().count() > 1600 {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21617,
            "The concatenated message body exceeds the 1600 character limit.",
        );
    }
    {
        let state = lock(&shared.state);
        if state.unsubscribed.contains(&to) {
            return twilio_error(
                StatusCode::BAD_REQUEST,
                21610,
                "Attempt to send to unsubscribed recipient",
            );
        }
        if state.invalid.contains(&to) {
            return twilio_error(
                StatusCode::BAD_REQUEST,
                21211,
                &format!("The 'To' number {to} is not a valid phone number."),
            );
        }
        if state.not_mobile.contains(&to) {
            return twilio_error(
                StatusCode::BAD_REQUEST,
                21614,
                &format!("'To' number {to} is not a valid mobile number"),
            );
        }
    }

    let message = FakeMessage {
        sid: new_sid(),
        to,
        status: if service.is_some() {
            "accepted"
        } else {
            "queued"
        }
        .to_owned(),
        from,
        messaging_service_sid: service,
        body,
        status_callback: param("StatusCallback"),
        date_created: OffsetDateTime::now_utc(),
    };
    lock(&shared.state).hold(message.clone());

    match fault {
        Some(Fault::FailAfterCreate(status)) => return server_error(status),
        Some(Fault::SlowAfterCreate(delay)) => tokio::time::sleep(delay).await,
        _ => {}
    }
    (
        StatusCode::CREATED,
        axum::Json(message_json(&shared.account_sid, &message)),
    )
        .into_response()
}

fn server_error(status: u16) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    twilio_error(status, 20500, "Internal Server Error")
}

fn rfc2822(at: OffsetDateTime) -> String {
    at.format(&Rfc2822).unwrap_or_default()
}

/// The JSON of a message, in Twilio's shape (numbers as strings where Twilio sends strings).
fn message_json(account_sid: &str, message: &FakeMessage) -> Value {
    let segments = formstream_notify::segments::segments(&message.body).count;
    json!({
        "account_sid": account_sid,
        "api_version": "2010-04-01",
        "body": message.body,
        "date_created": rfc2822(message.date_created),
        "date_updated": rfc2822(message.date_created),
        // The fake "sends" at once; real Twilio sets date_sent only when the carrier takes it.
        "date_sent": rfc2822(message.date_created),
        "direction": "outbound-api",
        "error_code": null,
        "error_message": null,
        "from": message.from,
        "messaging_service_sid": message.messaging_service_sid,
        "num_media": "0",
        "num_segments": segments.to_string(),
        "price": null,
        "price_unit": "USD",
        "sid": message.sid,
        "status": message.status,
        "to": message.to,
        "uri": format!("/2010-04-01/Accounts/{account_sid}/Messages/{}.json", message.sid),
    })
}

async fn list(
    State(shared): State<Arc<Shared>>,
    Path(account): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    if let Some(refused) = admit(&shared, &account, request.headers(), seen(&request)) {
        return refused;
    }
    let day = format_description!("[year]-[month]-[day]");
    let date = |key: &str| query.get(key).and_then(|d| Date::parse(d, &day).ok());
    let (after, before, on) = (date("DateSent>"), date("DateSent<"), date("DateSent"));
    let page_size: usize = query
        .get("PageSize")
        .and_then(|s| s.parse().ok())
        .unwrap_or(50)
        .clamp(1, 1000);
    let page: usize = query.get("Page").and_then(|s| s.parse().ok()).unwrap_or(0);

    let state = lock(&shared.state);
    // Newest first, as Twilio lists.
    let candidates: Box<dyn Iterator<Item = &FakeMessage>> = match query.get("To") {
        Some(to) => Box::new(
            state
                .by_recipient
                .get(to)
                .into_iter()
                .flatten()
                .rev()
                .filter_map(|&i| state.messages.get(i)),
        ),
        None => Box::new(state.messages.iter().rev()),
    };
    let matching: Vec<&FakeMessage> = candidates
        .filter(|m| query.get("To").is_none_or(|to| &m.to == to))
        .filter(|m| {
            let sent = m.date_created.date();
            after.is_none_or(|d| sent >= d)
                && before.is_none_or(|d| sent <= d)
                && on.is_none_or(|d| sent == d)
        })
        .collect();
    let messages: Vec<Value> = matching
        .iter()
        .skip(page * page_size)
        .take(page_size)
        .map(|m| message_json(&shared.account_sid, m))
        .collect();
    let more = matching.len() > (page + 1) * page_size;
    let page_uri = |number: usize| {
        let mut url = reqwest::Url::parse("http://fake/").expect("a constant URL");
        url.set_path(&format!(
            "/2010-04-01/Accounts/{}/Messages.json",
            shared.account_sid
        ));
        {
            let mut pairs = url.query_pairs_mut();
            for key in ["To", "DateSent>", "DateSent<", "DateSent"] {
                if let Some(value) = query.get(key) {
                    pairs.append_pair(key, value);
                }
            }
            pairs.append_pair("PageSize", &page_size.to_string());
            pairs.append_pair("Page", &number.to_string());
            if number > 0 {
                pairs.append_pair("PageToken", &format!("PA{number:032x}"));
            }
        }
        format!("{}?{}", url.path(), url.query().unwrap_or_default())
    };
    axum::Json(json!({
        "messages": messages,
        "page": page,
        "page_size": page_size,
        "start": page * page_size,
        "end": page * page_size + messages.len().saturating_sub(1),
        "uri": page_uri(page),
        "first_page_uri": page_uri(0),
        "previous_page_uri": (page > 0).then(|| page_uri(page - 1)),
        "next_page_uri": more.then(|| page_uri(page + 1)),
    }))
    .into_response()
}
