//! The console's sessions: an organisation's API key, exchanged once for a random session token
//! that the browser keeps in an HttpOnly, SameSite=Strict cookie; the session itself (its caller and
//! CSRF token, and the key it was opened with, for the console's calls to the slang search API as
//! the organisation: [`Sessions::api_key`]) stays on the server.
//!
//! Invariant: a session authenticates a request only before its idle and absolute expiries, and a
//! request that could change something (any method but GET/HEAD) only with the session's CSRF token
//! in `x-csrf-token`; tokens are kept as SHA-256 hashes, never logged.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use formstream_core::api::{ApiError, Caller};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// The session cookie's name.
pub const COOKIE: &str = "formstream_console";
/// The header a console request that changes something carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Most sessions kept at once; past it the oldest goes first (a flood of logins cannot grow memory).
const MAX_SESSIONS: usize = 10_000;

struct Session {
    caller: Caller,
    /// The key the session was opened with: only the gateway's own calls to other services of
    /// the pipeline as this organisation use it (the slang search API); never sent to the browser.
    api_key: String,
    csrf: String,
    created: Instant,
    seen: Instant,
}

/// What a new or current session shows the console (never the session token itself: that is in
/// the HttpOnly cookie only).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct SessionView {
    pub organisation: String,
    /// Send it back as `x-csrf-token` on every request but GET.
    pub csrf_token: String,
    /// Seconds of inactivity after which the session ends.
    pub idle_timeout_secs: u64,
    /// Seconds left before the session ends, active or not.
    pub expires_in_secs: u64,
}

pub struct Sessions {
    by_hash: Mutex<HashMap<[u8; 32], Session>>,
    idle: Duration,
    absolute: Duration,
}

impl Sessions {
    pub fn new(idle: Duration, absolute: Duration) -> Self {
        Sessions {
            by_hash: Mutex::new(HashMap::new()),
            idle,
            absolute,
        }
    }

    pub fn absolute(&self) -> Duration {
        self.absolute
    }

    /// A new session for `caller`, who signed in with `api_key`: its token (for the cookie) and
    /// what the console sees.
    pub fn open(&self, caller: Caller, api_key: &str) -> (String, SessionView) {
        let token = random_hex();
        let now = Instant::now();
        let session = Session {
            caller,
            api_key: api_key.to_owned(),
            csrf: random_hex(),
            created: now,
            seen: now,
        };
        let view = self.view(&session, now);
        let mut sessions = self.by_hash.lock().unwrap_or_else(PoisonError::into_inner);
        sessions.retain(|_, s| self.alive(s, now));
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(hash, _)| *hash)
        {
            sessions.remove(&oldest);
        }
        sessions.insert(hash(&token), session);
        (token, view)
    }

    /// The session the request's cookie names, if alive (it is touched), as the console sees it.
    pub fn current(&self, headers: &HeaderMap) -> Option<SessionView> {
        let token = cookie_token(headers)?;
        let now = Instant::now();
        let mut sessions = self.by_hash.lock().unwrap_or_else(PoisonError::into_inner);
        let key = hash(token);
        let session = sessions.get_mut(&key)?;
        if !self.alive(session, now) {
            sessions.remove(&key);
            return None;
        }
        session.seen = now;
        Some(self.view(session, now))
    }

    /// The API key the request's session was opened with, if the session is alive.
    pub fn api_key(&self, headers: &HeaderMap) -> Option<String> {
        let token = cookie_token(headers)?;
        let now = Instant::now();
        let sessions = self.by_hash.lock().unwrap_or_else(PoisonError::into_inner);
        let session = sessions.get(&hash(token))?;
        self.alive(session, now).then(|| session.api_key.clone())
    }

    /// Ends the request's session; false when it had none.
    pub fn close(&self, headers: &HeaderMap) -> bool {
        let Some(token) = cookie_token(headers) else {
            return false;
        };
        self.by_hash
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&hash(token))
            .is_some()
    }

    /// The caller of a request authenticated by its session cookie: `None` without the cookie;
    /// 401 for an unknown or expired session; 403 for a request but GET/HEAD without the
    /// session's CSRF token.
    pub fn caller(&self, parts: &Parts) -> Option<Result<Caller, ApiError>> {
        let token = cookie_token(&parts.headers)?;
        let now = Instant::now();
        let mut sessions = self.by_hash.lock().unwrap_or_else(PoisonError::into_inner);
        let key = hash(token);
        let Some(session) = sessions.get_mut(&key) else {
            return Some(Err(ApiError::Unauthorized));
        };
        if !self.alive(session, now) {
            sessions.remove(&key);
            return Some(Err(ApiError::Unauthorized));
        }
        if !matches!(parts.method, Method::GET | Method::HEAD) && !csrf_ok(&parts.headers, session)
        {
            return Some(Err(ApiError::Forbidden(
                "a console request but GET needs the session's x-csrf-token header",
            )));
        }
        session.seen = now;
        Some(Ok(session.caller.clone()))
    }

    /// Whether a request but GET carries the CSRF token of the session its cookie names.
    pub fn csrf_ok(&self, headers: &HeaderMap) -> bool {
        let Some(token) = cookie_token(headers) else {
            return false;
        };
        let sessions = self.by_hash.lock().unwrap_or_else(PoisonError::into_inner);
        sessions
            .get(&hash(token))
            .is_some_and(|session| csrf_ok(headers, session))
    }

    fn alive(&self, session: &Session, now: Instant) -> bool {
        now.duration_since(session.seen) < self.idle
            && now.duration_since(session.created) < self.absolute
    }

    fn view(&self, session: &Session, now: Instant) -> SessionView {
        SessionView {
            organisation: session.caller.organisation.to_string(),
            csrf_token: session.csrf.clone(),
            idle_timeout_secs: self.idle.as_secs(),
            expires_in_secs: self
                .absolute
                .saturating_sub(now.duration_since(session.created))
                .as_secs(),
        }
    }
}

/// Compares hashes, so that the time taken does not tell how much of a guess was right.
fn csrf_ok(headers: &HeaderMap, session: &Session) -> bool {
    headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|sent| hash(sent) == hash(&session.csrf))
}

fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderValue, Request};

    use super::*;

    fn caller() -> Caller {
        Caller {
            organisation: "acme".into(),
            key_name: "console".into(),
        }
    }

    fn parts(method: Method, token: &str, csrf: Option<&str>) -> Parts {
        let mut request = Request::builder()
            .method(method)
            .uri("/v1/forms")
            .header(header::COOKIE, format!("other=1; {COOKIE}={token}"));
        if let Some(csrf) = csrf {
            request = request.header(CSRF_HEADER, HeaderValue::from_str(csrf).expect("ascii"));
        }
        request.body(()).expect("request").into_parts().0
    }

    #[test]
    fn a_session_authenticates_gets_and_needs_its_csrf_token_for_the_rest() {
        let sessions = Sessions::new(Duration::from_secs(60), Duration::from_secs(600));
        let (token, view) = sessions.open(caller(), "key");
        assert_eq!(view.organisation, "acme");
        let headers = parts(Method::GET, &token, None).headers;
        assert_eq!(sessions.api_key(&headers).as_deref(), Some("key"));
        let get = sessions.caller(&parts(Method::GET, &token, None));
        assert_eq!(get.and_then(Result::ok), Some(caller()));
        let post = sessions.caller(&parts(Method::POST, &token, None));
        assert!(matches!(post, Some(Err(ApiError::Forbidden(_)))));
        let wrong = sessions.caller(&parts(Method::PUT, &token, Some("0123")));
        assert!(matches!(wrong, Some(Err(ApiError::Forbidden(_)))));
        let right = sessions.caller(&parts(Method::PUT, &token, Some(&view.csrf_token)));
        assert_eq!(right.and_then(Result::ok), Some(caller()));
        let unknown = sessions.caller(&parts(Method::GET, "not-a-session", None));
        assert!(matches!(unknown, Some(Err(ApiError::Unauthorized))));
        let none = Request::get("/v1/forms").body(()).expect("request");
        assert!(sessions.caller(&none.into_parts().0).is_none());
    }

    #[test]
    fn sessions_end_when_idle_too_long_or_too_old_and_at_logout() {
        let idle = Sessions::new(Duration::ZERO, Duration::from_secs(600));
        let (token, _) = idle.open(caller(), "key");
        assert!(matches!(
            idle.caller(&parts(Method::GET, &token, None)),
            Some(Err(ApiError::Unauthorized))
        ));
        let old = Sessions::new(Duration::from_secs(600), Duration::ZERO);
        let (token, _) = old.open(caller(), "key");
        assert!(
            old.current(&parts(Method::GET, &token, None).headers)
                .is_none()
        );
        let sessions = Sessions::new(Duration::from_secs(60), Duration::from_secs(600));
        let (token, _) = sessions.open(caller(), "key");
        let headers = parts(Method::DELETE, &token, None).headers;
        assert!(sessions.close(&headers));
        assert!(matches!(
            sessions.caller(&parts(Method::GET, &token, None)),
            Some(Err(ApiError::Unauthorized))
        ));
    }
}
