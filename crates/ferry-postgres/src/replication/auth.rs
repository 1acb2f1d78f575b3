//! Startup and authentication of a replication connection.
//!
//! StartupMessage with `replication=database` and [`SESSION_OPTIONS`], then
//! whichever method the server asks for: trust (AuthenticationOk at once),
//! cleartext, MD5 or SCRAM-SHA-256 (`n,,` — no channel binding; the server
//! accepts that even when it also offers `-PLUS`). Then ParameterStatus /
//! BackendKeyData until ReadyForQuery.

use ferry_core::Error;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::frontend;

use super::error::{ServerError, classify};
use super::{ReplicationConnection, SESSION_OPTIONS};

pub(crate) async fn startup(
    conn: &mut ReplicationConnection,
    dbname: &str,
    password: Option<&str>,
) -> Result<(), Error> {
    let user = conn.user.clone();
    let params = [
        ("user", user.as_str()),
        ("database", dbname),
        ("replication", "database"),
        ("application_name", "ferry"),
        ("options", SESSION_OPTIONS),
        ("client_encoding", "UTF8"),
    ];
    frontend::startup_message(params.iter().copied(), &mut conn.wbuf)
        .map_err(|e| Error::transient("encoding startup message").with_source(e))?;
    conn.flush().await?;
    let mut scram: Option<ScramSha256> = None;
    loop {
        let f = conn.read_frame().await?;
        match f.tag {
            b'R' => auth_step(conn, &f.body, password, &mut scram).await?,
            b'E' => return Err(classify(ServerError::parse(&f.body), "connecting", &user)),
            b'Z' => return Ok(()),
            // ParameterStatus (noted by read_frame), BackendKeyData, notices.
            _ => {}
        }
    }
}

fn need_password(user: &str) -> Error {
    Error::operator(
        format!("the source asks for a password for user {user}"),
        "put the password in source.url (postgres://user:password@host/db)",
    )
}

fn protocol_error(what: &str) -> Error {
    Error::transient(format!(
        "source sent a malformed {what} authentication message"
    ))
}

async fn auth_step(
    conn: &mut ReplicationConnection,
    body: &[u8],
    password: Option<&str>,
    scram: &mut Option<ScramSha256>,
) -> Result<(), Error> {
    let user = conn.user.clone();
    let (kind, data) = match body.split_first_chunk::<4>() {
        Some((k, rest)) => (i32::from_be_bytes(*k), rest),
        None => return Err(protocol_error("authentication")),
    };
    let enc =
        |e: std::io::Error| Error::transient("encoding authentication message").with_source(e);
    match kind {
        0 => return Ok(()),
        3 => {
            let pw = password.ok_or_else(|| need_password(&user))?;
            frontend::password_message(pw.as_bytes(), &mut conn.wbuf).map_err(enc)?;
        }
        5 => {
            let pw = password.ok_or_else(|| need_password(&user))?;
            let salt: [u8; 4] = data
                .get(..4)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| protocol_error("MD5"))?;
            let hash = md5_hash(user.as_bytes(), pw.as_bytes(), salt);
            frontend::password_message(hash.as_bytes(), &mut conn.wbuf).map_err(enc)?;
        }
        10 => {
            let offered = data
                .split(|&b| b == 0)
                .any(|m| m == SCRAM_SHA_256.as_bytes());
            if !offered {
                return Err(Error::operator(
                    "the source offers no SASL mechanism ferry supports",
                    "use scram-sha-256, md5 or password authentication for ferry's role in pg_hba.conf",
                ));
            }
            let pw = password.ok_or_else(|| need_password(&user))?;
            let s = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
            frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut conn.wbuf)
                .map_err(enc)?;
            *scram = Some(s);
        }
        11 => {
            let s = scram.as_mut().ok_or_else(|| protocol_error("SASL"))?;
            s.update(data)
                .map_err(|e| protocol_error("SCRAM").with_source(e))?;
            frontend::sasl_response(s.message(), &mut conn.wbuf).map_err(enc)?;
        }
        12 => {
            let s = scram.as_mut().ok_or_else(|| protocol_error("SASL"))?;
            s.finish(data).map_err(|e| {
                Error::operator(
                    format!("the source failed SCRAM server verification for user {user}"),
                    "check that source.url points at the intended server",
                )
                .with_source(e)
            })?;
            return Ok(());
        }
        other => {
            return Err(Error::operator(
                format!("the source asks for an unsupported authentication method ({other})"),
                "use scram-sha-256, md5, password or trust for ferry's role in pg_hba.conf",
            ));
        }
    }
    conn.flush().await
}
