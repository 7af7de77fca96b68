//! The management daemon behind `ferrovisor serve`: many VMs, each in its own `ferrovisor run`
//! process driven over its QMP socket; a REST API (axum on hyper/tokio) on a Unix socket by
//! default, optionally on a loopback TCP port; the OpenAPI 3 document generated from this code
//! (utoipa) and committed as `mgmt-api/openapi.json`.
//!
//! Layout: [`model`] (bodies), [`parse`] (pure validation), [`store`] (the data directory, atomic
//! writes), [`daemon`] (the server and the VM processes), [`client`] (a small blocking HTTP client
//! for the CLI and tests), [`openapi`].

pub mod client;
pub mod daemon;
pub mod model;
pub mod openapi;
pub mod parse;
mod qmp;
pub mod store;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use model::ErrorBody;

/// An API error: an HTTP status and a JSON body with a stable code.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The status (4xx for anything the client sent).
    pub status: StatusCode,
    /// The body.
    pub body: ErrorBody,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status.as_u16(), self.body.code, self.body.message)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    /// An error with this status and code.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ApiError { status, body: ErrorBody { code: code.into(), message: message.into() } }
    }
    /// A body that is not the JSON the schema asks for.
    pub fn json(e: &serde_json::Error) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_json", format!("request body: {e}"))
    }
    /// A field with a bad value.
    pub fn field(field: &str, why: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_field", format!("{field}: {why}"))
    }
    /// A malformed id in the path.
    pub fn invalid_id(id: &str) -> Self {
        let shown: String = id.chars().take(80).collect();
        Self::new(StatusCode::BAD_REQUEST, "invalid_id", format!("'{shown}' is not a valid id"))
    }
    /// An unknown VM or snapshot.
    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }
    /// The request does not fit the current state.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    /// A body over the limit.
    pub fn too_large(n: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body of {n} bytes or more is over the {}-byte limit", parse::MAX_BODY),
        )
    }
    /// A failure on the daemon's side.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
    /// The VM process refused or failed a command.
    pub fn vm(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "vm_error", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}
