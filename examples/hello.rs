//! An axum hello-world server: the anchor that `benches/compare.sh` measures
//! `GET /api/resolve/{name}` against (same framework, same runtime, no work).
//!
//! `cargo run --release --example hello -- 127.0.0.1:19601`

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:19601".to_string());
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await
}
