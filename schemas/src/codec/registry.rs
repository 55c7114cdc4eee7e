//! A minimal Confluent Schema Registry client: register a schema under a subject, fetch a schema
//! by id. Nothing else is needed to produce and consume the Confluent wire format.
//!
//! Why not `schema_registry_converter`: it is the well-known crate for this, but its releases
//! target other `apache-avro` versions than the workspace's 0.21 (4.5 depends on 0.19; 5.x and
//! 6.x on 0.22 and reqwest 0.13), so its `Schema` types would not unify with ours and we would
//! build two Avro stacks. Two endpoints over the reqwest we already have are smaller than that.
//!
//! Invariant: every request is bounded by the configured timeout, and every failure comes back as
//! a [`RegistryError`] that says which endpoint failed and whether retrying can help; the password
//! never appears in `Debug` output or in errors.

use std::fmt;
use std::time::Duration;

use reqwest::{StatusCode, Url};
use serde::Deserialize;

/// The registry's content type, for requests and responses.
const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Confluent's error code for "schema not found" on `GET /schemas/ids/{id}`.
const SCHEMA_NOT_FOUND: i64 = 40403;

/// Where the Schema Registry is and how to reach it. `Debug` shows neither the user nor the
/// password (nor any the URL carries).
#[derive(Clone)]
pub struct RegistryConfig {
    /// Base URL, e.g. `http://localhost:8081`; a trailing slash is fine.
    pub url: String,
    /// Basic-auth user, if the registry requires it.
    pub username: Option<String>,
    /// Basic-auth password (Confluent Cloud: the API secret). Never printed.
    pub password: Option<Secret>,
    /// Upper bound on each registry request, connection included. Registration happens once per
    /// encoder, so a short bound surfaces a dead registry at startup instead of hanging it.
    pub timeout: Duration,
}

impl RegistryConfig {
    /// A config without authentication and with a 10 s timeout: long enough for a cold
    /// registry behind a load balancer, short enough that a gateway's startup fails visibly.
    pub fn new(url: impl Into<String>) -> Self {
        RegistryConfig {
            url: url.into(),
            username: None,
            password: None,
            timeout: Duration::from_secs(10),
        }
    }
}

impl fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("url", &without_userinfo(&self.url))
            .field("username", &self.username.as_ref().map(|_| "***"))
            .field("password", &self.password)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The text of a URL with any `user:password@` replaced by `***@`, for logs and errors; works on
/// text that does not parse as a URL too.
pub fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// `url` without its `user:password@`, which must not reach logs, errors or `Debug` output.
fn without_credentials(mut url: Url) -> Url {
    // Both fail only for URLs that cannot have credentials, which then have none.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url
}

/// A string that never prints: `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// What went wrong talking to the Schema Registry. No variant holds a credential: URLs are shown
/// without their userinfo.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid schema registry URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("could not build the schema registry HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("{endpoint} timed out after {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
    #[error("{endpoint} failed: {source}")]
    Transport {
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{endpoint} answered {status} (error_code {error_code:?}): {message}")]
    Status {
        endpoint: String,
        status: u16,
        error_code: Option<i64>,
        message: String,
    },
    #[error("{endpoint} answered with an unexpected body: {reason}")]
    InvalidBody { endpoint: String, reason: String },
}

impl RegistryError {
    /// Whether the same request may succeed later: timeouts, transport failures, 408, 429, 5xx.
    pub fn is_retriable(&self) -> bool {
        match self {
            RegistryError::Timeout { .. } | RegistryError::Transport { .. } => true,
            RegistryError::Status { status, .. } => {
                *status == 408 || *status == 429 || (*status >= 500 && *status != 501)
            }
            RegistryError::InvalidUrl { .. }
            | RegistryError::Client(_)
            | RegistryError::InvalidBody { .. } => false,
        }
    }
}

/// Outcome of fetching a schema by id.
pub(crate) enum Fetched {
    Schema(String),
    NotFound,
}

#[derive(Deserialize)]
struct IdBody {
    id: u32,
}

#[derive(Deserialize)]
struct SchemaBody {
    schema: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error_code: Option<i64>,
    message: Option<String>,
}

/// The HTTP client. Cheap to clone (reqwest's client is an `Arc`).
#[derive(Clone)]
pub(crate) struct RegistryClient {
    http: reqwest::Client,
    base: Url,
    username: Option<String>,
    password: Option<Secret>,
    timeout: Duration,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("base", &self.base.as_str())
            .field("username", &self.username.as_ref().map(|_| "***"))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RegistryClient {
    pub(crate) fn new(config: RegistryConfig) -> Result<Self, RegistryError> {
        let base = Url::parse(&config.url).map_err(|e| RegistryError::InvalidUrl {
            url: without_userinfo(&config.url),
            reason: e.to_string(),
        })?;
        if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
            return Err(RegistryError::InvalidUrl {
                url: without_userinfo(&config.url),
                reason: "expected an http or https URL".into(),
            });
        }
        // Credentials in the URL move to basic auth (unless given on their own), so that the base
        // URL, which errors and logs show, never carries them.
        let (mut username, mut password) = (config.username, config.password);
        if !base.username().is_empty() && username.is_none() {
            username = Some(decoded(base.username()));
            if password.is_none() {
                password = base.password().map(|p| Secret::new(decoded(p)));
            }
        }
        let mut base = without_credentials(base);
        // Make joining paths append rather than replace the last segment.
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .build()
            .map_err(RegistryError::Client)?;
        Ok(RegistryClient {
            http,
            base,
            username,
            password,
            timeout: config.timeout,
        })
    }

    /// The base URL, for messages.
    pub(crate) fn url(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn request(&self, method: reqwest::Method, url: Url) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .request(method, url)
            .header(reqwest::header::ACCEPT, CONTENT_TYPE);
        if let Some(user) = &self.username {
            request = request.basic_auth(user, self.password.as_ref().map(Secret::expose));
        }
        request
    }

    /// `POST /subjects/{subject}/versions`: registers `schema_json` under `subject`, or finds it
    /// if it is already there, and returns its global id.
    pub(crate) async fn register(
        &self,
        subject: &str,
        schema_json: &str,
    ) -> Result<u32, RegistryError> {
        let url = self.endpoint(&["subjects", subject, "versions"]);
        let endpoint = format!("POST {url}");
        let body = serde_json::json!({ "schema": schema_json, "schemaType": "AVRO" });
        let request = self
            .request(reqwest::Method::POST, url)
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(body.to_string());
        let (status, bytes) = self.send(&endpoint, request).await?;
        if !status.is_success() {
            return Err(status_error(endpoint, status, &bytes));
        }
        let parsed: IdBody =
            serde_json::from_slice(&bytes).map_err(|e| RegistryError::InvalidBody {
                endpoint,
                reason: e.to_string(),
            })?;
        Ok(parsed.id)
    }

    /// `GET /schemas/ids/{id}`: the schema text registered under `id`.
    pub(crate) async fn schema_by_id(&self, id: u32) -> Result<Fetched, RegistryError> {
        let url = self.endpoint(&["schemas", "ids", &id.to_string()]);
        let endpoint = format!("GET {url}");
        let request = self.request(reqwest::Method::GET, url);
        let (status, bytes) = self.send(&endpoint, request).await?;
        if status == StatusCode::NOT_FOUND {
            let code = serde_json::from_slice::<ErrorBody>(&bytes)
                .ok()
                .and_then(|b| b.error_code);
            // A 404 without Confluent's code is a wrong URL, not a missing schema.
            if code == Some(SCHEMA_NOT_FOUND) {
                return Ok(Fetched::NotFound);
            }
        }
        if !status.is_success() {
            return Err(status_error(endpoint, status, &bytes));
        }
        let parsed: SchemaBody =
            serde_json::from_slice(&bytes).map_err(|e| RegistryError::InvalidBody {
                endpoint,
                reason: e.to_string(),
            })?;
        Ok(Fetched::Schema(parsed.schema))
    }

    async fn send(
        &self,
        endpoint: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, Vec<u8>), RegistryError> {
        let classify = |e: reqwest::Error| {
            if e.is_timeout() {
                RegistryError::Timeout {
                    endpoint: endpoint.to_owned(),
                    timeout: self.timeout,
                }
            } else {
                RegistryError::Transport {
                    endpoint: endpoint.to_owned(),
                    source: e.without_url(),
                }
            }
        };
        let response = request.send().await.map_err(classify)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(classify)?;
        Ok((status, bytes.to_vec()))
    }
}

/// A percent-encoded URL part, decoded (what basic auth sends for a URL's userinfo).
fn decoded(part: &str) -> String {
    percent_encoding::percent_decode_str(part)
        .decode_utf8_lossy()
        .into_owned()
}

fn status_error(endpoint: String, status: StatusCode, body: &[u8]) -> RegistryError {
    let parsed = serde_json::from_slice::<ErrorBody>(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|b| b.message.clone())
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned());
    RegistryError::Status {
        endpoint,
        status: status.as_u16(),
        error_code: parsed.and_then(|b| b.error_code),
        message,
    }
}
