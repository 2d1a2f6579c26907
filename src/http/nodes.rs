//! `GET /api/nodes` (SPEC §8) and the `nodes` map of an alias in a fleet.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::fleet::nodes::NodeView;
use crate::http::{ApiError, AppState};
use crate::index::{AliasEntry, Index};

/// The body of `GET /api/nodes`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodesBody {
    /// Every node whose record this node has received, sorted by name
    /// (`live: false` once its record expired).
    pub nodes: Vec<NodeView>,
}

/// `GET /api/nodes`: the fleet's nodes. On a single host there is no fleet:
/// 404 saying how to start one.
pub async fn nodes_list(State(state): State<AppState>) -> Result<Json<NodesBody>, ApiError> {
    let Some(table) = state.registry.nodes() else {
        return Err(ApiError::not_found(
            "this aliasd is not in a fleet, so it has no nodes to list; start each host's \
             aliasd with --nats URL to share one registry",
        ));
    };
    let last_seq = state.registry.read(|s| s.index.last_seq());
    Ok(Json(NodesBody {
        nodes: table.list(last_seq),
    }))
}

/// One node's view of an alias in the `nodes` map.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeAliasState {
    /// `active`, `dangling` or `shadowed` on that node.
    pub state: String,
    /// The digest materialized there, if any.
    pub digest: Option<String>,
}

/// The `nodes` map of an alias in a fleet: its state on every node known
/// here (from the node records, and from the log's observations), by name;
/// `None` on a single host.
pub fn nodes_map(
    state: &AppState,
    index: &Index,
    entry: &AliasEntry,
) -> Option<BTreeMap<String, NodeAliasState>> {
    let table = state.registry.nodes()?;
    let mut names: Vec<String> = table.names();
    names.extend(index.reporting_nodes().iter().map(|n| n.to_string()));
    names.push(table.own().to_string());
    Some(
        names
            .into_iter()
            .map(|node| {
                let on = index.state_on(entry, &node);
                let body = NodeAliasState {
                    state: on.state.as_str().to_string(),
                    digest: on.digest.as_deref().map(String::from),
                };
                (node, body)
            })
            .collect(),
    )
}
