//! Service-account OAuth for the Sheets API: an RS256 JWT assertion exchanged at the key file's
//! `token_uri` (the JWT bearer grant, RFC 7523) for an access token with the spreadsheets scope.
//!
//! Why a small signer over `jsonwebtoken` rather than gcp_auth or yup-oauth2: both would do the
//! grant, but the exporter needs to point the grant at a local fake (`token_uri` over plain http,
//! with test keys generated at test time), to classify the token endpoint's failures like the
//! API's own (429/5xx retried, 400/401 a configuration problem), and to keep one HTTP stack
//! (reqwest). The grant is one POST; the signing is `jsonwebtoken`'s, which is maintained.
//!
//! Invariant: the private key and the tokens never reach a log line or an error message (the key
//! file's `Debug` shows the account's email only); a token is reused until a minute before it
//! expires, and only one refresh runs at a time.

use std::path::Path;
use std::time::{Duration, Instant};

use formstream_schemas::Secret;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::api::ApiError;

/// The OAuth scope of the Sheets API (read and write).
pub const SPREADSHEETS_SCOPE: &str = "https://www.googleapis.com/auth/spreadsheets";

/// Google's assertions may be valid for at most an hour.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);

/// A token is refreshed this long before it expires, so that a request never leaves with a token
/// that expires on the way.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// The fields of a service-account key file that the grant needs.
#[derive(Deserialize)]
pub struct ServiceAccountKey {
    pub client_email: String,
    private_key: String,
    pub token_uri: String,
}

impl std::fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

impl ServiceAccountKey {
    /// Reads a key file. Errors name the file and the missing field, never its contents.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!(
                "reading the Google credentials file {}: {e}",
                path.display()
            )
        })?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        // serde_json's errors quote no input, only positions: safe to show.
        let key: ServiceAccountKey = serde_json::from_str(text).map_err(|e| {
            anyhow::anyhow!(
                "not a service-account key file (client_email, private_key, token_uri): {e}"
            )
        })?;
        EncodingKey::from_rsa_pem(key.private_key.as_bytes())
            .map_err(|_| anyhow::anyhow!("its private_key is not an RSA key in PEM form"))?;
        Ok(key)
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

struct Cached {
    token: Secret,
    refresh_at: Instant,
}

/// Access tokens for one service account, cached until shortly before they expire.
pub struct TokenSource {
    key: ServiceAccountKey,
    signing_key: EncodingKey,
    client: reqwest::Client,
    cached: Mutex<Option<Cached>>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    pub fn new(key: ServiceAccountKey, client: reqwest::Client) -> anyhow::Result<Self> {
        let signing_key = EncodingKey::from_rsa_pem(key.private_key.as_bytes())
            .map_err(|_| anyhow::anyhow!("the private_key is not an RSA key in PEM form"))?;
        Ok(TokenSource {
            key,
            signing_key,
            client,
            cached: Mutex::new(None),
        })
    }

    /// A valid access token, from the cache or a new grant.
    pub async fn token(&self) -> Result<Secret, ApiError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && Instant::now() < c.refresh_at
        {
            return Ok(Secret::new(c.token.expose()));
        }
        let fresh = self.grant().await?;
        let token = Secret::new(fresh.token.expose());
        *cached = Some(fresh);
        Ok(token)
    }

    /// Forgets the cached token (the API answered 401: revoked, or the clock was off).
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }

    async fn grant(&self) -> Result<Cached, ApiError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = Claims {
            iss: &self.key.client_email,
            scope: SPREADSHEETS_SCOPE,
            aud: &self.key.token_uri,
            iat: now,
            exp: now + ASSERTION_LIFETIME.as_secs(),
        };
        let assertion =
            jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.signing_key)
                .map_err(|e| ApiError::Auth(format!("signing the assertion: {e}")))?;
        let started = Instant::now();
        let answer = self
            .client
            .post(&self.key.token_uri)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(|e| {
                ApiError::Unavailable(format!("the token endpoint: {}", e.without_url()))
            })?;
        let status = answer.status();
        if !status.is_success() {
            let retry_after = formstream_runtime::http::retry_after(answer.headers());
            // The body is Google's `{"error": "invalid_grant", "error_description": ...}`: no secret.
            let body = answer.text().await.unwrap_or_default();
            let detail = format!(
                "the token endpoint answered {status}: {}",
                truncate(&body, 300)
            );
            return Err(if status.as_u16() == 429 || status.is_server_error() {
                ApiError::Throttled {
                    status: status.as_u16(),
                    retry_after,
                    detail,
                }
            } else {
                ApiError::Auth(detail)
            });
        }
        let answer: TokenAnswer = answer.json().await.map_err(|e| {
            ApiError::Unavailable(format!("the token endpoint's answer: {}", e.without_url()))
        })?;
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(3600));
        Ok(Cached {
            token: Secret::new(answer.access_token),
            refresh_at: started + lifetime.saturating_sub(REFRESH_MARGIN),
        })
    }
}

/// At most `max` characters of `text`, for error messages.
pub fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}
