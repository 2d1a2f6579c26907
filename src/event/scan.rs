//! A fast reader for the one JSON shape replay reads most: a [`StateChange`] in
//! the compact form [`Event::encode`](super::Event::encode) writes.
//!
//! It handles exactly that form (no whitespace, no escape or control
//! character anywhere, `seq` as plain digits, every other value a string,
//! `null` or a boolean) and gives up on anything else, returning
//! `None`; the caller then asks serde_json, which decides. So it never
//! accepts what serde_json would refuse, nor reads a value differently:
//! the property tests below hold it to that. Replaying a million events,
//! serde_json's general reader was half of the decoding thread's time.

use std::borrow::Cow;

use super::{EventType, StateChange};

/// Reads `json` (the payload after its version byte) as a [`StateChange`], or
/// `None` when it is not in the simple form.
pub(super) fn change(json: &[u8]) -> Option<StateChange<'_>> {
    // Validated once, so that every string sliced at a quote below is text.
    let text = std::str::from_utf8(json).ok()?;
    // No escape and no control character anywhere, so that in a string the
    // first quote ends it. A full fold, not a search that stops early: the
    // compiler vectorizes it.
    let escaped = json
        .iter()
        .fold(false, |found, &b| found | (b == b'\\') | (b < 0x20));
    if escaped {
        return None;
    }
    let mut scan = Scan { text, at: 0 };
    scan.expect(b'{')?;
    let (mut seq, mut time, mut kind, mut alias) = (None, None, None, None);
    let (mut target, mut digest, mut prefix, mut node) = (None, None, None, None);
    if scan.peek()? == b'}' {
        return None;
    }
    loop {
        let key = scan.plain_string()?;
        scan.expect(b':')?;
        match key {
            "seq" => once(&mut seq, scan.digits()?)?,
            "time" => once(&mut time, scan.plain_string()?)?,
            "type" => once(&mut kind, EventType::parse(scan.plain_string()?)?)?,
            "alias" => once(&mut alias, scan.plain_string()?)?,
            "target" => once(&mut target, scan.nullable_string()?)?,
            "digest" => once(&mut digest, scan.nullable_string()?)?,
            "prefix_matching" => once(&mut prefix, scan.boolean()?)?,
            "node" => once(&mut node, scan.nullable_string()?)?,
            _ => scan.skip_scalar()?,
        }
        match scan.next()? {
            b',' => continue,
            b'}' => break,
            _ => return None,
        }
    }
    if scan.at != text.len() {
        return None;
    }
    Some(StateChange {
        seq: seq?,
        time: Cow::Borrowed(time?),
        kind: kind?,
        alias: Cow::Borrowed(alias?),
        target: target.flatten().map(Cow::Borrowed),
        digest: digest.flatten().map(Cow::Borrowed),
        prefix_matching: prefix?,
        node: node.flatten().map(Cow::Borrowed),
    })
}

/// Fills `slot` with `value`, or gives up if the field was already read:
/// serde_json refuses a duplicate field.
fn once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value);
    Some(())
}

struct Scan<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        let rest = &self.text.as_bytes()[self.at..];
        rest.starts_with(word.as_bytes())
            .then(|| self.at += word.len())
    }

    /// A string, borrowed (the payload has no escapes: see [`change`]).
    fn plain_string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.at;
        let rest = &self.text.as_bytes()[start..];
        let len = memchr::memchr(b'"', rest)?;
        self.at = start + len + 1;
        Some(&self.text[start..start + len])
    }

    fn nullable_string(&mut self) -> Option<Option<&'a str>> {
        if self.peek()? == b'n' {
            self.literal("null")?;
            return Some(None);
        }
        self.plain_string().map(Some)
    }

    fn boolean(&mut self) -> Option<bool> {
        match self.peek()? {
            b't' => self.literal("true").map(|()| true),
            b'f' => self.literal("false").map(|()| false),
            _ => None,
        }
    }

    /// A `u64` written as plain digits, without a leading zero (serde_json
    /// refuses one) and without overflow.
    fn digits(&mut self) -> Option<u64> {
        let bytes = &self.text.as_bytes()[self.at..];
        let len = bytes
            .iter()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(bytes.len());
        if len == 0 || (len > 1 && bytes[0] == b'0') {
            return None;
        }
        let mut value: u64 = 0;
        for &b in &bytes[..len] {
            value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        }
        self.at += len;
        Some(value)
    }

    /// The value of a field replay ignores: a plain string (the id, the
    /// actor), `null` or a boolean. Anything else gives up.
    fn skip_scalar(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.plain_string().map(drop),
            b'n' => self.literal("null"),
            b't' | b'f' => self.boolean().map(drop),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use proptest::prelude::*;

    fn serde_change(json: &[u8]) -> Option<StateChange<'_>> {
        serde_json::from_slice(json).ok()
    }

    fn event(
        alias: String,
        target: Option<String>,
        actor: String,
        request_id: Option<String>,
    ) -> Event {
        Event {
            seq: 42,
            id: crate::event::new_id(),
            time: "2026-11-30T10:00:00.000000Z".into(),
            kind: EventType::AliasUpdated,
            alias,
            target,
            previous_target: Some("old:q4".into()),
            digest: Some(format!("sha256:{}", "b".repeat(64))),
            prefix_matching: true,
            actor,
            request_id,
            node: None,
        }
    }

    #[test]
    fn reads_what_encode_writes() {
        let e = event(
            "coder".into(),
            Some("qwen2.5-coder:32b".into()),
            "anonymous@127.0.0.1:5".into(),
            None,
        );
        let payload = e.encode();
        assert_eq!(change(&payload[1..]), Some(e.change()));
    }

    #[test]
    fn gives_up_on_what_it_does_not_handle() {
        for json in [
            r#"{"seq":1, "time":"t","type":"alias.created","alias":"a","target":null,"digest":null,"prefix_matching":false}"#,
            r#"{"seq":01,"time":"t","type":"alias.created","alias":"a","target":null,"digest":null,"prefix_matching":false}"#,
            r#"{"seq":1,"seq":2,"time":"t","type":"alias.created","alias":"a","target":null,"digest":null,"prefix_matching":false}"#,
            r#"{"seq":1,"time":"t","type":"alias.created","alias":"a","target":null,"target":null,"digest":null,"prefix_matching":false}"#,
            r#"{"seq":1,"time":"t","type":"alias.created","alias":"a\u0062","target":null,"digest":null,"prefix_matching":false}"#,
            r#"{"seq":1,"time":"t","type":"alias.created","alias":"a","target":null,"digest":null,"prefix_matching":false,"x":[1]}"#,
            r#"{"seq":1,"time":"t","type":"alias.created","alias":"a","target":null,"digest":null}"#,
            r#"{"seq":1,"time":"t","type":"alias.created","alias":"a","target":null,"digest":null,"prefix_matching":false}x"#,
            r#"{"seq":18446744073709551616,"time":"t","type":"alias.created","alias":"a","target":null,"digest":null,"prefix_matching":false}"#,
            r#"{}"#,
        ] {
            assert_eq!(change(json.as_bytes()), None, "{json}");
        }
    }

    #[test]
    fn missing_optional_fields_read_as_null_like_serde() {
        let json = br#"{"seq":1,"time":"t","type":"alias.created","alias":"a","digest":null,"prefix_matching":false}"#;
        let fast = change(json).expect("simple form");
        assert_eq!(fast.target, None);
        assert_eq!(Some(fast), serde_change(json));
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9.:/_-]{1,24}",
            any::<String>(),
            "[a\"\\\\\n\u{7f}\u{e9}]{0,6}",
        ]
    }

    proptest! {
        /// Whatever the fields hold, the scanner reads an encoded event as
        /// serde_json does, or gives up.
        #[test]
        fn agrees_with_serde_on_events(
            alias in text(),
            target in proptest::option::of(text()),
            actor in text(),
            request_id in proptest::option::of(text()),
            node in proptest::option::of(text()),
        ) {
            let mut e = event(alias, target, actor, request_id);
            e.node = node;
            let payload = e.encode();
            let json = &payload[1..];
            let expected = serde_change(json).expect("serde reads what it wrote");
            if let Some(fast) = change(json) {
                prop_assert_eq!(fast, expected);
            }
        }

        /// An event without escapes is always read by the fast path.
        #[test]
        fn reads_every_plain_event(
            alias in "[a-z0-9.:/_-]{1,24}",
            actor in "[ -!#-\\[\\]-~]{0,30}",
            node in proptest::option::of("[a-zA-Z0-9_-]{1,16}"),
        ) {
            let mut e = event(alias, Some("m:q4".into()), actor, Some("req-1".into()));
            e.node = node;
            let payload = e.encode();
            prop_assert_eq!(change(&payload[1..]), Some(e.change()));
        }

        /// Damaged payloads: whatever the scanner accepts, serde_json accepts
        /// and reads the same way.
        #[test]
        fn never_accepts_what_serde_refuses(
            cut in 0usize..400,
            flip in 0usize..400,
            byte in any::<u8>(),
        ) {
            let e = event("coder".into(), Some("qwen2.5-coder:32b".into()), "watcher".into(), None);
            let mut json = e.encode()[1..].to_vec();
            let flip = flip % json.len();
            json[flip] = byte;
            json.truncate(cut.max(1).min(json.len()));
            if let Some(fast) = change(&json) {
                prop_assert_eq!(Some(fast), serde_change(&json));
            }
        }
    }
}
