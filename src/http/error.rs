//! `ApiError`: the one error type of the HTTP layer, always sent as
//! `{"error": "<message>"}` with the status SPEC §5 gives.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::command::CommandError;
use crate::index::ResolveError;
use crate::registry::RegistryError;

/// An error answered to an HTTP client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The status sent.
    pub status: StatusCode,
    /// A message safe to show.
    pub message: String,
}

impl ApiError {
    /// An error with a status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<CommandError> for ApiError {
    fn from(error: CommandError) -> ApiError {
        let status = command_status(&error);
        ApiError::new(status, error.to_string())
    }
}

fn command_status(error: &CommandError) -> StatusCode {
    match error {
        CommandError::BadName(_) | CommandError::Invalid(_) | CommandError::Cycle(_) => {
            StatusCode::BAD_REQUEST
        }
        CommandError::ShadowsModel(_)
        | CommandError::HasDependents(_)
        | CommandError::Conflict(_) => StatusCode::CONFLICT,
        CommandError::NotFound(_) => StatusCode::NOT_FOUND,
        CommandError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
        CommandError::InBatch { error, .. } => command_status(error),
    }
}

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> ApiError {
        match error {
            RegistryError::Command(e) => e.into(),
            RegistryError::Storage(e) => storage_error(&e),
            RegistryError::Unavailable => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "aliasd is shutting down; retry against the next instance",
            ),
            RegistryError::Store(cause) => {
                tracing::error!("reading the model store failed: {cause}");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "aliasd could not read the model store: nothing was changed; see the server log and retry",
                )
            }
        }
    }
}

/// 507 when the disk is full, 503 for other I/O failures and for a journal
/// changed under the running server (the registry logged that, once); the cause
/// is logged.
pub fn storage_error(error: &crate::log::Error) -> ApiError {
    let error = match error {
        crate::log::Error::Journal(error) => error,
        crate::log::Error::Unavailable(why) => {
            // The log's loss and return are logged once where they are seen,
            // not once per refused request.
            tracing::debug!("write refused: {why}");
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{error}: nothing was changed; retry once it is back"),
            );
        }
        crate::log::Error::Conflict => {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "other nodes kept appending to the fleet log before this write could: nothing \
                 was changed; retry",
            );
        }
    };
    if matches!(error, journal::Error::Tampered { .. }) {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, JOURNAL_TAMPERED);
    }
    tracing::error!("journal write failed: {error}");
    let full = matches!(error, journal::Error::Io { source, .. } if journal::is_disk_full(source));
    if full {
        ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "the journal's disk is full: the change was not made; free some space and retry",
        )
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the journal could not make the change durable: nothing was changed; see the server log and retry",
        )
    }
}

/// What a write is answered once the journal was found deleted, moved or cut
/// under the running server (the registry logged the details, the path included).
const JOURNAL_TAMPERED: &str = "the journal was removed or damaged under the running server: \
     the change was not made, and aliasd accepts no write until it is restarted; restart aliasd \
     (if it then refuses to start, run `aliasd journal repair`)";

impl From<ResolveError> for ApiError {
    fn from(error: ResolveError) -> ApiError {
        ApiError::not_found(error.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        let status = match rejection.status() {
            StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
            status => status,
        };
        ApiError::new(status, rejection.body_text().to_lowercase())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        ApiError::bad_request(rejection.body_text().to_lowercase())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> ApiError {
        ApiError::bad_request(rejection.body_text().to_lowercase())
    }
}

/// Gives an error response without a JSON body (the framework's own 404,
/// 405, 413...) the `{"error"}` shape; other responses pass unchanged.
pub async fn ensure_json(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_lowercase();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    let mut json = ApiError::new(status, message).into_response();
    for (name, value) in parts.headers.iter() {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            json.headers_mut().insert(name.clone(), value.clone());
        }
    }
    json
}
