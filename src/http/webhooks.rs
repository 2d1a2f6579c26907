//! `/api/webhooks` (SPEC §9): create, list, get and delete webhooks, and
//! read a webhook's delivery log. What is delivered, and how, is
//! `crate::webhooks`'; this module maps it to routes and status codes.
//! Mutations need a read-write token: `POST` and `DELETE` are mutating
//! methods for the edge's token check.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use crate::http::PathName;
use crate::http::{ApiError, AppJson, AppState};
use crate::webhooks::{NewWebhook, WebhookError, Webhooks};

/// Body of `POST /api/webhooks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    url: String,
    secret: Option<String>,
    types: Option<Vec<String>>,
    alias: Option<String>,
}

impl From<WebhookError> for ApiError {
    fn from(error: WebhookError) -> ApiError {
        match &error {
            WebhookError::Invalid(_) => ApiError::bad_request(error.to_string()),
            WebhookError::NotFound(_) => ApiError::not_found(error.to_string()),
            WebhookError::TooMany => ApiError::new(StatusCode::CONFLICT, error.to_string()),
            WebhookError::Storage(cause) => {
                tracing::error!("webhook storage failed: {cause}");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "writing the webhook's file beside the journal failed; check the disk and retry",
                )
            }
        }
    }
}

/// The manager, or 503 when this server runs none (an app built without it).
fn manager(state: &AppState) -> Result<&Webhooks, ApiError> {
    state.registry.webhooks().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "webhooks are not running in this server; use aliasd serve",
        )
    })
}

/// `POST /api/webhooks` → 201 with the webhook and, this once, its secret.
pub async fn webhooks_create(
    State(state): State<AppState>,
    AppJson(body): AppJson<CreateWebhook>,
) -> Result<Response, ApiError> {
    let created = manager(&state)?
        .create(NewWebhook {
            url: body.url,
            secret: body.secret,
            types: body.types.unwrap_or_default(),
            alias: body.alias,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// `GET /api/webhooks` → `{"webhooks":[...]}`, oldest first, no secrets.
pub async fn webhooks_list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let webhooks = manager(&state)?.list();
    Ok(Json(serde_json::json!({ "webhooks": webhooks })).into_response())
}

/// `GET /api/webhooks/{id}` → the webhook, no secret.
pub async fn webhook_get(
    State(state): State<AppState>,
    PathName(id): PathName,
) -> Result<Response, ApiError> {
    let webhook = manager(&state)?
        .get(&id)
        .ok_or(WebhookError::NotFound(id))?;
    Ok(Json(webhook).into_response())
}

/// `DELETE /api/webhooks/{id}` → `{"deleted":true,"webhook":{...}}`, the
/// webhook as it was left (`"state":"disabled"`, the cursor it reached);
/// deliveries have stopped when it answers, and later requests for it are 404.
pub async fn webhook_delete(
    State(state): State<AppState>,
    PathName(id): PathName,
) -> Result<Response, ApiError> {
    let webhook = manager(&state)?.delete(&id).await?;
    Ok(Json(serde_json::json!({ "deleted": true, "webhook": webhook })).into_response())
}

/// `GET /api/webhooks/{id}/deliveries` → `{"deliveries":[...]}`, the last
/// attempts, oldest first (kept in memory: empty after a restart).
pub async fn webhook_deliveries(
    State(state): State<AppState>,
    PathName(id): PathName,
) -> Result<Response, ApiError> {
    let deliveries = manager(&state)?
        .deliveries(&id)
        .ok_or(WebhookError::NotFound(id))?;
    Ok(Json(serde_json::json!({ "deliveries": deliveries })).into_response())
}
