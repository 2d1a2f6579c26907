//! `GET /api/resolve/{name}` answered from kept, rendered answers (issue 18,
//! resolve's budget): an answer is served again only while the index and
//! the models are the ones it was computed from, so every answer equals a
//! fresh resolution, right after a change made over HTTP or seen in the
//! store.

use std::time::Duration;

use serde_json::Value;

use crate::support::{wait_for, Server};

/// The answer to `GET /api/resolve/{name}`, as JSON, or its status and error.
fn resolve(server: &Server, name: &str) -> Result<Value, (u16, String)> {
    let resp = server.get(&format!("/api/resolve/{name}"));
    match resp.status {
        200 => Ok(resp.json.clone()),
        status => Err((status, String::from_utf8_lossy(&resp.body).into_owned())),
    }
}

/// The digest the server reports for model `name` (`GET /api/models`).
fn model_digest(server: &Server, name: &str) -> String {
    let models = server.get("/api/models");
    models.expect(200);
    let list = models.json["models"]
        .as_array()
        .or_else(|| models.json.as_array())
        .cloned()
        .unwrap_or_default();
    list.iter()
        .find(|m| m["name"] == name || m["model"] == name)
        .and_then(|m| m["digest"].as_str())
        .unwrap_or_else(|| panic!("no model {name} in {}", models.json))
        .to_string()
}

#[test]
fn issue18_a_re_pointed_alias_resolves_to_its_new_target_at_once() {
    let server = Server::with_models(&["llama3", "qwen"]);
    let llama3 = model_digest(&server, "llama3");
    let qwen = model_digest(&server, "qwen");
    server.create("coder", "llama3");
    for round in 0..20 {
        let (target, digest) = match round % 2 {
            0 => ("llama3", &llama3),
            _ => ("qwen", &qwen),
        };
        server.put_alias("coder", target).expect(200);
        // Asked twice: the second is the one a kept answer would serve.
        for _ in 0..2 {
            let answer = resolve(&server, "coder").expect("coder resolves");
            assert_eq!(answer["resolved"], target, "round {round}: {answer}");
            assert_eq!(answer["digest"], digest.as_str(), "round {round}: {answer}");
            assert_eq!(answer["chain"], serde_json::json!(["coder", target]));
        }
    }
}

#[test]
fn issue18_an_alias_down_a_chain_changing_changes_the_answer_of_the_chain() {
    let server = Server::with_models(&["llama3", "qwen"]);
    server.create("base", "llama3");
    server.create("coder", "base");
    let before = resolve(&server, "coder").expect("coder resolves");
    assert_eq!(before["resolved"], "llama3");
    assert_eq!(resolve(&server, "coder").unwrap(), before);
    // Only `base` changes; `coder`'s own entry does not.
    server.put_alias("base", "qwen").expect(200);
    let after = resolve(&server, "coder").expect("coder resolves");
    assert_eq!(after["resolved"], "qwen", "{after}");
    assert_eq!(after["chain"], serde_json::json!(["coder", "base", "qwen"]));
    // And back.
    server.put_alias("base", "llama3").expect(200);
    assert_eq!(resolve(&server, "coder").unwrap(), before);
    // The asked alias deleted: no answer, kept or not.
    server.delete("/api/aliases/coder").expect(200);
    let (status, error) = resolve(&server, "coder").expect_err("coder no longer resolves");
    assert_eq!(status, 404, "{error}");
}

#[test]
fn issue18_a_model_removed_from_the_store_or_pulled_again_changes_the_answer() {
    let server = Server::with_models(&["llama3", "qwen"]);
    server.create("coder", "llama3");
    let first = resolve(&server, "coder").expect("coder resolves");
    assert_eq!(resolve(&server, "coder").unwrap(), first);
    // Pulled again (new blobs): the digest of the answer follows the store.
    server.store.add_model_version("llama3", 2);
    let repulled = wait_for(
        "the new llama3 in the answer",
        Duration::from_secs(20),
        || {
            let answer = resolve(&server, "coder").ok()?;
            (answer["digest"] != first["digest"]).then_some(answer)
        },
    );
    assert_eq!(repulled["digest"], model_digest(&server, "llama3").as_str());
    // Removed: dangling, no answer.
    server.store.remove_model("llama3");
    let (status, error) = wait_for("coder dangling", Duration::from_secs(20), || {
        resolve(&server, "coder").err()
    });
    assert_eq!(status, 404, "{error}");
    assert!(error.contains("dangling"), "{error}");
}

#[test]
fn issue18_kept_answers_are_the_same_bytes_as_fresh_ones_for_every_spelling() {
    let server = Server::with_models(&["llama3", "library/qwen:7b"]);
    server.create("team/coder:latest", "llama3");
    server.create("Mixed", "library/qwen:7b");
    for name in [
        "team/coder:latest",
        "team%2Fcoder:latest",
        "team/coder",
        "mixed",
        "MIXED",
        "llama3",
        "qwen:7b",
    ] {
        let first = server.get(&format!("/api/resolve/{name}"));
        let again = server.get(&format!("/api/resolve/{name}"));
        assert_eq!(first.status, again.status, "{name}");
        assert_eq!(first.body, again.body, "{name}");
        assert_eq!(first.header("content-type"), again.header("content-type"));
        assert_ne!(first.header("x-request-id"), again.header("x-request-id"));
        let head = server.request("HEAD", &format!("/api/resolve/{name}"), &[], None);
        assert_eq!(head.status, first.status, "{name}");
        assert!(head.body.is_empty(), "{name}");
    }
    // A name that does not resolve is answered afresh each time, and a
    // bad one is a 400 each time.
    assert_eq!(resolve(&server, "nothing").unwrap_err().0, 404);
    server.create("nothing", "llama3");
    assert_eq!(resolve(&server, "nothing").unwrap()["resolved"], "llama3");
    assert_eq!(resolve(&server, "bad%20name").unwrap_err().0, 400);
    assert_eq!(resolve(&server, "bad%20name").unwrap_err().0, 400);
}
