//! SCRAM-SHA-256 as the server side of PostgreSQL's SASL exchange
//! ([RFC 5802], [RFC 7677], [PostgreSQL SASL]): the proxy authenticates its
//! clients itself, then opens its own backend sessions with the configured
//! credentials, so no client password is ever forwarded.
//!
//! [`Verifier`] holds what the server keeps (salt, iterations, StoredKey,
//! ServerKey — never the password after construction); [`Exchange`] runs one
//! login: `client_first` answers the server-first message, `client_final`
//! checks the proof and answers the server signature. Channel binding is not
//! offered (`SCRAM-SHA-256` only), so a client's gs2 header must be `n` or
//! `y` (a client that could bind but was not offered it).
//!
//! [RFC 5802]: https://www.rfc-editor.org/rfc/rfc5802
//! [RFC 7677]: https://www.rfc-editor.org/rfc/rfc7677
//! [PostgreSQL SASL]: https://www.postgresql.org/docs/current/sasl-authentication.html

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::{digest, hmac, pbkdf2, rand::SecureRandom};

/// PostgreSQL's default iteration count.
pub const ITERATIONS: u32 = 4096;
pub const MECHANISM: &str = "SCRAM-SHA-256";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding was requested but not offered")]
    ChannelBinding,
    #[error("SCRAM nonce mismatch")]
    Nonce,
    #[error("password authentication failed")]
    Proof,
    #[error("no system randomness")]
    Random,
}

/// What the server stores for one login.
#[derive(Clone)]
pub struct Verifier {
    salt: Vec<u8>,
    iterations: u32,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier { .. }")
    }
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

impl Verifier {
    /// Derive the verifier of `password` with a fresh random salt.
    pub fn new(password: &str) -> Result<Verifier, ScramError> {
        let mut salt = vec![0u8; 16];
        ring::rand::SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| ScramError::Random)?;
        Ok(Verifier::with_salt(password, salt, ITERATIONS))
    }

    pub fn with_salt(password: &str, salt: Vec<u8>, iterations: u32) -> Verifier {
        let mut salted = [0u8; 32];
        let n = std::num::NonZeroU32::new(iterations.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
        // SASLprep is the identity for the ASCII passwords operators use;
        // PostgreSQL itself falls back to the raw bytes when prep fails.
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            n,
            &salt,
            password.as_bytes(),
            &mut salted,
        );
        let client_key = hmac_sha256(&salted, b"Client Key");
        let stored_key = digest::digest(&digest::SHA256, &client_key)
            .as_ref()
            .to_vec();
        let server_key = hmac_sha256(&salted, b"Server Key");
        Verifier {
            salt,
            iterations,
            stored_key,
            server_key,
        }
    }
}

/// One SCRAM login in progress.
#[derive(Debug)]
pub struct Exchange {
    nonce: String,
    client_first_bare: String,
    server_first: String,
    gs2_header: String,
}

impl Exchange {
    /// Read the client-first message; the server-first message to send.
    pub fn client_first(
        verifier: &Verifier,
        message: &[u8],
    ) -> Result<(Exchange, String), ScramError> {
        let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("utf-8"))?;
        let (cbind, rest) = text
            .split_once(',')
            .ok_or(ScramError::Malformed("gs2 header"))?;
        match cbind {
            "n" | "y" => {}
            c if c.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("gs2 header")),
        }
        let (_authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("gs2 header"))?;
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty())
            .ok_or(ScramError::Malformed("client nonce"))?;
        let mut ours = [0u8; 18];
        ring::rand::SystemRandom::new()
            .fill(&mut ours)
            .map_err(|_| ScramError::Random)?;
        let nonce = format!("{client_nonce}{}", B64.encode(ours));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&verifier.salt),
            verifier.iterations
        );
        let gs2_header = format!("{},{},", cbind, rest.split_once(',').map_or("", |p| p.0));
        Ok((
            Exchange {
                nonce,
                client_first_bare: bare.to_owned(),
                server_first: server_first.clone(),
                gs2_header,
            },
            server_first,
        ))
    }

    /// Check the client-final message; the server-final message to send.
    pub fn client_final(self, verifier: &Verifier, message: &[u8]) -> Result<String, ScramError> {
        let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("utf-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("proof"))?;
        let mut binding = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(c) = attr.strip_prefix("c=") {
                binding = Some(c);
            } else if let Some(r) = attr.strip_prefix("r=") {
                nonce = Some(r);
            }
        }
        let binding = binding.ok_or(ScramError::Malformed("channel binding"))?;
        if B64.decode(binding).ok().as_deref() != Some(self.gs2_header.as_bytes()) {
            return Err(ScramError::ChannelBinding);
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(ScramError::Nonce);
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof"))?;
        if proof.len() != 32 {
            return Err(ScramError::Proof);
        }
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let signature = hmac_sha256(&verifier.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
        let stored = digest::digest(&digest::SHA256, &client_key);
        if !equal_in_constant_time(stored.as_ref(), &verifier.stored_key) {
            return Err(ScramError::Proof);
        }
        let server_signature = hmac_sha256(&verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

/// Compare secrets without an early exit.
pub fn equal_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    use super::*;

    /// Run a login with postgres-protocol's client (the one tokio-postgres
    /// uses); `Ok` when the client accepts the server's signature.
    fn login(server_pw: &str, client_pw: &str) -> Result<(), String> {
        let verifier = Verifier::new(server_pw).map_err(|e| e.to_string())?;
        let mut client = ScramSha256::new(client_pw.as_bytes(), ChannelBinding::unsupported());
        let (exchange, server_first) =
            Exchange::client_first(&verifier, client.message()).map_err(|e| e.to_string())?;
        client
            .update(server_first.as_bytes())
            .map_err(|e| e.to_string())?;
        let server_final = exchange
            .client_final(&verifier, client.message())
            .map_err(|e| e.to_string())?;
        client
            .finish(server_final.as_bytes())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_real_client_logs_in_with_the_right_password_only() {
        login("s3cret", "s3cret").unwrap();
        let e = login("s3cret", "wrong").unwrap_err();
        assert!(e.contains("password authentication failed"), "{e}");
    }

    #[test]
    fn garbage_is_an_error() {
        let v = Verifier::with_salt("pw", vec![1; 16], 16);
        for bad in [
            &b""[..],
            b"x",
            b"n,,",
            b"p=tls-server-end-point,,n=,r=abc",
            b"\xff",
        ] {
            assert!(Exchange::client_first(&v, bad).is_err(), "{bad:?}");
        }
        let (ex, _) = Exchange::client_first(&v, b"n,,n=,r=abc").unwrap();
        assert!(ex.client_final(&v, b"c=biws,r=abc,p=AAAA").is_err());
        let (ex, sf) = Exchange::client_first(&v, b"n,,n=,r=abc").unwrap();
        let nonce = sf.split(',').next().unwrap().trim_start_matches("r=");
        let msg = format!("c=biws,r={nonce},p={}", B64.encode([0u8; 32]));
        assert_eq!(ex.client_final(&v, msg.as_bytes()), Err(ScramError::Proof));
    }
}
