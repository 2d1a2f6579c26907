//! Issue 22, the operators' remaining items: `serve --help` shows the
//! server's flags only, with its defaults and environment; the client
//! accepts a token given as the server's `NAME=SECRET`; a request body over
//! the limit gets its 413 instead of a reset (lingering close, SPEC §5).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::support::{aliasd, parse_response, run_cli, Server, TestStore, WAIT};

/// `aliasd serve --help` lists the server's flags with the defaults they
/// resolve to and the environment it reads (`ALIASD_LOG` included), and none
/// of the client's global flags.
#[test]
fn serve_help_shows_the_servers_flags_defaults_and_environment() {
    let home = crate::support::tempdir("aliasd-it-home");
    let home = home.path().to_str().unwrap();
    let out = aliasd()
        .args(["serve", "--help"])
        .env("HOME", home)
        .output()
        .expect("run aliasd");
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    for wanted in [
        "--models",
        "--journal",
        "--listen",
        "--token",
        &format!("{home}/.ollama/models"),
        &format!("{home}/.ollama/aliasd/journal"),
        "OLLAMA_MODELS",
        "ALIASD_JOURNAL",
        "ALIASD_LOG",
        "ALIASD_TOKENS",
    ] {
        assert!(help.contains(wanted), "{wanted} missing from:\n{help}");
    }
    for unwanted in ["--host", "--json", "--auth", "ALIASD_HOST", "ALIASD_TOKEN="] {
        assert!(!help.contains(unwanted), "{unwanted} in:\n{help}");
    }
    // The client's flags are still documented where they apply.
    let out = aliasd()
        .args(["ls", "--help"])
        .output()
        .expect("run aliasd");
    let help = String::from_utf8_lossy(&out.stdout);
    for wanted in ["--host", "--json", "--auth"] {
        assert!(help.contains(wanted), "{wanted} missing from:\n{help}");
    }
}

/// Global flags still go before or after a client subcommand (SPEC §6).
#[test]
fn client_flags_go_before_or_after_the_subcommand() {
    let server = Server::with_models(&["llama3"]);
    server.create("coder", "llama3");
    let host = server.host();
    let after = run_cli(&[], &["ls", "--host", &host, "--json"]);
    let before = run_cli(&["--host", &host, "--json"], &["ls"]);
    for out in [&after, &before] {
        let json = out.json();
        assert_eq!(json["aliases"][0]["alias"], "coder", "{out:?}");
    }
}

/// Issue 22: `--auth NAME=SECRET` (the server's form) works, with one line
/// saying to pass only SECRET; a wrong secret still fails naming `--auth`;
/// `$ALIASD_TOKEN` is read the same way.
#[test]
fn a_token_given_as_name_equals_secret_is_accepted() {
    let server = Server::start_with_args(
        TestStore::with_models(&["llama3"]),
        &["--token", "ci=s3cret", "--read-token", "viewer=look"],
    );
    let host = server.host();
    let out = run_cli(
        &["--host", &host, "--auth", "ci=s3cret"],
        &["create", "coder", "llama3"],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "created coder -> llama3 (active)\n", "{out:?}");
    assert_eq!(
        out.stderr.matches("pass only SECRET").count(),
        1,
        "one hint: {out:?}"
    );
    // The token's NAME is the actor: the request went with ci's secret.
    let history = run_cli(
        &["--host", &host, "--auth", "s3cret", "--json"],
        &["history"],
    );
    let actor = history.json()["events"][0]["actor"].clone();
    assert!(actor.as_str().unwrap().starts_with("ci@"), "{history:?}");
    assert!(
        history.stderr.is_empty(),
        "no hint for a bare secret: {history:?}"
    );

    let out = aliasd()
        .args(["--host", &host, "ls"])
        .env("ALIASD_TOKEN", "viewer=look")
        .output()
        .expect("run aliasd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("pass only SECRET"), "{stderr}");

    for wrong in ["ci=wrong", "wrong", "not a name=s3cret"] {
        let out = run_cli(&["--host", &host, "--auth", wrong], &["ls"]);
        assert_eq!(out.code, Some(1), "{wrong}: {out:?}");
        assert!(out.stderr.contains("--auth"), "{wrong}: {out:?}");
        assert!(!out.stderr.contains("pass only SECRET"), "{wrong}: {out:?}");
    }
}

/// Size of the request bodies sent past the 64 KiB limit.
const BIG_BODY: usize = 4 << 20;
/// Size of each write of a body.
const PIECE: usize = 64 * 1024;

/// How a raw client frames its body.
#[derive(Debug, Clone, Copy)]
enum Framing {
    Length,
    Chunked,
}

/// Sends a `POST /api/aliases` with a 4 MiB body in 64 KiB writes, then
/// reads the answer; every write and the read must succeed (no reset).
fn post_big_body(addr: SocketAddr, framing: Framing) -> Result<Vec<u8>, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    let framing_header = match framing {
        Framing::Length => format!("Content-Length: {BIG_BODY}"),
        Framing::Chunked => "Transfer-Encoding: chunked".to_string(),
    };
    let head = format!(
        "POST /api/aliases HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{framing_header}\r\n\r\n"
    );
    stream
        .write_all(head.as_bytes())
        .map_err(|e| format!("writing the head: {e}"))?;
    let piece = vec![b' '; PIECE];
    for n in 0..BIG_BODY / PIECE {
        let res = match framing {
            Framing::Length => stream.write_all(&piece),
            Framing::Chunked => stream
                .write_all(format!("{PIECE:x}\r\n").as_bytes())
                .and_then(|()| stream.write_all(&piece))
                .and_then(|()| stream.write_all(b"\r\n")),
        };
        res.map_err(|e| format!("writing piece {n} of the body: {e}"))?;
    }
    if let Framing::Chunked = framing {
        stream
            .write_all(b"0\r\n\r\n")
            .map_err(|e| format!("writing the last chunk: {e}"))?;
    }
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("reading the answer ({} bytes read): {e}", raw.len()))?;
    Ok(raw)
}

/// SPEC §5: a body over 64 KiB gets 413 with its JSON body, and the client,
/// still sending, receives it rather than a reset; with Content-Length
/// (answered before the body is read) and chunked (answered past 64 KiB),
/// many times over, since the reset depended on timing.
#[test]
fn an_oversized_body_gets_its_413_not_a_reset() {
    let server = Server::with_models(&["llama3"]);
    for framing in [Framing::Length, Framing::Chunked] {
        for attempt in 0..20 {
            let raw = post_big_body(server.addr(), framing)
                .unwrap_or_else(|e| panic!("{framing:?} attempt {attempt}: {e}"));
            let resp = parse_response(&raw).unwrap_or_else(|| {
                panic!(
                    "{framing:?} attempt {attempt}: {:?}",
                    String::from_utf8_lossy(&raw)
                )
            });
            assert!(
                raw.starts_with(b"HTTP/1.1 413 "),
                "{framing:?} attempt {attempt}: {}",
                String::from_utf8_lossy(&raw)
            );
            resp.expect_error(413, "64 KiB");
        }
    }
    // The server goes on serving.
    server.create("coder", "llama3");
}

/// The discarding is bounded: a client that never stops sending is cut off
/// after a few MiB (or seconds), not read forever.
#[test]
fn a_client_that_never_stops_sending_is_cut_off() {
    let server = Server::with_models(&["llama3"]);
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    let head = format!(
        "POST /api/aliases HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n",
        server.addr(),
        1u64 << 40
    );
    stream.write_all(head.as_bytes()).unwrap();
    let piece = vec![b' '; PIECE];
    let started = Instant::now();
    let mut sent: u64 = 0;
    let error = loop {
        match stream.write_all(&piece) {
            Ok(()) => sent += PIECE as u64,
            Err(e) => break e,
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "still accepted after {sent} bytes and a minute"
        );
    };
    // The linger budget, plus what the kernels' buffers held.
    assert!(
        sent < 256 << 20,
        "cut off only after {sent} bytes ({error})"
    );
}
