//! The preflight connection honours sslmode against a TLS-enabled server.

use ferry_core::RedactedUrl;
use ferry_core::config::{Endpoint, SslMode};
use ferry_postgres::connect::connect;
use ferry_testkit::{PgOptions, PgServer};

async fn ssl_in_use(
    url: &str,
    mode: SslMode,
    root: Option<std::path::PathBuf>,
) -> Result<bool, ferry_core::Error> {
    let ep = Endpoint {
        url: RedactedUrl::new(url),
        sslmode: Some(mode),
        sslrootcert: root,
    };
    let client = connect(&ep, "source").await?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmodes_against_a_tls_server() {
    let pg = PgServer::start(PgOptions::new().tls(true)).expect("start postgres");
    let ca = pg.ca_cert_path().expect("tls files").to_owned();
    let url = pg.url("postgres");
    assert!(
        ssl_in_use(&url, SslMode::VerifyFull, Some(ca.clone()))
            .await
            .unwrap()
    );
    assert!(
        ssl_in_use(&url, SslMode::VerifyCa, Some(ca.clone()))
            .await
            .unwrap()
    );
    assert!(ssl_in_use(&url, SslMode::Require, None).await.unwrap());
    assert!(ssl_in_use(&url, SslMode::Prefer, None).await.unwrap());
    assert!(!ssl_in_use(&url, SslMode::Disable, None).await.unwrap());

    // A CA that did not sign the server certificate is refused, with the fix.
    let other = tempfile::NamedTempFile::new().unwrap();
    std::fs::copy(pg.tls_files().unwrap().server_cert.clone(), other.path()).unwrap();
    let e = ssl_in_use(&url, SslMode::VerifyFull, Some(other.path().to_owned()))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("sslrootcert"), "{e}");
    assert!(!e.to_string().contains("ferry-secret-pw"), "{e}");

    // A plain server: prefer falls back, require fails with the fix.
    let plain = PgServer::start(PgOptions::new()).expect("start postgres");
    let url = plain.url("postgres");
    assert!(!ssl_in_use(&url, SslMode::Prefer, None).await.unwrap());
    let err = ssl_in_use(&url, SslMode::Require, None).await.unwrap_err();
    assert!(err.to_string().contains("does not offer TLS"), "{err}");
}
