//! Stopping the server: a SIGTERM or SIGINT sent the moment it says it is
//! listening is a clean shutdown, never the signal's default action.

use crate::support::{aliasd, tempdir, wait_for, TestStore};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `aliasd serve` on an ephemeral port and sends `signal` as soon as
/// the "listening" line is on stderr, without waiting for a first request:
/// the exit status must be success (a handler ran), not death by the signal.
fn signal_right_after_listening(signal: &str) {
    let store = TestStore::with_models(&["llama3:8b"]);
    let journal = tempdir("aliasd-it-journal");
    let logs = tempdir("aliasd-it-logs");
    let log = logs.path().join("stderr.log");
    let mut child = aliasd()
        .arg("serve")
        .arg("--models")
        .arg(store.root())
        .arg("--journal")
        .arg(journal.path())
        .arg("--listen")
        .arg("127.0.0.1:0")
        .env("ALIASD_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("create log"))
        .spawn()
        .expect("spawn aliasd serve");
    let stderr = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for("the listening line", Duration::from_secs(30), || {
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "aliasd exited before listening:\n{}",
            stderr()
        );
        stderr().contains("listening on http://").then_some(())
    });
    let sent = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -{signal} failed");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "aliasd did not stop within 30 s of SIG{signal}:\n{}",
                stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(
        status.success(),
        "aliasd exited with {status} on SIG{signal} sent right after it said it was listening:\n{}",
        stderr()
    );
    assert!(stderr().contains("shutting down"), "{}", stderr());
}

#[test]
fn a_sigterm_right_after_the_listening_line_is_a_clean_shutdown() {
    for _ in 0..5 {
        signal_right_after_listening("TERM");
    }
}

#[test]
fn a_sigint_right_after_the_listening_line_is_a_clean_shutdown() {
    for _ in 0..3 {
        signal_right_after_listening("INT");
    }
}
