"""aliasd's inference proxy as the official Python clients see it.

Run by tests/it/proxy_clients.rs against aliasd in front of a stand-in
Ollama, with the aliases coder -> qwen, c2 -> coder, the prefix my- -> qwen
and lost (dangling). ALIASD_URL is that aliasd; ALIASD_GUARDED_URL one that
needs the token ALIASD_GUARDED_TOKEN and has coder -> qwen. Each check
raises on failure; the last line printed is "all checks passed".
"""

import os

import ollama
import openai

URL = os.environ["ALIASD_URL"]
GUARDED_URL = os.environ["ALIASD_GUARDED_URL"]
GUARDED_TOKEN = os.environ["ALIASD_GUARDED_TOKEN"]
HI = [{"role": "user", "content": "hi"}]


def check(what, got, want):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")
    print(f"ok {what}")


def check_ollama():
    client = ollama.Client(host=URL)

    res = client.chat(model="coder", messages=HI)
    check("ollama chat: model", res.model, "coder")
    check("ollama chat: content", res.message.content, "hello")

    parts = list(client.chat(model="c2", messages=HI, stream=True))
    check("ollama chat stream: models", [p.model for p in parts], ["c2", "c2"])
    check("ollama chat stream: content", "".join(p.message.content for p in parts), "hello")
    check("ollama chat stream: done", parts[-1].done, True)

    res = client.generate(model="my-bot", prompt="hi")
    check("ollama generate (prefix alias): model", res.model, "my-bot")
    check("ollama generate: response", res.response, "hello")

    parts = list(client.generate(model="coder", prompt="hi", stream=True))
    check("ollama generate stream: models", [p.model for p in parts], ["coder", "coder"])

    res = client.embed(model="coder", input="x")
    check("ollama embed: model", res.model, "coder")
    check("ollama embed: embeddings", [list(e) for e in res.embeddings], [[0.5, 0.25]])

    listed = {m.model: m for m in client.list().models}
    check(
        "ollama list: names",
        sorted(listed),
        ["c2:latest", "coder:latest", "gone:latest", "other:latest", "qwen:latest"],
    )
    coder, qwen = listed["coder:latest"], listed["qwen:latest"]
    check("ollama list: an alias has its model's digest", coder.digest, qwen.digest)
    check("ollama list: an alias has its model's details", coder.details.family, "stand-in")
    if coder.modified_at == qwen.modified_at:
        raise AssertionError("ollama list: the alias shows its model's modified_at")
    print("ok ollama list: an alias has its own modified_at")

    res = client.show("coder")
    check("ollama show: details", res.details.family, "stand-in")

    try:
        client.chat(model="lost", messages=HI)
        raise AssertionError("ollama chat with a dangling alias did not fail")
    except ollama.ResponseError as e:
        check("ollama dangling: status", e.status_code, 404)
        if "dangling" not in e.error:
            raise AssertionError(f"ollama dangling: {e.error!r}")
        print("ok ollama dangling: message")


def check_openai():
    client = openai.OpenAI(base_url=URL + "/v1", api_key="unused", max_retries=0)

    res = client.chat.completions.create(model="coder", messages=HI)
    check("openai chat: model", res.model, "coder")
    check("openai chat: content", res.choices[0].message.content, "hello")

    chunks = list(client.chat.completions.create(model="c2", messages=HI, stream=True))
    check("openai chat stream: models", {c.model for c in chunks}, {"c2"})
    check(
        "openai chat stream: content",
        "".join(c.choices[0].delta.content or "" for c in chunks),
        "hello",
    )
    check("openai chat stream: finish", chunks[-1].choices[0].finish_reason, "stop")

    ids = [m.id for m in client.models.list()]
    check(
        "openai models.list",
        sorted(ids),
        ["c2:latest", "coder:latest", "gone:latest", "other:latest", "qwen:latest"],
    )

    for asked in ["coder", "c2:latest", "my-bot"]:
        model = client.models.retrieve(asked)
        check(f"openai models.retrieve({asked!r}): id", model.id, asked)
        check(f"openai models.retrieve({asked!r}): owned_by", model.owned_by, "library")

    try:
        client.chat.completions.create(model="lost", messages=HI)
        raise AssertionError("openai chat with a dangling alias did not fail")
    except openai.NotFoundError as e:
        check("openai dangling: status", e.status_code, 404)
        check("openai dangling: type", e.type, "not_found_error")
        if "dangling" not in e.body["message"]:
            raise AssertionError(f"openai dangling: {e.body!r}")
        print("ok openai dangling: message")

    try:
        client.models.retrieve("lost")
        raise AssertionError("openai retrieve of a dangling alias did not fail")
    except openai.NotFoundError as e:
        check("openai retrieve dangling: type", e.type, "not_found_error")

    wrong = openai.OpenAI(base_url=GUARDED_URL + "/v1", api_key="wrong", max_retries=0)
    try:
        wrong.models.list()
        raise AssertionError("openai with a wrong key did not fail")
    except openai.AuthenticationError as e:
        check("openai wrong key: status", e.status_code, 401)
        check("openai wrong key: code", e.code, "invalid_api_key")
        check("openai wrong key: message", e.body["message"], "invalid token")

    right = openai.OpenAI(base_url=GUARDED_URL + "/v1", api_key=GUARDED_TOKEN, max_retries=0)
    check("openai with the token: models", "coder:latest" in [m.id for m in right.models.list()], True)
    res = right.chat.completions.create(model="coder", messages=HI)
    check("openai with the token: chat model", res.model, "coder")


check_ollama()
check_openai()
print("all checks passed")
