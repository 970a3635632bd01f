//! A client of the intake's HTTP API (README "HTTP API"), the one that `erasure submit`,
//! `erasure status`, `erasure receipt`, the benchmark and the tests call the intake through.
//!
//! Each operation builds a [`Call`], which either [`Call::send`]s for the typed answer of its
//! success status or returns the raw [`Reply`] whatever the status ([`Call::reply`]), as tests
//! that probe refusals need. A new operation is one method returning a `Call` of its answer.

use std::marker::PhantomData;

use reqwest::{RequestBuilder, StatusCode};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::{
    contract::{Accepted, StatusDocument},
    intake::{CANCEL_PATH, ERASE_PATH, JWKS_PATH, RECEIPT_PATH, STATUS_PATH},
};

/// Installs the process's TLS provider (rustls with ring, as the broker and database
/// connections use) once; every HTTP client of the process needs it before it is built.
pub fn install_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("calling the intake: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("the intake answered {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("the intake's {status} answer is not what the API documents: {source}")]
    Unexpected {
        status: u16,
        source: serde_json::Error,
    },
}

/// The intake at one base URL (`http://host:port`, optionally with a path prefix).
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str) -> Self {
        install_tls();
        Self::with_http(base, reqwest::Client::new())
    }

    /// With a configured `reqwest` client (connection pool size, timeouts).
    pub fn with_http(base: &str, http: reqwest::Client) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            http,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `DELETE /api/public/bot/eraseUsersData`: `202` and the request id. The body is any
    /// JSON, so that tests can send what the intake must refuse.
    pub fn erase<B: Serialize + ?Sized>(&self, token: &str, body: &B) -> Call<Accepted> {
        Call::new(
            self.http
                .delete(format!("{}{ERASE_PATH}", self.base))
                .header("auth", token)
                .json(body),
            StatusCode::ACCEPTED,
        )
    }

    /// `GET /api/public/bot/eraseUsersData/status/{requestId}`: `200` and the status document.
    pub fn status(&self, token: &str, request_id: &str) -> Call<StatusDocument> {
        self.get_of_request(STATUS_PATH, token, request_id)
    }

    /// `GET /api/public/bot/eraseUsersData/{requestId}/receipt`: `200` and the signed receipt.
    pub fn receipt(&self, token: &str, request_id: &str) -> Call<Jose> {
        self.get_of_request(RECEIPT_PATH, token, request_id)
    }

    /// `POST /api/public/bot/eraseUsersData/{requestId}/cancel`: `200` and the status document.
    pub fn cancel(&self, token: &str, request_id: &str) -> Call<StatusDocument> {
        let path = CANCEL_PATH.replace("{request_id}", &path_segment(request_id));
        Call::new(
            self.http
                .post(format!("{}{path}", self.base))
                .header("auth", token),
            StatusCode::OK,
        )
    }

    /// An authenticated `GET` of `template` naming one request, `200` on success.
    fn get_of_request<T>(&self, template: &str, token: &str, request_id: &str) -> Call<T> {
        let path = template.replace("{request_id}", &path_segment(request_id));
        Call::new(
            self.http
                .get(format!("{}{path}", self.base))
                .header("auth", token),
            StatusCode::OK,
        )
    }

    /// `GET /.well-known/jwks.json`: the keys that verify receipts.
    pub fn jwks(&self) -> Call<Value> {
        Call::new(
            self.http.get(format!("{}{JWKS_PATH}", self.base)),
            StatusCode::OK,
        )
    }
}

/// The answer of a call whose body is a compact JWS (`application/jose`), not JSON: read it
/// with [`Call::text`].
pub enum Jose {}

/// One prepared call whose success answer is a `T`.
#[must_use = "a call does nothing until it is sent"]
pub struct Call<T> {
    request: RequestBuilder,
    success: StatusCode,
    answer: PhantomData<fn() -> T>,
}

impl<T> Call<T> {
    fn new(request: RequestBuilder, success: StatusCode) -> Self {
        Self {
            request,
            success,
            answer: PhantomData,
        }
    }

    /// The body of the success answer as text (for answers that are not JSON); any other
    /// status is [`Error::Refused`].
    pub async fn text(self) -> Result<String, Error> {
        let success = self.success.as_u16();
        let reply = self.reply().await?;
        if reply.status != success {
            return Err(Error::Refused {
                status: reply.status,
                body: reply.body,
            });
        }
        Ok(reply.body)
    }

    /// The answer as it came, whatever its status; an error only if there was no answer.
    pub async fn reply(self) -> Result<Reply, Error> {
        let response = self.request.send().await?;
        let status = response.status().as_u16();
        let body = response.text().await?;
        Ok(Reply { status, body })
    }
}

impl<T: DeserializeOwned> Call<T> {
    /// The typed answer of the operation's success status; any other status is
    /// [`Error::Refused`] with the intake's body (`{"errors": [...]}`).
    pub async fn send(self) -> Result<T, Error> {
        let success = self.success.as_u16();
        let body = self.text().await?;
        serde_json::from_str(&body).map_err(|source| Error::Unexpected {
            status: success,
            source,
        })
    }
}

impl Call<Accepted> {
    /// A retried call with the same key gets the first call's answer.
    pub fn idempotency_key(mut self, key: &str) -> Self {
        self.request = self.request.header("Idempotency-Key", key);
        self
    }
}

/// An answer of the intake, as it came.
#[derive(Clone, Debug)]
pub struct Reply {
    status: u16,
    body: String,
}

impl Reply {
    pub fn status(&self) -> u16 {
        self.status
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn text(&self) -> &str {
        &self.body
    }

    /// The body as JSON; `Null` when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// A request id as one path segment: every byte but RFC 3986's unreserved ones
/// percent-encoded, so that an id holding `/`, `?` or `#` still names one request.
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_id_stays_one_path_segment() {
        assert_eq!(path_segment("eud-0a1b_2.c~"), "eud-0a1b_2.c~");
        assert_eq!(path_segment("a/b?c#d"), "a%2Fb%3Fc%23d");
        assert_eq!(path_segment("not-an-id'--"), "not-an-id%27--");
        assert_eq!(path_segment("é"), "%C3%A9");
    }

    #[test]
    fn the_base_url_loses_its_trailing_slash() {
        assert_eq!(
            Client::new("http://127.0.0.1:8080/").base(),
            "http://127.0.0.1:8080"
        );
    }
}
