//! The server runs without transparent huge pages (Linux): mimalloc asks
//! for them, and the first touch of one zeroes 2 MiB at once, which stopped
//! the writer thread when the index's tables grew (benches/README.md,
//! "Seventh pass").

use crate::support::Server;

#[test]
#[cfg(target_os = "linux")]
fn the_server_asks_the_kernel_for_no_transparent_huge_pages() {
    let server = Server::with_models(&["llama3:8b"]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid()))
        .expect("the server's /proc status");
    // `THP_enabled` is in every kernel since 5.0; without it this test
    // cannot check anything, so it fails rather than pass unchecked.
    let line = status
        .lines()
        .find(|l| l.starts_with("THP_enabled:"))
        .expect("this kernel's /proc/<pid>/status has no THP_enabled line (Linux 5.0 or later)");
    assert_eq!(
        line.split_whitespace().nth(1),
        Some("0"),
        "the server should have disabled transparent huge pages: {line}"
    );
}
