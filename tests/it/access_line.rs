//! The access line written by the server itself (issue 18, resolve's
//! budget): in the text format it is put together and queued without
//! tracing's subscriber, yet it is the same line as before, and tracing's
//! filter (`ALIASD_LOG`) still decides whether it is written.

use std::time::Duration;

use crate::support::{wait_for, Server, TestStore};

/// The access lines in `log` whose request id is `id`.
fn lines_with_id<'l>(log: &'l str, id: &str) -> Vec<&'l str> {
    log.lines()
        .filter(|l| l.contains("aliasd::access") && l.ends_with(&format!(" request_id={id}")))
        .collect()
}

/// A resolve's access line in the text format: the default format's
/// timestamp (RFC 3339, UTC, to the microsecond), level and target, then
/// the fields in their order, values as they are, the actor's token name.
#[test]
fn the_access_line_keeps_its_shape() {
    let server = Server::builder(TestStore::with_models(&["llama3"]))
        .env("ALIASD_LOG", "info")
        .start();
    server.create("coder", "llama3");
    let resp = server.request(
        "GET",
        "/api/resolve/coder",
        &[("X-Request-Id", "shape-1")],
        None,
    );
    assert_eq!(resp.status, 200, "{resp:?}");
    let log = wait_for("the access line", Duration::from_secs(30), || {
        let log = server.stderr();
        (!lines_with_id(&log, "shape-1").is_empty()).then_some(log)
    });
    let lines = lines_with_id(&log, "shape-1");
    assert_eq!(lines.len(), 1, "{log}");
    let (time, rest) = lines[0].split_once(' ').expect("a timestamp");
    assert_eq!(time.len(), "2026-12-05T01:29:48.123456Z".len(), "{time}");
    assert!(time.ends_with('Z') && time.as_bytes()[19] == b'.', "{time}");
    let rest = rest
        .strip_prefix(
            " INFO aliasd::access: method=GET route=/api/resolve/{*name} status=200 duration_us=",
        )
        .unwrap_or_else(|| panic!("{rest}"));
    let (duration, rest) = rest.split_once(' ').expect("more fields");
    assert!(duration.bytes().all(|b| b.is_ascii_digit()), "{duration}");
    assert_eq!(rest, "actor=anonymous request_id=shape-1");
}

/// `ALIASD_LOG` that turns the access target off leaves the access lines
/// out (and only them): the server asks tracing before it writes one.
#[test]
fn a_filter_that_turns_the_access_target_off_is_obeyed() {
    let mut server = Server::builder(TestStore::with_models(&["llama3"]))
        .env("ALIASD_LOG", "info,aliasd::access=off")
        .start();
    server.create("coder", "llama3");
    for i in 0..20 {
        let id = format!("filtered-{i}");
        let resp = server.request("GET", "/api/resolve/coder", &[("X-Request-Id", &id)], None);
        assert_eq!(resp.status, 200, "{resp:?}");
    }
    server.stop();
    let log = server.stderr();
    assert!(!log.contains("aliasd::access"), "{log}");
    assert!(log.contains("shutting down"), "{log}");
}
