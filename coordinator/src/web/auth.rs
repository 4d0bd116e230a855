//! Who may see the HTTP surface: with `ALLDOCS_ADMIN_TOKEN` set, every page, its JSON and
//! `/metrics` need the token. Machines send `Authorization: Bearer <token>`; a browser
//! posts it once to the login form and gets a session cookie (HttpOnly, SameSite=Strict),
//! which is a random id, never the token. The token is never put in a URL, a cookie or a
//! log line.

use std::{collections::VecDeque, sync::Mutex};

use axum::http::{header, HeaderMap};
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub const COOKIE: &str = "alldocs_session";

/// Sessions kept at most; the oldest is forgotten past this (its browser logs in again).
const MAX_SESSIONS: usize = 256;

/// How long a session cookie lasts, in seconds.
const SESSION_SECONDS: u64 = 12 * 3600;

/// The token, if one is set, and the sessions logged in with it.
#[derive(Default)]
pub struct Gate {
    token: Option<Vec<u8>>,
    sessions: Mutex<VecDeque<[u8; 32]>>,
}

/// What a request carries.
#[derive(Debug, PartialEq, Eq)]
pub enum Access {
    /// No token is set, or the request carries it (header or session).
    Allowed,
    /// A token is set and the request carries none.
    Missing,
    /// An `Authorization` header with another token.
    Wrong,
}

impl Gate {
    pub fn new(token: Option<&str>) -> Self {
        Self {
            token: token.map(|t| t.as_bytes().to_vec()),
            sessions: Mutex::default(),
        }
    }

    /// Whether a token guards the surface.
    pub fn guarded(&self) -> bool {
        self.token.is_some()
    }

    fn matches(&self, presented: &[u8]) -> bool {
        self.token
            .as_deref()
            .is_some_and(|t| bool::from(presented.ct_eq(t)))
    }

    /// Whether the request may see the surface.
    pub fn check(&self, headers: &HeaderMap) -> Access {
        if self.token.is_none() {
            return Access::Allowed;
        }
        if let Some(auth) = headers.get(header::AUTHORIZATION) {
            let presented = auth.as_bytes().strip_prefix(b"Bearer ").unwrap_or_default();
            return match self.matches(presented) {
                true => Access::Allowed,
                false => Access::Wrong,
            };
        }
        match session_of(headers) {
            Some(id) if self.knows(&id) => Access::Allowed,
            _ => Access::Missing,
        }
    }

    fn knows(&self, id: &[u8; 32]) -> bool {
        let sessions = self.sessions.lock().expect("sessions");
        // Every id is compared whole, so the time taken says nothing of a near miss.
        sessions
            .iter()
            .fold(false, |found, s| found | bool::from(s.ct_eq(id)))
    }

    /// Checks a token posted to the login form; if it is this coordinator's, returns the
    /// `Set-Cookie` value of a new session. `secure`: the browser reached us over https.
    pub fn login(&self, presented: &str, secure: bool) -> Option<String> {
        if !self.matches(presented.as_bytes()) {
            return None;
        }
        let id: [u8; 32] = rand::random();
        let mut sessions = self.sessions.lock().expect("sessions");
        if sessions.len() == MAX_SESSIONS {
            sessions.pop_front();
        }
        sessions.push_back(id);
        Some(format!(
            "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECONDS}{}",
            hex::encode(id),
            if secure { "; Secure" } else { "" }
        ))
    }

    /// Forgets the request's session; returns the `Set-Cookie` value that clears it.
    pub fn logout(&self, headers: &HeaderMap) -> String {
        if let Some(id) = session_of(headers) {
            self.sessions.lock().expect("sessions").retain(|s| s != &id);
        }
        format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
    }
}

/// The session id in the request's cookies, if one is there and well formed.
fn session_of(headers: &HeaderMap) -> Option<[u8; 32]> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .and_then(|(_, value)| hex::decode(value).ok())
        .and_then(|bytes| bytes.try_into().ok())
}

/// Whether the browser reached us over https (directly or through Cloud Run's front end).
pub fn over_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: header::HeaderName, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, value.parse().unwrap());
        h
    }

    #[test]
    fn the_header_or_a_session_lets_a_request_in() {
        let gate = Gate::new(Some("s3cret"));
        assert_eq!(gate.check(&HeaderMap::new()), Access::Missing);
        let bearer = |t: &str| with(header::AUTHORIZATION, &format!("Bearer {t}"));
        assert_eq!(gate.check(&bearer("s3cret")), Access::Allowed);
        assert_eq!(gate.check(&bearer("s3cre")), Access::Wrong);
        assert!(gate.login("nope", false).is_none());
        let cookie = gate.login("s3cret", false).unwrap();
        assert!(!cookie.contains("s3cret"), "{cookie}");
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        assert!(!cookie.contains("Secure"));
        assert!(gate.login("s3cret", true).unwrap().ends_with("; Secure"));
        let pair = cookie.split(';').next().unwrap().to_string();
        let sent = with(header::COOKIE, &format!("theme=dark; {pair}"));
        assert_eq!(gate.check(&sent), Access::Allowed);
        let forged = with(header::COOKIE, &format!("{COOKIE}={}", "ab".repeat(32)));
        assert_eq!(gate.check(&forged), Access::Missing);
        gate.logout(&sent);
        assert_eq!(gate.check(&sent), Access::Missing);
    }

    #[test]
    fn without_a_token_everything_is_open() {
        let gate = Gate::new(None);
        assert!(!gate.guarded());
        assert_eq!(gate.check(&HeaderMap::new()), Access::Allowed);
        assert!(gate.login("", false).is_none());
    }
}
