//! Standard Webhooks signing: secrets `whsec_<base64>` and the
//! `webhook-signature` header, `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.
//!
//! The primitives are RustCrypto's `hmac` and `sha2` and the `base64` crate,
//! so that receivers verify with the official `standardwebhooks` libraries.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// What every secret starts with.
pub const SECRET_PREFIX: &str = "whsec_";

/// Bytes of key in a generated secret (the specification asks for 24 to 64).
const GENERATED_KEY_BYTES: usize = 32;

/// The key lengths accepted from a caller, as the specification recommends.
const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// A webhook's signing key. Its `Debug` never shows the key, so that no log
/// line can carry it.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    /// A new random key from the operating system's generator.
    ///
    /// # Errors
    ///
    /// The operating system has no randomness to give.
    pub fn generate() -> Result<SigningKey, String> {
        let mut key = vec![0u8; GENERATED_KEY_BYTES];
        getrandom::fill(&mut key).map_err(|e| format!("no randomness for a secret: {e}"))?;
        Ok(SigningKey(key))
    }

    /// Reads a secret as given by a caller: `whsec_` and the base64 of 24 to
    /// 64 bytes.
    ///
    /// # Errors
    ///
    /// The prefix is missing, the rest is not base64, or the key is too short
    /// or too long; the message says what to send instead.
    pub fn parse(secret: &str) -> Result<SigningKey, String> {
        let Some(encoded) = secret.strip_prefix(SECRET_PREFIX) else {
            return Err(format!(
                "secret must start with {SECRET_PREFIX} followed by base64 (or leave it out and one is generated)"
            ));
        };
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| {
                format!("secret after {SECRET_PREFIX} is not standard base64; send {SECRET_PREFIX}<base64 of 24 to 64 random bytes>")
            })?;
        if !KEY_BYTES.contains(&key.len()) {
            return Err(format!(
                "secret is {} bytes once decoded; send {SECRET_PREFIX}<base64 of 24 to 64 random bytes>",
                key.len()
            ));
        }
        Ok(SigningKey(key))
    }

    /// The secret as shown to its owner and stored: `whsec_<base64>`.
    pub fn to_secret(&self) -> String {
        format!(
            "{SECRET_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(&self.0)
        )
    }

    /// The `webhook-signature` header value for a message: `v1,<base64>`.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC takes a key of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .expect("HMAC-SHA256 accepts any key length");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let tag = mac.finalize().into_bytes();
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(tag)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector of the Standard Webhooks reference libraries.
    #[test]
    fn signs_the_reference_vector() {
        let key = SigningKey::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(
            key.sign(
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1649367553,
                br#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn secrets_round_trip_and_bad_ones_say_why() {
        let key = SigningKey::generate().unwrap();
        let secret = key.to_secret();
        assert!(secret.starts_with(SECRET_PREFIX));
        assert_eq!(SigningKey::parse(&secret).unwrap(), key);
        assert!(!format!("{key:?}").contains(&secret[SECRET_PREFIX.len()..]));
        for (bad, fragment) in [
            ("C2FVsBQIhrscChlQIMV+b5sSYspob7oD", "must start with whsec_"),
            ("whsec_!!!", "not standard base64"),
            ("whsec_YWJj", "3 bytes"),
        ] {
            let err = SigningKey::parse(bad).unwrap_err();
            assert!(err.contains(fragment), "{bad}: {err}");
        }
    }
}
