//! SHA-256 digests in the spellings Ollama uses.
//!
//! A manifest's digest is `sha256:<64 lowercase hex>` of the manifest file's
//! bytes, exactly as stored (SPEC §4, `digest`); a blob's file name is
//! `sha256-<64 hex>` (SPEC §1). This module is pure: it hashes bytes it is given.

use sha2::{Digest as _, Sha256};

/// The prefix of every digest string this module returns from [`manifest_digest`].
pub const SHA256_PREFIX: &str = "sha256:";

/// Returns the SHA-256 of `bytes` as 64 lowercase hex characters.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Returns the digest of a manifest file's bytes, `sha256:<64 hex>`.
///
/// Hash the bytes exactly as they are on disk: two manifests with the same
/// JSON content but different formatting have different digests, as in Ollama.
pub fn manifest_digest(bytes: &[u8]) -> String {
    format!("{SHA256_PREFIX}{:x}", Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &[u8], expected: &str) {
        assert_eq!(manifest_digest(input), expected, "input: {input:?}");
        assert_eq!(
            sha256_hex(input),
            expected.trim_start_matches(SHA256_PREFIX)
        );
    }

    #[test]
    fn known_vectors() {
        // FIPS 180-2 test vectors.
        check(
            b"",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        );
        check(
            b"abc",
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        );
    }
}
