//! Ollama model names: parsing, normalization and short display.
//!
//! A name is `[host/][namespace/]model[:tag]` with the defaults
//! [`DEFAULT_HOST`], [`DEFAULT_NAMESPACE`] and [`DEFAULT_TAG`] (SPEC §2).
//! [`ModelName::parse`] is the only way to build a [`ModelName`] from user input,
//! and [`ModelName::from_manifest_rel_path`] the only way to build one from the
//! model store; both validate every part. So a `ModelName` is proof of a valid
//! name, and [`ModelName::manifest_rel_path`] can never point outside the store.
//!
//! A `ModelName` keeps the spelling it was given (for display and for its file
//! path) and compares, hashes and orders by [`ModelName::key`], the lowercase
//! fully qualified form, because Ollama's names are case-insensitive.
//!
//! Prefix aliases (SPEC §3) are not names: [`is_valid_prefix`] validates one and
//! [`matches_prefix`] applies it to a name as the user typed it.
//!
//! Architecture invariant: this module is pure. It does no I/O and is not async.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

/// The host a name has when none is given.
pub const DEFAULT_HOST: &str = "registry.ollama.ai";
/// The namespace a name has when none is given.
pub const DEFAULT_NAMESPACE: &str = "library";
/// The tag a name has when none is given.
pub const DEFAULT_TAG: &str = "latest";
/// The directory of the model store that holds manifests, first component of
/// every [`ModelName::manifest_rel_path`].
pub const MANIFESTS_DIR: &str = "manifests";

/// The longest host, in characters.
const MAX_HOST_LEN: usize = 255;
/// The longest namespace, model or tag, in characters.
const MAX_PART_LEN: usize = 80;
/// The longest fully qualified name: three separators and four parts.
const MAX_NAME_LEN: usize = MAX_HOST_LEN + 3 * MAX_PART_LEN + 3;

/// A valid Ollama model name, fully qualified, in the spelling it was given.
///
/// Equality, hashing and ordering use [`ModelName::key`], so `Llama3` and
/// `llama3:latest` are the same name. Serializes as its [`display`](Self::display)
/// form and deserializes through [`ModelName::parse`].
#[derive(Clone)]
pub struct ModelName {
    /// `host/namespace/model:tag` in the spelling given.
    spelled: Arc<str>,
    /// Invariant: `spelled` in lowercase, computed once because every
    /// comparison and hash uses it; the same allocation as `spelled` when that
    /// is already lowercase (the common case), so a name costs one allocation.
    key: Arc<str>,
    /// Byte offsets in `spelled`: the `/` after the host, the `/` after the
    /// namespace, and the `:` before the tag. Names are at most 498 bytes.
    host_end: u16,
    namespace_end: u16,
    model_end: u16,
}

impl ModelName {
    /// Parses `[host/][namespace/]model[:tag]`, filling in the defaults.
    ///
    /// The tag is what follows the last `:` after the last `/`, so a host may
    /// carry a port (`localhost:5000/ns/m:tag`).
    ///
    /// # Errors
    ///
    /// A [`ParseError`] naming the bad part: an empty input, an `@digest`
    /// reference, a `/` at either end, more than three `/`-separated parts, or a
    /// part that is empty, too long, contains `..` or a character its part does
    /// not allow (spaces, control characters, backslashes, non-ASCII, ...).
    pub fn parse(s: &str) -> Result<ModelName, ParseError> {
        if s.is_empty() {
            return Err(ParseError::Empty);
        }
        if s.contains('@') {
            return Err(ParseError::Digest { name: clip(s) });
        }
        if s.starts_with('/') {
            return Err(ParseError::LeadingSlash { name: clip(s) });
        }
        if s.ends_with('/') {
            return Err(ParseError::TrailingSlash { name: clip(s) });
        }

        // '/' and ':' are ASCII, so these byte offsets are char boundaries.
        let last_part_start = s.rfind('/').map_or(0, |slash_idx| slash_idx + 1);
        let (path, tag) = match s[last_part_start..].rfind(':') {
            Some(colon_idx) => {
                let colon_idx = last_part_start + colon_idx;
                (&s[..colon_idx], Some(&s[colon_idx + 1..]))
            }
            None => (s, None),
        };

        let mut parts = path.split('/');
        let (host, namespace, model) =
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(model), None, _, _) => (None, None, model),
                (Some(namespace), Some(model), None, _) => (None, Some(namespace), model),
                (Some(host), Some(namespace), Some(model), None) => {
                    (Some(host), Some(namespace), model)
                }
                _ => {
                    return Err(ParseError::TooManyParts {
                        name: clip(s),
                        count: path.split('/').count(),
                    })
                }
            };

        let name_for_errors = || s.to_owned();
        if let Some(host) = host {
            check_part(Part::Host, host, name_for_errors)?;
        }
        if let Some(namespace) = namespace {
            check_part(Part::Namespace, namespace, name_for_errors)?;
        }
        check_part(Part::Model, model, name_for_errors)?;
        if let Some(tag) = tag {
            check_part(Part::Tag, tag, name_for_errors)?;
        }

        Ok(ModelName::from_valid_parts(
            host.unwrap_or(DEFAULT_HOST),
            namespace.unwrap_or(DEFAULT_NAMESPACE),
            model,
            tag.unwrap_or(DEFAULT_TAG),
        ))
    }

    /// The shortest form (SPEC §2), in the original spelling.
    ///
    /// `host/namespace/model` when the host is not the default, else
    /// `namespace/model` when the namespace is not the default, else `model`;
    /// then `:tag` unless the tag is `latest`. Defaults compare
    /// case-insensitively. Parsing the result gives an equal name.
    pub fn display(&self) -> String {
        let mut out = String::with_capacity(self.spelled.len());
        if !self.host().eq_ignore_ascii_case(DEFAULT_HOST) {
            out.push_str(&self.spelled[..self.namespace_end as usize + 1]);
        } else if !self.namespace().eq_ignore_ascii_case(DEFAULT_NAMESPACE) {
            out.push_str(self.namespace());
            out.push('/');
        }
        out.push_str(self.model());
        if !self.tag().eq_ignore_ascii_case(DEFAULT_TAG) {
            out.push(':');
            out.push_str(self.tag());
        }
        out
    }

    /// The form Ollama's `/api/tags` lists, [`display`](Self::display) with
    /// the tag always written (`llama3:latest`, `me/coder:q4`), so that a
    /// client comparing listed names sees an alias as it sees a model.
    pub fn display_tagged(&self) -> String {
        let mut out = self.display();
        if self.tag().eq_ignore_ascii_case(DEFAULT_TAG) {
            out.push(':');
            out.push_str(self.tag());
        }
        out
    }

    /// The normalized fully qualified form, lowercase, e.g.
    /// `registry.ollama.ai/library/llama3:latest`: the identity of the name,
    /// for maps and comparison.
    pub fn key(&self) -> String {
        self.key.to_string()
    }

    /// The key as a borrowed string, to avoid an allocation in hot paths.
    pub fn key_str(&self) -> &str {
        &self.key
    }

    /// The fully qualified form in the spelling given, `host/namespace/model:tag`.
    pub fn spelled(&self) -> &str {
        &self.spelled
    }

    /// The key as a shared string: cloning it costs no allocation.
    pub fn key_arc(&self) -> Arc<str> {
        self.key.clone()
    }

    /// The host, as given (or the default).
    pub fn host(&self) -> &str {
        &self.spelled[..self.host_end as usize]
    }

    /// The namespace, as given (or the default).
    pub fn namespace(&self) -> &str {
        &self.spelled[self.host_end as usize + 1..self.namespace_end as usize]
    }

    /// The model, as given.
    pub fn model(&self) -> &str {
        &self.spelled[self.namespace_end as usize + 1..self.model_end as usize]
    }

    /// The tag, as given (or the default).
    pub fn tag(&self) -> &str {
        &self.spelled[self.model_end as usize + 1..]
    }

    /// The manifest's path relative to the store root,
    /// `manifests/<host>/<namespace>/<model>/<tag>`, in the original spelling.
    ///
    /// Always exactly five normal components: every part was validated, so none
    /// is empty, `.`, `..` or contains a separator.
    pub fn manifest_rel_path(&self) -> PathBuf {
        [
            MANIFESTS_DIR,
            self.host(),
            self.namespace(),
            self.model(),
            self.tag(),
        ]
        .iter()
        .collect()
    }

    /// The inverse of [`manifest_rel_path`](Self::manifest_rel_path) for a path
    /// relative to the `manifests/` directory: `<host>/<namespace>/<model>/<tag>`.
    ///
    /// Returns `None` unless the path has exactly four normal, UTF-8 components
    /// and each is a valid part of its kind; temporary files such as `.tmp-*`
    /// are therefore never names. The spelling is kept as in the path.
    pub fn from_manifest_rel_path(rel: &Path) -> Option<ModelName> {
        let mut parts = Vec::with_capacity(4);
        for component in rel.components() {
            match component {
                Component::Normal(part) => parts.push(part.to_str()?),
                _ => return None,
            }
        }
        let [host, namespace, model, tag] = parts.as_slice() else {
            return None;
        };
        let name_for_errors = || String::new();
        check_part(Part::Host, host, name_for_errors).ok()?;
        check_part(Part::Namespace, namespace, name_for_errors).ok()?;
        check_part(Part::Model, model, name_for_errors).ok()?;
        check_part(Part::Tag, tag, name_for_errors).ok()?;
        Some(ModelName::from_valid_parts(host, namespace, model, tag))
    }

    /// Builds a name from parts the caller has already validated.
    fn from_valid_parts(host: &str, namespace: &str, model: &str, tag: &str) -> ModelName {
        let host_end = host.len();
        let namespace_end = host_end + 1 + namespace.len();
        let model_end = namespace_end + 1 + model.len();
        // The full form is put together on the stack and copied once into the
        // shared string (a `String` first would be a second allocation); the
        // same buffer is lowercased for the key when the spelling has capitals.
        let mut buffer = [0u8; MAX_NAME_LEN];
        let mut len = 0;
        for (part, separator) in [(host, "/"), (namespace, "/"), (model, ":"), (tag, "")] {
            for piece in [part, separator] {
                buffer[len..len + piece.len()].copy_from_slice(piece.as_bytes());
                len += piece.len();
            }
        }
        let full = &mut buffer[..len];
        let spelled: Arc<str> = Arc::from(ascii(full));
        let key = if full.iter().any(u8::is_ascii_uppercase) {
            full.make_ascii_lowercase();
            Arc::from(ascii(full))
        } else {
            spelled.clone()
        };
        // Parts were validated: at most 255 + 3 * 80 + 3 bytes in all.
        ModelName {
            spelled,
            key,
            host_end: host_end as u16,
            namespace_end: namespace_end as u16,
            model_end: model_end as u16,
        }
    }
}

impl PartialEq for ModelName {
    fn eq(&self, other: &ModelName) -> bool {
        self.key == other.key
    }
}

impl Eq for ModelName {}

impl Hash for ModelName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key.hash(state);
    }
}

impl PartialOrd for ModelName {
    fn partial_cmp(&self, other: &ModelName) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ModelName {
    fn cmp(&self, other: &ModelName) -> Ordering {
        self.key.cmp(&other.key)
    }
}

impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

impl fmt::Debug for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ModelName").field(&&*self.spelled).finish()
    }
}

impl FromStr for ModelName {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<ModelName, ParseError> {
        ModelName::parse(s)
    }
}

impl serde::Serialize for ModelName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.display())
    }
}

impl<'de> serde::Deserialize<'de> for ModelName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<ModelName, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        ModelName::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Which part of a name an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Part {
    /// The registry host, e.g. `registry.ollama.ai` or `localhost:5000`.
    Host,
    /// The namespace, e.g. `library`.
    Namespace,
    /// The model, e.g. `llama3`.
    Model,
    /// The tag, e.g. `latest`.
    Tag,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Host => "host",
            Part::Namespace => "namespace",
            Part::Model => "model",
            Part::Tag => "tag",
        })
    }
}

/// What is wrong with one part of a name, or with a prefix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// Nothing between two separators.
    #[error("is empty")]
    Empty,
    /// Longer than its part allows.
    #[error("is {len} characters long (at most {max})")]
    TooLong {
        /// The length found.
        len: usize,
        /// The longest allowed.
        max: usize,
    },
    /// Contains `..`, which could climb out of the store.
    #[error("contains \"..\" (path traversal)")]
    PathTraversal,
    /// Contains a character its part never allows.
    #[error("contains {0:?}")]
    InvalidChar(char),
    /// Starts with a character allowed only after the first.
    #[error("starts with {0:?} (must start with a letter, digit or '_')")]
    InvalidFirstChar(char),
}

/// Why a string is not a valid name or prefix. The message names the bad part
/// and is safe to show to the user (SPEC §2: a 400 naming the bad part).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The input is empty.
    #[error("invalid name \"\": empty")]
    Empty,
    /// The input is a digest reference (`model@sha256:...`).
    #[error("invalid model name {name:?}: digest references are not allowed")]
    Digest {
        /// The input.
        name: String,
    },
    /// The input starts with `/`.
    #[error("invalid model name {name:?}: leading '/'")]
    LeadingSlash {
        /// The input.
        name: String,
    },
    /// The input ends with `/`.
    #[error("invalid model name {name:?}: trailing '/'")]
    TrailingSlash {
        /// The input.
        name: String,
    },
    /// More than `host/namespace/model`.
    #[error(
        "invalid model name {name:?}: {count} '/'-separated parts \
         (expected [host/][namespace/]model[:tag])"
    )]
    TooManyParts {
        /// The input.
        name: String,
        /// How many parts it has.
        count: usize,
    },
    /// One part is invalid.
    #[error("invalid model name {name:?}: {part} part {value:?} {problem}")]
    Part {
        /// The input (empty when the name came from a file path).
        name: String,
        /// Which part.
        part: Part,
        /// The part as given.
        value: String,
        /// What is wrong with it.
        problem: Problem,
    },
    /// A prefix alias is invalid.
    #[error("invalid prefix {prefix:?}: {problem}")]
    Prefix {
        /// The prefix as given.
        prefix: String,
        /// What is wrong with it.
        problem: Problem,
    },
}

/// Validates a prefix for a prefix alias (SPEC §3, `"prefix_matching": true`)
/// and returns it normalized to lowercase, ready for [`matches_prefix`].
///
/// A prefix is the start of a name as a user would type it, e.g. `myprefix-`
/// or `myorg/`: a non-empty string of the characters names allow
/// (`[A-Za-z0-9_.:/-]`), starting with a letter, digit or `_`, without `..`,
/// and no longer than the longest name. It need not be a valid name itself.
///
/// # Errors
///
/// [`ParseError::Prefix`] naming the problem.
pub fn is_valid_prefix(s: &str) -> Result<String, ParseError> {
    let prefix_error = |problem| ParseError::Prefix {
        prefix: clip(s),
        problem,
    };
    if s.is_empty() {
        return Err(prefix_error(Problem::Empty));
    }
    if s.contains("..") {
        return Err(prefix_error(Problem::PathTraversal));
    }
    if let Some(bad) = s
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '/' | '-')))
    {
        return Err(prefix_error(Problem::InvalidChar(bad)));
    }
    if let Some(first) = s.chars().next().filter(|&c| !is_first_char(c)) {
        return Err(prefix_error(Problem::InvalidFirstChar(first)));
    }
    if s.len() > MAX_NAME_LEN {
        return Err(prefix_error(Problem::TooLong {
            len: s.len(),
            max: MAX_NAME_LEN,
        }));
    }
    Ok(s.to_ascii_lowercase())
}

/// Whether `typed`, a model name exactly as the user typed it (not normalized:
/// `myprefix-foo`, not `registry.ollama.ai/library/myprefix-foo:latest`),
/// begins with `prefix`, case-insensitively.
///
/// `prefix` is meant to come from [`is_valid_prefix`]. A name equal to the
/// prefix matches too.
pub fn matches_prefix(prefix: &str, typed: &str) -> bool {
    typed
        .as_bytes()
        .get(..prefix.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(prefix.as_bytes()))
}

/// Bytes of validated name parts as text (they are ASCII).
fn ascii(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("validated name parts are ASCII")
}

/// Whether `c` may start any part of a name.
fn is_first_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Whether `c` may appear after the first character of a part of kind `part`.
fn is_part_char(part: Part, c: char) -> bool {
    if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
        return true;
    }
    match part {
        Part::Host => matches!(c, '.' | ':'),
        Part::Namespace => false,
        Part::Model | Part::Tag => c == '.',
    }
}

/// Input quoted in error messages is cut to this many characters, so a huge
/// bad name does not come back as a huge error.
const MAX_QUOTED_CHARS: usize = 100;

/// The input as quoted in an error: at most [`MAX_QUOTED_CHARS`] characters.
fn clip(s: &str) -> String {
    match s.char_indices().nth(MAX_QUOTED_CHARS) {
        None => s.to_owned(),
        Some((cut, _)) => format!("{}...", &s[..cut]),
    }
}

/// Whether `value` passes every rule of [`check_part`], in one pass over its
/// bytes. `check_part` asks this first and only works out which rule fails
/// when it says no: the general checks (a substring search for `..`, a walk
/// over chars) cost ten times as much, and a replay parses a name per event.
fn is_plainly_valid(part: Part, value: &str) -> bool {
    let max = match part {
        Part::Host => MAX_HOST_LEN,
        Part::Namespace | Part::Model | Part::Tag => MAX_PART_LEN,
    };
    let bytes = value.as_bytes();
    let Some(&first) = bytes.first() else {
        return false;
    };
    if bytes.len() > max || !is_first_char(char::from(first)) {
        return false;
    }
    let mut after_dot = false;
    for &byte in bytes {
        let dot = byte == b'.';
        // A byte of a multi-byte char is never a part char: `char::from`
        // maps it to a non-ASCII char, which `is_part_char` refuses.
        if (dot && after_dot) || !is_part_char(part, char::from(byte)) {
            return false;
        }
        after_dot = dot;
    }
    true
}

/// Checks one part against its rules (SPEC §2); `name` builds the whole input
/// for the error message, only when there is an error.
fn check_part(part: Part, value: &str, name: impl Fn() -> String) -> Result<(), ParseError> {
    if is_plainly_valid(part, value) {
        return Ok(());
    }
    check_part_rule_by_rule(part, value, name)
}

/// [`check_part`] one rule at a time, in the order SPEC gives them, so that
/// the error names the first rule broken.
fn check_part_rule_by_rule(
    part: Part,
    value: &str,
    name: impl Fn() -> String,
) -> Result<(), ParseError> {
    let part_error = |problem| ParseError::Part {
        name: clip(&name()),
        part,
        value: clip(value),
        problem,
    };
    let max = match part {
        Part::Host => MAX_HOST_LEN,
        Part::Namespace | Part::Model | Part::Tag => MAX_PART_LEN,
    };
    if value.is_empty() {
        return Err(part_error(Problem::Empty));
    }
    if value.contains("..") {
        return Err(part_error(Problem::PathTraversal));
    }
    if let Some(bad) = value.chars().find(|&c| !is_part_char(part, c)) {
        return Err(part_error(Problem::InvalidChar(bad)));
    }
    if let Some(first) = value.chars().next().filter(|&c| !is_first_char(c)) {
        return Err(part_error(Problem::InvalidFirstChar(first)));
    }
    // Only ASCII is left, so bytes are characters.
    if value.len() > max {
        return Err(part_error(Problem::TooLong {
            len: value.len(),
            max,
        }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::hash_map::DefaultHasher;

    use proptest::prelude::*;

    /// Parses `input` and compares `"<full form> | <display>"`, or the error
    /// message, with `expected`.
    fn check(input: &str, expected: &str) {
        let actual = match ModelName::parse(input) {
            Ok(name) => {
                format!("{} | {}", name.spelled(), name.display())
            }
            Err(err) => err.to_string(),
        };
        assert_eq!(actual, expected, "input: {input:?}");
    }

    /// Validates `input` as a prefix and compares the result or error message.
    fn check_prefix(input: &str, expected: &str) {
        let actual = match is_valid_prefix(input) {
            Ok(prefix) => prefix,
            Err(err) => err.to_string(),
        };
        assert_eq!(actual, expected, "input: {input:?}");
    }

    fn hash_of(name: &ModelName) -> u64 {
        let mut hasher = DefaultHasher::new();
        name.hash(&mut hasher);
        hasher.finish()
    }

    #[test]
    fn parse_valid() {
        check(
            "llama3",
            "registry.ollama.ai/library/llama3:latest | llama3",
        );
        check(
            "registry.ollama.ai/library/llama3:latest",
            "registry.ollama.ai/library/llama3:latest | llama3",
        );
        check(
            "qwen2.5-coder:32b",
            "registry.ollama.ai/library/qwen2.5-coder:32b | qwen2.5-coder:32b",
        );
        check(
            "example.com/library/m:q4",
            "example.com/library/m:q4 | example.com/library/m:q4",
        );
        check("me/m", "registry.ollama.ai/me/m:latest | me/m");
        check(
            "registry.ollama.ai/me/m:v1",
            "registry.ollama.ai/me/m:v1 | me/m:v1",
        );
        check(
            "localhost:5000/ns/m:tag",
            "localhost:5000/ns/m:tag | localhost:5000/ns/m:tag",
        );
        check(
            "localhost:5000/ns/m",
            "localhost:5000/ns/m:latest | localhost:5000/ns/m",
        );
        check("_x/_y:_z", "registry.ollama.ai/_x/_y:_z | _x/_y:_z");
        check(
            "M.1-a_b",
            "registry.ollama.ai/library/M.1-a_b:latest | M.1-a_b",
        );
    }

    #[test]
    fn display_keeps_spelling_and_hides_defaults_case_insensitively() {
        check(
            "Registry.Ollama.AI/Library/Llama3:LATEST",
            "Registry.Ollama.AI/Library/Llama3:LATEST | Llama3",
        );
        check(
            "Me/Coder:Q4",
            "registry.ollama.ai/Me/Coder:Q4 | Me/Coder:Q4",
        );
    }

    #[test]
    fn display_tagged_always_writes_the_tag() {
        let tagged = |s: &str| ModelName::parse(s).unwrap().display_tagged();
        assert_eq!(tagged("coder"), "coder:latest");
        assert_eq!(tagged("Coder:LATEST"), "Coder:LATEST");
        assert_eq!(tagged("me/coder:q4"), "me/coder:q4");
        assert_eq!(
            tagged("example.com/library/m"),
            "example.com/library/m:latest"
        );
    }

    #[test]
    fn parse_invalid_names_the_bad_part() {
        check("", "invalid name \"\": empty");
        check(
            "a b",
            "invalid model name \"a b\": model part \"a b\" contains ' '",
        );
        check(
            "..",
            "invalid model name \"..\": model part \"..\" contains \"..\" (path traversal)",
        );
        check(
            "../etc/passwd",
            "invalid model name \"../etc/passwd\": host part \"..\" contains \"..\" (path traversal)",
        );
        check(
            "m:..",
            "invalid model name \"m:..\": tag part \"..\" contains \"..\" (path traversal)",
        );
        check(
            "a..b",
            "invalid model name \"a..b\": model part \"a..b\" contains \"..\" (path traversal)",
        );
        check(
            ".",
            "invalid model name \".\": model part \".\" starts with '.' (must start with a letter, digit or '_')",
        );
        check(
            "llama3@sha256:abc",
            "invalid model name \"llama3@sha256:abc\": digest references are not allowed",
        );
        check(
            "@sha256:abc",
            "invalid model name \"@sha256:abc\": digest references are not allowed",
        );
        check("/m", "invalid model name \"/m\": leading '/'");
        check("m/", "invalid model name \"m/\": trailing '/'");
        check(
            "a/b/c/d",
            "invalid model name \"a/b/c/d\": 4 '/'-separated parts (expected [host/][namespace/]model[:tag])",
        );
    }

    #[test]
    fn parse_invalid_parts() {
        check(
            "ns//m",
            "invalid model name \"ns//m\": namespace part \"\" is empty",
        );
        check("m:", "invalid model name \"m:\": tag part \"\" is empty");
        check(":t", "invalid model name \":t\": model part \"\" is empty");
        check(
            "ns/:t",
            "invalid model name \"ns/:t\": model part \"\" is empty",
        );
        check(
            "a\\b",
            "invalid model name \"a\\\\b\": model part \"a\\\\b\" contains '\\\\'",
        );
        check(
            "a\u{7}",
            "invalid model name \"a\\u{7}\": model part \"a\\u{7}\" contains '\\u{7}'",
        );
        check(
            "a\nb",
            "invalid model name \"a\\nb\": model part \"a\\nb\" contains '\\n'",
        );
        check(
            "café",
            "invalid model name \"café\": model part \"café\" contains 'é'",
        );
        check(
            "a.b/m",
            "invalid model name \"a.b/m\": namespace part \"a.b\" contains '.'",
        );
        check(
            "h:1/n/m:t:u",
            "invalid model name \"h:1/n/m:t:u\": model part \"m:t\" contains ':'",
        );
        check(
            "-m",
            "invalid model name \"-m\": model part \"-m\" starts with '-' (must start with a letter, digit or '_')",
        );
        check(
            ".tmp-123",
            "invalid model name \".tmp-123\": model part \".tmp-123\" starts with '.' (must start with a letter, digit or '_')",
        );
        let long = "m".repeat(81);
        check(
            &long,
            &format!("invalid model name \"{long}\": model part \"{long}\" is 81 characters long (at most 80)"),
        );
        check(
            &"m".repeat(80),
            &format!(
                "registry.ollama.ai/library/{0}:latest | {0}",
                "m".repeat(80)
            ),
        );
        let long_host = "h".repeat(256);
        check(
            &format!("{long_host}/n/m"),
            &format!("invalid model name \"{0}...\": host part \"{0}...\" is 256 characters long (at most 255)", "h".repeat(100)),
        );
    }

    #[test]
    fn equality_is_case_insensitive_and_spelling_is_kept() {
        let a = ModelName::parse("Llama3").unwrap();
        let b = ModelName::parse("registry.ollama.ai/library/llama3:latest").unwrap();
        assert_eq!(a, b);
        assert_eq!(hash_of(&a), hash_of(&b));
        assert_eq!(a.cmp(&b), Ordering::Equal);
        assert_eq!(a.key(), "registry.ollama.ai/library/llama3:latest");
        assert_eq!(a.model(), "Llama3");
        assert_ne!(a, ModelName::parse("llama3:8b").unwrap());
    }

    #[test]
    fn manifest_paths() {
        let name = ModelName::parse("Me/Coder:Q4").unwrap();
        assert_eq!(
            name.manifest_rel_path(),
            Path::new("manifests/registry.ollama.ai/Me/Coder/Q4")
        );
        let back =
            ModelName::from_manifest_rel_path(Path::new("registry.ollama.ai/Me/Coder/Q4")).unwrap();
        assert_eq!(back.namespace(), "Me");
        assert_eq!(back, name);

        for bad in [
            "registry.ollama.ai/library/m",
            "registry.ollama.ai/library/m/latest/extra",
            "registry.ollama.ai/library/m/.tmp-latest",
            "registry.ollama.ai/library/../latest",
            "registry.ollama.ai/./m/latest",
            "/registry.ollama.ai/library/m/latest",
            "registry.ollama.ai/library/m b/latest",
            "registry.ollama.ai/lib.rary/m/latest",
        ] {
            assert_eq!(
                ModelName::from_manifest_rel_path(Path::new(bad)),
                None,
                "{bad}"
            );
        }
    }

    #[test]
    fn serde_uses_display_form() {
        let name = ModelName::parse("registry.ollama.ai/Me/Coder:latest").unwrap();
        let json = serde_json::to_string(&name).unwrap();
        assert_eq!(json, "\"Me/Coder\"");
        let back: ModelName = serde_json::from_str(&json).unwrap();
        assert_eq!(back, name);
        let err = serde_json::from_str::<ModelName>("\"a b\"").unwrap_err();
        assert!(
            err.to_string().contains("model part \"a b\" contains ' '"),
            "{err}"
        );
        let parsed: ModelName = "me/m:1".parse().unwrap();
        assert_eq!(parsed.to_string(), "me/m:1");
    }

    #[test]
    fn prefixes() {
        check_prefix("myprefix-", "myprefix-");
        check_prefix("MyOrg/", "myorg/");
        check_prefix("localhost:5000/", "localhost:5000/");
        check_prefix("", "invalid prefix \"\": is empty");
        check_prefix("a b", "invalid prefix \"a b\": contains ' '");
        check_prefix(
            "a..",
            "invalid prefix \"a..\": contains \"..\" (path traversal)",
        );
        check_prefix("a@", "invalid prefix \"a@\": contains '@'");
        check_prefix(
            "/x",
            "invalid prefix \"/x\": starts with '/' (must start with a letter, digit or '_')",
        );
        check_prefix(
            "-x",
            "invalid prefix \"-x\": starts with '-' (must start with a letter, digit or '_')",
        );

        assert!(matches_prefix("myprefix-", "MyPrefix-foo"));
        assert!(matches_prefix("myprefix-", "myprefix-"));
        assert!(!matches_prefix("myprefix-", "myprefix"));
        assert!(!matches_prefix("myprefix-", "library/myprefix-foo"));
        // Comparing bytes cannot split a character and panic.
        assert!(!matches_prefix("ab", "aé"));
    }

    /// Strategy for a valid name as a user might type it, with or without each
    /// optional part, in mixed case.
    fn valid_name() -> impl Strategy<Value = String> {
        let no_dots = |s: &String| !s.contains("..");
        let host = prop_oneof![
            Just("registry.ollama.ai".to_owned()),
            Just("REGISTRY.Ollama.AI".to_owned()),
            "[A-Za-z0-9_][A-Za-z0-9_.:-]{0,20}".prop_filter("no ..", no_dots),
        ];
        let namespace = prop_oneof![
            Just("library".to_owned()),
            Just("Library".to_owned()),
            "[A-Za-z0-9_][A-Za-z0-9_-]{0,10}",
        ];
        let model = "[A-Za-z0-9_][A-Za-z0-9_.-]{0,10}".prop_filter("no ..", no_dots);
        let tag = prop_oneof![
            Just("latest".to_owned()),
            Just("LaTeSt".to_owned()),
            "[A-Za-z0-9_][A-Za-z0-9_.-]{0,10}".prop_filter("no ..", no_dots),
        ];
        (0..3usize, host, namespace, model, proptest::option::of(tag)).prop_map(
            |(n_prefix_parts, host, namespace, model, tag)| {
                let mut s = match n_prefix_parts {
                    0 => model,
                    1 => format!("{namespace}/{model}"),
                    _ => format!("{host}/{namespace}/{model}"),
                };
                if let Some(tag) = tag {
                    s.push(':');
                    s.push_str(&tag);
                }
                s
            },
        )
    }

    /// Flips the case of the characters selected by `mask`.
    fn flip_case(s: &str, mask: &[bool]) -> String {
        s.chars()
            .zip(mask.iter().cycle())
            .map(|(c, &flip)| match (flip, c.is_ascii_lowercase()) {
                (false, _) => c,
                (true, true) => c.to_ascii_uppercase(),
                (true, false) => c.to_ascii_lowercase(),
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The one-pass check agrees with the rule-by-rule one.
        #[test]
        fn plain_check_agrees_with_the_rules(
            s in prop_oneof!["[a-zA-Z0-9_.:/@ -]{0,12}", any::<String>(), "[a.]{0,300}"],
        ) {
            for part in [Part::Host, Part::Namespace, Part::Model, Part::Tag] {
                let by_rules = check_part_rule_by_rule(part, &s, String::new).is_ok();
                prop_assert_eq!(is_plainly_valid(part, &s), by_rules, "{:?} {:?}", part, s);
            }
        }

        #[test]
        fn parse_never_panics(s in any::<String>()) {
            let _ = ModelName::parse(&s);
            let _ = is_valid_prefix(&s);
        }

        #[test]
        fn parse_never_panics_on_name_like_input(s in "[a-zA-Z0-9_.:/@ \\\\-]{0,40}") {
            if let Ok(name) = ModelName::parse(&s) {
                let rel = name.manifest_rel_path();
                prop_assert!(rel.components().all(|c| matches!(c, Component::Normal(_))));
                prop_assert_eq!(rel.components().count(), 5);
            }
        }

        #[test]
        fn display_round_trips(s in valid_name()) {
            let name = ModelName::parse(&s).unwrap();
            let again = ModelName::parse(&name.display()).unwrap();
            prop_assert_eq!(again.key(), name.key());
            prop_assert_eq!(&again, &name);
            prop_assert_eq!(again.display(), name.display());
        }

        #[test]
        fn equality_and_hash_are_case_insensitive(
            s in valid_name(),
            mask in proptest::collection::vec(any::<bool>(), 1..8),
            other in valid_name(),
        ) {
            let name = ModelName::parse(&s).unwrap();
            let flipped = ModelName::parse(&flip_case(&s, &mask)).unwrap();
            prop_assert_eq!(&name, &flipped);
            prop_assert_eq!(hash_of(&name), hash_of(&flipped));
            prop_assert_eq!(name.cmp(&flipped), Ordering::Equal);

            let other = ModelName::parse(&other).unwrap();
            let same_ignoring_case = name.key().eq_ignore_ascii_case(&other.key());
            prop_assert_eq!(name == other, same_ignoring_case);
            if name == other {
                prop_assert_eq!(hash_of(&name), hash_of(&other));
            }
        }

        #[test]
        fn manifest_rel_path_is_safe_and_round_trips(s in valid_name()) {
            let name = ModelName::parse(&s).unwrap();
            let rel = name.manifest_rel_path();
            prop_assert!(!rel.is_absolute());
            let components: Vec<Component<'_>> = rel.components().collect();
            prop_assert_eq!(components.len(), 5);
            prop_assert_eq!(components[0], Component::Normal(MANIFESTS_DIR.as_ref()));
            prop_assert!(components.iter().all(|c| matches!(c, Component::Normal(_))));

            let inside = rel.strip_prefix(MANIFESTS_DIR).unwrap();
            let back = ModelName::from_manifest_rel_path(inside).unwrap();
            prop_assert_eq!(&back, &name);
            prop_assert_eq!(back.manifest_rel_path(), rel);
        }
    }
}
