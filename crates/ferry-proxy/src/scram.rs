//! SCRAM-SHA-256 and SCRAM-SHA-256-PLUS as the server side of PostgreSQL's
//! SASL exchange ([RFC 5802], [RFC 7677], [PostgreSQL SASL]): the proxy
//! authenticates its clients itself, then opens its own backend sessions
//! with the configured credentials, so no client password is ever
//! forwarded.
//!
//! [`Verifier`] holds what the server keeps (salt, iterations, StoredKey,
//! ServerKey — never the password after construction); [`Exchange`] runs one
//! login: `client_first` answers the server-first message, `client_final`
//! checks the channel binding and the proof and answers the server
//! signature.
//!
//! Channel binding is `tls-server-end-point` ([RFC 5929] §4.1), the one
//! type PostgreSQL defines: the binding data is a hash of the proxy's own
//! DER certificate ([`tls_server_end_point`]), SHA-256 when the certificate
//! is signed with MD5, SHA-1 or SHA-256, else the signature's own hash
//! (SHA-384, SHA-512). A man in the middle that terminates TLS with another
//! certificate cannot produce it. What one connection is offered is an
//! [`Offer`], and the rules are those of PostgreSQL's server
//! (`auth-scram.c`):
//!
//! - Over TLS: `SCRAM-SHA-256-PLUS` first, then `SCRAM-SHA-256`. Over plain
//!   TCP, or with a certificate whose signature names no such hash
//!   (Ed25519, Ed448, RSA-PSS, SHA-224): `SCRAM-SHA-256` only.
//! - `SCRAM-SHA-256-PLUS` takes the gs2 header `p=tls-server-end-point,,`
//!   only (another type is refused), and the client-final `c=` must be that
//!   header followed by the binding data, else the login fails.
//! - `SCRAM-SHA-256` takes `n`, and `y` (the client could bind but thinks
//!   the server cannot) only when `-PLUS` was not offered: after an offer,
//!   `y` means someone stripped it on the way, a downgrade, refused. `p=`
//!   with `SCRAM-SHA-256` is refused.
//! - An authorization identity in the gs2 header is refused.
//!
//! No error carries the password; the proof and the binding are compared
//! in constant time.
//!
//! [RFC 5802]: https://www.rfc-editor.org/rfc/rfc5802
//! [RFC 5929]: https://www.rfc-editor.org/rfc/rfc5929#section-4.1
//! [RFC 7677]: https://www.rfc-editor.org/rfc/rfc7677
//! [PostgreSQL SASL]: https://www.postgresql.org/docs/current/sasl-authentication.html

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::{digest, hmac, pbkdf2, rand::SecureRandom};

/// PostgreSQL's default iteration count.
pub const ITERATIONS: u32 = 4096;
pub const MECHANISM: &str = "SCRAM-SHA-256";
pub const MECHANISM_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// The channel binding type of `SCRAM-SHA-256-PLUS`.
pub const BINDING_TYPE: &str = "tls-server-end-point";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("client selected an invalid SASL authentication mechanism")]
    Mechanism,
    #[error("unsupported SCRAM channel-binding type")]
    BindingType,
    #[error("SCRAM channel binding negotiation error: {0}")]
    Negotiation(&'static str),
    #[error("SCRAM channel binding check failed")]
    BindingCheck,
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

/// What the server offers one connection: `SCRAM-SHA-256-PLUS` when it
/// has `tls-server-end-point` data, and `SCRAM-SHA-256` always.
#[derive(Debug, Clone, Default)]
pub struct Offer {
    end_point: Option<Vec<u8>>,
}

impl Offer {
    /// Plain TCP: no channel binding.
    pub fn plain() -> Offer {
        Offer::default()
    }

    /// TLS with the server certificate `cert_der` (the leaf the TLS
    /// handshake presented); no `-PLUS` when its hash is unknown
    /// ([`tls_server_end_point`]).
    pub fn tls(cert_der: &[u8]) -> Offer {
        Offer {
            end_point: tls_server_end_point(cert_der),
        }
    }

    /// Whether `SCRAM-SHA-256-PLUS` is offered.
    pub fn binds(&self) -> bool {
        self.end_point.is_some()
    }

    /// The mechanisms for AuthenticationSASL, in order of preference.
    pub fn mechanisms(&self) -> &'static [&'static str] {
        if self.binds() {
            &[MECHANISM_PLUS, MECHANISM]
        } else {
            &[MECHANISM]
        }
    }
}

/// The binding data `tls-server-end-point` defines for the server
/// certificate `cert_der` ([RFC 5929] §4.1): the certificate hashed with
/// the hash of its signature algorithm, SHA-256 for MD5 and SHA-1. `None`
/// when the DER is not one certificate, or its signature is not RSA
/// (PKCS#1 v1.5) with MD5, SHA-1, SHA-256, SHA-384 or SHA-512, nor ECDSA
/// with SHA-1, SHA-256, SHA-384 or SHA-512: Ed25519 has no hash, RSA-PSS
/// keeps it in parameters, ring has no SHA-224. Then `-PLUS` is not
/// offered.
///
/// [RFC 5929]: https://www.rfc-editor.org/rfc/rfc5929#section-4.1
pub fn tls_server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    let algorithm = end_point_digest(cert_der)?;
    Some(digest::digest(algorithm, cert_der).as_ref().to_vec())
}

/// DER tags read below.
const SEQUENCE: u8 = 0x30;
const OBJECT_IDENTIFIER: u8 = 0x06;

/// Signature algorithm OIDs (their DER contents) and the hash
/// `tls-server-end-point` takes for them.
static SIGNATURE_DIGESTS: [(&[u8], &digest::Algorithm); 9] = [
    // md5WithRSAEncryption, 1.2.840.113549.1.1.4
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x04],
        &digest::SHA256,
    ),
    // sha1WithRSAEncryption, 1.2.840.113549.1.1.5
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05],
        &digest::SHA256,
    ),
    // sha256WithRSAEncryption, 1.2.840.113549.1.1.11
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b],
        &digest::SHA256,
    ),
    // sha384WithRSAEncryption, 1.2.840.113549.1.1.12
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c],
        &digest::SHA384,
    ),
    // sha512WithRSAEncryption, 1.2.840.113549.1.1.13
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d],
        &digest::SHA512,
    ),
    // ecdsa-with-SHA1, 1.2.840.10045.4.1
    (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01], &digest::SHA256),
    // ecdsa-with-SHA256, 1.2.840.10045.4.3.2
    (
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02],
        &digest::SHA256,
    ),
    // ecdsa-with-SHA384, 1.2.840.10045.4.3.3
    (
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],
        &digest::SHA384,
    ),
    // ecdsa-with-SHA512, 1.2.840.10045.4.3.4
    (
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],
        &digest::SHA512,
    ),
];

/// The hash for a certificate: `Certificate ::= SEQUENCE { tbsCertificate
/// SEQUENCE, signatureAlgorithm SEQUENCE { algorithm OID, .. },
/// signatureValue }` ([RFC 5280] §4.1), read no further than the OID.
///
/// [RFC 5280]: https://www.rfc-editor.org/rfc/rfc5280#section-4.1
fn end_point_digest(cert_der: &[u8]) -> Option<&'static digest::Algorithm> {
    let (SEQUENCE, certificate, []) = der_element(cert_der)? else {
        return None;
    };
    let (SEQUENCE, _tbs, rest) = der_element(certificate)? else {
        return None;
    };
    let (SEQUENCE, algorithm, _signature) = der_element(rest)? else {
        return None;
    };
    let (OBJECT_IDENTIFIER, oid, _parameters) = der_element(algorithm)? else {
        return None;
    };
    SIGNATURE_DIGESTS
        .iter()
        .find(|(known, _)| *known == oid)
        .map(|(_, algorithm)| *algorithm)
}

/// One DER element: its tag, its contents and the bytes after it. `None`
/// when truncated, or for what DER does not allow here: multi-byte tags,
/// indefinite lengths, lengths of more than four bytes.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, rest) = rest.split_at(n);
        let len = bytes.iter().try_fold(0usize, |acc, b| {
            acc.checked_mul(256)?.checked_add(usize::from(*b))
        })?;
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (contents, after) = rest.split_at(len);
    Some((tag, contents, after))
}

/// One SCRAM login in progress.
#[derive(Debug)]
pub struct Exchange {
    nonce: String,
    client_first_bare: String,
    server_first: String,
    /// What the client-final `c=` must decode to: the gs2 header, then the
    /// binding data when the client chose `-PLUS`.
    binding: Vec<u8>,
}

impl Exchange {
    /// Read the client-first message of a client that chose `mechanism`
    /// from `offer`; the server-first message to send.
    pub fn client_first(
        verifier: &Verifier,
        offer: &Offer,
        mechanism: &str,
        message: &[u8],
    ) -> Result<(Exchange, String), ScramError> {
        let chosen = match mechanism {
            MECHANISM => None,
            MECHANISM_PLUS => Some(offer.end_point.as_deref().ok_or(ScramError::Mechanism)?),
            _ => return Err(ScramError::Mechanism),
        };
        let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("utf-8"))?;
        let (flag, rest) = text
            .split_once(',')
            .ok_or(ScramError::Malformed("gs2 header"))?;
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("gs2 header"))?;
        let data = gs2_binding(flag, chosen, offer.binds())?;
        if !authzid.is_empty() {
            return Err(ScramError::Malformed(
                "authorization identity not supported",
            ));
        }
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
        let mut binding = format!("{flag},,").into_bytes();
        binding.extend_from_slice(data);
        Ok((
            Exchange {
                nonce,
                client_first_bare: bare.to_owned(),
                server_first: server_first.clone(),
                binding,
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
        let binding = binding
            .and_then(|c| B64.decode(c).ok())
            .ok_or(ScramError::Malformed("channel binding"))?;
        if !equal_in_constant_time(&binding, &self.binding) {
            return Err(ScramError::BindingCheck);
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

/// The binding data the gs2 flag of a client-first message commits to
/// (empty without binding). `chosen` is the binding data when the client
/// chose `SCRAM-SHA-256-PLUS`; `offered` whether it was offered.
fn gs2_binding<'a>(
    flag: &str,
    chosen: Option<&'a [u8]>,
    offered: bool,
) -> Result<&'a [u8], ScramError> {
    match (flag, flag.strip_prefix("p="), chosen) {
        ("n" | "y", _, Some(_)) => Err(ScramError::Negotiation(
            "the client selected SCRAM-SHA-256-PLUS without channel binding data",
        )),
        ("n", _, None) => Ok(&[]),
        ("y", _, None) if !offered => Ok(&[]),
        ("y", _, None) => Err(ScramError::Negotiation(
            "the client supports channel binding but thinks the server does not, and this server offered it",
        )),
        (_, Some(_), None) => Err(ScramError::Negotiation(
            "the client selected SCRAM-SHA-256 but sent channel binding data",
        )),
        (_, Some(BINDING_TYPE), Some(data)) => Ok(data),
        (_, Some(_), Some(_)) => Err(ScramError::BindingType),
        (_, None, _) => Err(ScramError::Malformed("gs2 header")),
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

    const PASSWORD: &str = "s3cret";

    /// ECDSA P-384 signed with ecdsa-with-SHA384: `openssl req -x509
    /// -newkey ec -pkeyopt ec_paramgen_curve:secp384r1 -sha384 -nodes`.
    const P384_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBvDCCAUKgAwIBAgIUZRT0JCi0wQq9eGL7cjBhm8HqZ7MwCgYIKoZIzj0EAwMw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTIwNDE5MjY0MVoYDzIxMjYxMTEw
MTkyNjQxWjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwdjAQBgcqhkjOPQIBBgUrgQQA
IgNiAATi/1GCoDrdg0wnMJqiqNmgZ/6CsyOHqW7kKJ959I2nJx4QDw/YEjivUhak
SeW/rDPfmGp0qbsU2aI8CqzXrz3ltijhpyOOLbgph8j4iaobW54C58R+mzuI097W
kX87MCOjUzBRMB0GA1UdDgQWBBSyAuJQ4xrPIEe20+FbqCN2NEhHFzAfBgNVHSME
GDAWgBSyAuJQ4xrPIEe20+FbqCN2NEhHFzAPBgNVHRMBAf8EBTADAQH/MAoGCCqG
SM49BAMDA2gAMGUCMQCMaKk/INJMu8BxQBjw1O4JZtELqrnu/tdE++NvR1ruT7/A
FgMkf5cvfkIXNRExYpECME5rXBeL2W7IsR2Z8HEtfezN1u3VWFtqbXJfv85shnVB
JmY3J+PZKX9oJDfP4gq2IA==
-----END CERTIFICATE-----
";
    /// Its `openssl x509 -noout -fingerprint -sha384`.
    const P384_SHA384: &str = "9efc9f22661a15fe04c6dbd77052100ffc0eb4a422e7753839c4595f29e4e0cb5d64b15cb459d96c60b33c36a8e57756";

    fn p384_der() -> Vec<u8> {
        let mut pem = P384_CERT.as_bytes();
        rustls_pemfile::certs(&mut pem)
            .next()
            .unwrap()
            .unwrap()
            .to_vec()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Run a login with postgres-protocol's client (the one tokio-postgres
    /// uses), which chose `mechanism` and binds as `binding` says; `Ok`
    /// when the client accepts the server's signature.
    fn login(
        offer: &Offer,
        mechanism: &str,
        binding: ChannelBinding,
        password: &str,
    ) -> Result<(), ScramError> {
        let verifier = Verifier::with_salt(PASSWORD, vec![7; 16], 64);
        let mut client = ScramSha256::new(password.as_bytes(), binding);
        let (exchange, server_first) =
            Exchange::client_first(&verifier, offer, mechanism, client.message())?;
        client
            .update(server_first.as_bytes())
            .expect("the client takes the server-first message");
        let server_final = exchange.client_final(&verifier, client.message())?;
        client
            .finish(server_final.as_bytes())
            .expect("the client accepts the server signature");
        Ok(())
    }

    fn bound(data: &[u8]) -> ChannelBinding {
        ChannelBinding::tls_server_end_point(data.to_vec())
    }

    #[test]
    fn a_real_client_logs_in_with_the_right_password_only() {
        let plain = Offer::plain();
        let none = ChannelBinding::unsupported;
        login(&plain, MECHANISM, none(), PASSWORD).unwrap();
        let e = login(&plain, MECHANISM, none(), "wrong").unwrap_err();
        assert_eq!(e, ScramError::Proof);
        assert!(
            e.to_string().contains("password authentication failed"),
            "{e}"
        );
        // With the random salt and PostgreSQL's iteration count too.
        let verifier = Verifier::new(PASSWORD).unwrap();
        let mut client = ScramSha256::new(PASSWORD.as_bytes(), none());
        let (exchange, server_first) =
            Exchange::client_first(&verifier, &plain, MECHANISM, client.message()).unwrap();
        client.update(server_first.as_bytes()).unwrap();
        let server_final = exchange.client_final(&verifier, client.message()).unwrap();
        client.finish(server_final.as_bytes()).unwrap();
    }

    #[test]
    fn plus_is_offered_over_tls_only_and_first() {
        assert_eq!(Offer::plain().mechanisms(), [MECHANISM]);
        assert_eq!(
            Offer::tls(&p384_der()).mechanisms(),
            [MECHANISM_PLUS, MECHANISM]
        );
        // A certificate without a known hash: no -PLUS.
        assert_eq!(Offer::tls(b"not a certificate").mechanisms(), [MECHANISM]);
    }

    #[test]
    fn a_client_bound_to_the_certificate_logs_in() {
        let der = p384_der();
        let tls = Offer::tls(&der);
        let data = tls_server_end_point(&der).unwrap();
        login(&tls, MECHANISM_PLUS, bound(&data), PASSWORD).unwrap();
        assert_eq!(
            login(&tls, MECHANISM_PLUS, bound(&data), "wrong"),
            Err(ScramError::Proof)
        );
        // Without -PLUS, over TLS, a client that chose not to bind (`n`,
        // libpq's channel_binding=disable).
        login(&tls, MECHANISM, ChannelBinding::unsupported(), PASSWORD).unwrap();
    }

    #[test]
    fn another_certificate_s_binding_is_refused() {
        let der = p384_der();
        let tls = Offer::tls(&der);
        // What a man in the middle with its own certificate would hand
        // the client, and the right certificate with the wrong hash.
        let theirs = digest::digest(&digest::SHA384, b"another certificate");
        let wrong_hash = digest::digest(&digest::SHA256, &der);
        for data in [theirs.as_ref(), wrong_hash.as_ref(), &[]] {
            assert_eq!(
                login(&tls, MECHANISM_PLUS, bound(data), PASSWORD),
                Err(ScramError::BindingCheck)
            );
        }
    }

    #[test]
    fn a_stripped_offer_is_a_downgrade_and_refused() {
        // `y`: the client can bind but was not offered -PLUS. Fine over
        // plain TCP; over TLS the offer was made, so someone removed it.
        let y = ChannelBinding::unrequested;
        login(&Offer::plain(), MECHANISM, y(), PASSWORD).unwrap();
        let e = login(&Offer::tls(&p384_der()), MECHANISM, y(), PASSWORD).unwrap_err();
        assert!(matches!(e, ScramError::Negotiation(_)), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("SCRAM channel binding negotiation error"),
            "{e}"
        );
    }

    #[test]
    fn binding_data_with_the_plain_mechanism_is_refused() {
        let der = p384_der();
        let data = tls_server_end_point(&der).unwrap();
        for offer in [Offer::tls(&der), Offer::plain()] {
            let e = login(&offer, MECHANISM, bound(&data), PASSWORD).unwrap_err();
            assert!(matches!(e, ScramError::Negotiation(_)), "{e:?}");
        }
    }

    #[test]
    fn plus_must_be_offered_and_bind_with_tls_server_end_point() {
        let der = p384_der();
        let data = tls_server_end_point(&der).unwrap();
        let v = Verifier::with_salt(PASSWORD, vec![1; 16], 16);
        let tls = Offer::tls(&der);
        let first = |offer: &Offer, mechanism: &str, message: &[u8]| {
            Exchange::client_first(&v, offer, mechanism, message).map(|_| ())
        };
        assert_eq!(
            login(&Offer::plain(), MECHANISM_PLUS, bound(&data), PASSWORD),
            Err(ScramError::Mechanism)
        );
        assert_eq!(
            first(&tls, "SCRAM-SHA-1", b"n,,n=,r=abc"),
            Err(ScramError::Mechanism)
        );
        assert_eq!(
            first(&tls, MECHANISM_PLUS, b"p=tls-unique,,n=,r=abc"),
            Err(ScramError::BindingType)
        );
        for flag in ["n", "y"] {
            let e = first(&tls, MECHANISM_PLUS, format!("{flag},,n=,r=abc").as_bytes());
            assert!(
                matches!(e, Err(ScramError::Negotiation(_))),
                "{flag}: {e:?}"
            );
        }
        assert!(matches!(
            first(
                &tls,
                MECHANISM_PLUS,
                b"p=tls-server-end-point,a=bob,n=,r=abc"
            ),
            Err(ScramError::Malformed(_))
        ));
        first(&tls, MECHANISM_PLUS, b"p=tls-server-end-point,,n=,r=abc").unwrap();
    }

    #[test]
    fn no_error_carries_the_password() {
        let der = p384_der();
        let tls = Offer::tls(&der);
        let data = tls_server_end_point(&der).unwrap();
        let tries: [(&str, &dyn Fn() -> ChannelBinding); 4] = [
            (MECHANISM_PLUS, &|| bound(b"wrong")),
            (MECHANISM, &ChannelBinding::unrequested),
            (MECHANISM, &|| bound(&data)),
            (MECHANISM_PLUS, &|| bound(&data)),
        ];
        for (mechanism, binding) in tries {
            for password in [PASSWORD, "wrong-pw-here"] {
                if let Err(e) = login(&tls, mechanism, binding(), password) {
                    let text = format!("{e} {e:?}");
                    assert!(
                        !text.contains(PASSWORD) && !text.contains(password),
                        "{text}"
                    );
                }
            }
        }
    }

    #[test]
    fn garbage_is_an_error() {
        let v = Verifier::with_salt("pw", vec![1; 16], 16);
        let plain = Offer::plain();
        for bad in [
            &b""[..],
            b"x",
            b"n,,",
            b"q,,n=,r=abc",
            b"p=tls-server-end-point,,n=,r=abc",
            b"\xff",
        ] {
            assert!(
                Exchange::client_first(&v, &plain, MECHANISM, bad).is_err(),
                "{bad:?}"
            );
        }
        let (ex, _) = Exchange::client_first(&v, &plain, MECHANISM, b"n,,n=,r=abc").unwrap();
        assert!(ex.client_final(&v, b"c=biws,r=abc,p=AAAA").is_err());
        let (ex, _) = Exchange::client_first(&v, &plain, MECHANISM, b"n,,n=,r=abc").unwrap();
        assert!(ex.client_final(&v, b"c=!!,r=abc,p=AAAA").is_err());
        let (ex, sf) = Exchange::client_first(&v, &plain, MECHANISM, b"n,,n=,r=abc").unwrap();
        let nonce = sf.split(',').next().unwrap().trim_start_matches("r=");
        let msg = format!("c=biws,r={nonce},p={}", B64.encode([0u8; 32]));
        assert_eq!(ex.client_final(&v, msg.as_bytes()), Err(ScramError::Proof));
    }

    #[test]
    fn the_end_point_hash_of_a_real_certificate() {
        let data = tls_server_end_point(&p384_der()).unwrap();
        assert_eq!(hex(&data), P384_SHA384);
    }

    /// The DER contents of a dotted OID, written independently of the
    /// table above.
    fn oid(dotted: &str) -> Vec<u8> {
        let arcs: Vec<u64> = dotted.split('.').map(|a| a.parse().unwrap()).collect();
        let mut out = vec![u8::try_from(arcs[0] * 40 + arcs[1]).unwrap()];
        for &arc in &arcs[2..] {
            let mut base128 = vec![(arc & 0x7f) as u8];
            let mut rest = arc >> 7;
            while rest > 0 {
                base128.push((rest & 0x7f) as u8 | 0x80);
                rest >>= 7;
            }
            out.extend(base128.iter().rev());
        }
        out
    }

    fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match contents.len() {
            n @ 0..0x80 => out.push(n as u8),
            n @ 0x80..0x100 => out.extend([0x81, n as u8]),
            n => out.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(contents);
        out
    }

    /// A certificate-shaped DER whose signature algorithm is `oid`.
    fn certificate(oid: &[u8]) -> Vec<u8> {
        let tbs = tlv(SEQUENCE, &[0xa0; 300]);
        let algorithm = tlv(
            SEQUENCE,
            &[tlv(OBJECT_IDENTIFIER, oid), tlv(0x05, &[])].concat(),
        );
        let signature = tlv(0x03, &[0, 1, 2, 3]);
        tlv(SEQUENCE, &[tbs, algorithm, signature].concat())
    }

    #[test]
    fn the_end_point_hash_follows_the_signature_algorithm() {
        let (sha256, sha384, sha512) = (
            Some(&digest::SHA256),
            Some(&digest::SHA384),
            Some(&digest::SHA512),
        );
        let table = [
            ("1.2.840.113549.1.1.4", "md5WithRSAEncryption", sha256),
            ("1.2.840.113549.1.1.5", "sha1WithRSAEncryption", sha256),
            ("1.2.840.113549.1.1.11", "sha256WithRSAEncryption", sha256),
            ("1.2.840.113549.1.1.12", "sha384WithRSAEncryption", sha384),
            ("1.2.840.113549.1.1.13", "sha512WithRSAEncryption", sha512),
            ("1.2.840.10045.4.1", "ecdsa-with-SHA1", sha256),
            ("1.2.840.10045.4.3.2", "ecdsa-with-SHA256", sha256),
            ("1.2.840.10045.4.3.3", "ecdsa-with-SHA384", sha384),
            ("1.2.840.10045.4.3.4", "ecdsa-with-SHA512", sha512),
            ("1.2.840.113549.1.1.14", "sha224WithRSAEncryption", None),
            ("1.2.840.10045.4.3.1", "ecdsa-with-SHA224", None),
            ("1.2.840.113549.1.1.10", "RSASSA-PSS", None),
            ("1.3.101.112", "Ed25519", None),
            ("1.3.101.113", "Ed448", None),
            (
                "1.2.840.113549.1.1.1",
                "rsaEncryption (a key, not a signature)",
                None,
            ),
        ];
        for (dotted, name, expected) in table {
            let der = certificate(&oid(dotted));
            let want = expected.map(|a| digest::digest(a, &der).as_ref().to_vec());
            assert_eq!(tls_server_end_point(&der), want, "{name} ({dotted})");
        }
    }

    #[test]
    fn a_broken_certificate_has_no_end_point() {
        let der = p384_der();
        for n in 0..der.len() {
            assert_eq!(tls_server_end_point(&der[..n]), None, "prefix of {n} bytes");
        }
        let mut trailing = der.clone();
        trailing.push(0);
        assert_eq!(tls_server_end_point(&trailing), None);
        let sha256 = oid("1.2.840.10045.4.3.2");
        // Indefinite and five-byte lengths, a multi-byte tag, a wrong tag.
        for bad in [
            [&[0x30, 0x80][..], &certificate(&sha256)[2..]].concat(),
            vec![0x30, 0x85, 0, 0, 0, 0, 1, 0],
            vec![0x3f, 0x01, 0x00],
            [&[0x31][..], &certificate(&sha256)[1..]].concat(),
        ] {
            assert_eq!(tls_server_end_point(&bad), None, "{bad:02x?}");
        }
        assert!(tls_server_end_point(&certificate(&sha256)).is_some());
    }
}
