//! Ollama's experimental alias routes, same shapes: `/api/experimental/aliases`.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::command::{DeleteAlias, PutAlias};
use crate::http::{ApiError, AppJson, AppState, RequestOrigin};
use crate::registry::Command;

/// An alias in Ollama's shape.
#[derive(Debug, Serialize, Deserialize)]
pub struct ExperimentalAlias {
    alias: String,
    target: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    prefix_matching: bool,
}

/// `GET /api/experimental/aliases`.
pub async fn aliases_list(State(state): State<AppState>) -> Json<serde_json::Value> {
    // Copied out under the lock (shared strings); sorted and formatted after it.
    let entries: Vec<crate::index::AliasEntry> = state
        .registry
        .read(|s| s.index.entries().cloned().collect());
    let mut aliases: Vec<ExperimentalAlias> = entries
        .iter()
        .map(|e| ExperimentalAlias {
            alias: e.alias.display(),
            target: e.target.display(),
            prefix_matching: e.alias.is_prefix(),
        })
        .collect();
    aliases.sort_by_cached_key(|a| a.alias.to_lowercase());
    Json(serde_json::json!({ "aliases": aliases }))
}

/// `POST /api/experimental/aliases`: create or retarget.
pub async fn alias_create(
    State(state): State<AppState>,
    RequestOrigin(origin): RequestOrigin,
    AppJson(body): AppJson<ExperimentalAlias>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let put = PutAlias {
        alias: body.alias,
        target: body.target,
        prefix_matching: body.prefix_matching,
        if_match: None,
        if_none_match: false,
    };
    match state.registry.execute(Command::Put(put), origin).await? {
        crate::registry::Reply::Put { entry, .. } => Ok(Json(serde_json::json!({
            "alias": entry.alias.display(),
            "target": entry.target.display(),
        }))),
        other => {
            tracing::error!("unexpected reply from the registry: {other:?}");
            Err(ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal error",
            ))
        }
    }
}

/// The body of `DELETE /api/experimental/aliases`.
#[derive(Debug, Deserialize)]
pub struct DeleteBody {
    alias: String,
}

/// `DELETE /api/experimental/aliases`.
pub async fn alias_delete(
    State(state): State<AppState>,
    RequestOrigin(origin): RequestOrigin,
    AppJson(body): AppJson<DeleteBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let delete = DeleteAlias {
        alias: body.alias,
        if_match: None,
    };
    state
        .registry
        .execute(Command::Delete(delete), origin)
        .await?;
    Ok(Json(serde_json::json!({ "deleted": true })))
}
