//! TLS and mutual TLS end to end on the real binary, with certificates made
//! in the test: a client certificate from the trusted CA stands in for a
//! token, a client from another CA fails the handshake, tokens work over
//! TLS, plaintext is refused, grpcurl works over TLS with a token, and the
//! handshake timeout bounds the TLS handshake and the HTTP/2 preface.

use crate::common::client::{Client, add_request, connect, connect_to};
use crate::common::raw::closed_after;
use crate::common::tokens::{token_client, tokens_file, with_token};
use crate::common::{ServerProcess, tools};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use points::proto::v1::{GetBalancesRequest, SpendRequest};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tonic::Code;
use tonic::transport::Channel;

/// The certificates of a test PKI as PEM, and the CA's as DER too.
struct Pki {
    ca: String,
    ca_der: CertificateDer<'static>,
    server: (String, String),
    client: (String, String),
    /// Named by a DNS SAN, with another common name.
    san_client: (String, String),
    untrusted_client: (String, String),
}

fn certificate_authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA")
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    common_name: &str,
    purpose: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut params =
        CertificateParams::new(names.iter().map(|name| name.to_string()).collect::<Vec<_>>())
            .expect("params");
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![purpose];
    let certificate = params.signed_by(&key, issuer).expect("sign");
    (certificate.pem(), key.serialize_pem())
}

fn pki() -> Pki {
    let ca = certificate_authority("points test CA");
    let stranger = certificate_authority("some other CA");
    Pki {
        ca: ca.pem(),
        ca_der: ca.der().clone(),
        server: leaf(
            &ca,
            &["localhost", "127.0.0.1"],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
        client: leaf(&ca, &[], "reporting.internal", ExtendedKeyUsagePurpose::ClientAuth),
        san_client: leaf(
            &ca,
            &["billing.internal"],
            "reporting.internal",
            ExtendedKeyUsagePurpose::ClientAuth,
        ),
        untrusted_client: leaf(
            &stranger,
            &[],
            "reporting.internal",
            ExtendedKeyUsagePurpose::ClientAuth,
        ),
    }
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write");
    path
}

/// Starts the binary with TLS, mutual TLS optional, and a tokens file naming
/// a certificate client (read only) and a token client (admin).
fn start_tls_server(dir: &Path, pki: &Pki) -> ServerProcess {
    let reporting = "[[client]]\nname = \"reporting\"\n\
                     certificate_common_name = \"reporting.internal\"\nroles = [\"read\"]\n";
    start_mutual_tls_server(dir, pki, &[reporting.to_owned(), token_client("ops", &["admin"], &[])])
}

/// Starts the binary with TLS, mutual TLS optional, and a tokens file of
/// `clients`.
fn start_mutual_tls_server(dir: &Path, pki: &Pki, clients: &[String]) -> ServerProcess {
    let paths = [
        write(dir, "server.pem", &pki.server.0),
        write(dir, "server.key", &pki.server.1),
        write(dir, "ca.pem", &pki.ca),
        tokens_file(dir, clients),
    ];
    let [cert, key, ca, tokens] = paths.each_ref().map(|path| path.to_str().expect("utf-8 path"));
    ServerProcess::start(&[
        "--tls-cert",
        cert,
        "--tls-key",
        key,
        "--tls-client-ca",
        ca,
        "--tokens-file",
        tokens,
    ])
}

async fn tls_channel(
    server: &ServerProcess,
    pki: &Pki,
    identity: Option<&(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let uri = format!("https://localhost:{}", server.address.port());
    connect(uri).tls(&pki.ca, "localhost", identity).try_channel().await
}

/// mTLS certificates and tokens both work over TLS; roles still apply; an
/// untrusted certificate and plaintext are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mutual_tls_authenticate_clients_end_to_end() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let pki = pki();
    let server = start_tls_server(dir.path(), &pki);

    // A token over server-only TLS.
    let mut ops = Client::new(tls_channel(&server, &pki, None).await.expect("TLS connect"));
    let earn = add_request("", "", "DANNON", 10, "2024-01-01T00:00:00Z");
    ops.add_transaction(with_token(earn.clone(), "ops-token")).await.expect("admin token over TLS");
    let status = ops
        .get_balances(GetBalancesRequest::default())
        .await
        .expect_err("no token, no certificate");
    assert_eq!(status.code(), Code::Unauthenticated);

    // The trusted client certificate stands in for a token, with its roles.
    let mut reporting =
        Client::new(tls_channel(&server, &pki, Some(&pki.client)).await.expect("mTLS connect"));
    let balances =
        reporting.get_balances(GetBalancesRequest::default()).await.expect("read by certificate");
    assert_eq!(balances.into_inner().balances["DANNON"], 10);
    let status = reporting
        .spend(SpendRequest { points: 1, ..Default::default() })
        .await
        .expect_err("read only");
    assert_eq!(status.code(), Code::PermissionDenied);

    // A certificate from another CA fails the handshake: no call gets through.
    let untrusted = match tls_channel(&server, &pki, Some(&pki.untrusted_client)).await {
        Err(_) => None,
        Ok(channel) => Some(Client::new(channel).get_balances(GetBalancesRequest::default()).await),
    };
    assert!(
        !matches!(untrusted, Some(Ok(_))),
        "an untrusted certificate was served: {untrusted:?}"
    );

    // Plaintext against the TLS port gets nowhere.
    let plaintext = match connect_to(server.address).try_channel().await {
        Err(_) => None,
        Ok(channel) => Some(
            Client::new(channel)
                .get_balances(with_token(GetBalancesRequest::default(), "ops-token"))
                .await,
        ),
    };
    assert!(!matches!(plaintext, Some(Ok(_))), "plaintext was served: {plaintext:?}");
}

/// grpcurl over TLS: `list` needs no token; a call with a token works.
#[test]
fn grpcurl_works_over_tls_with_a_token() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let pki = pki();
    let server = start_tls_server(dir.path(), &pki);
    let grpcurl = tools::grpcurl();
    let address = format!("127.0.0.1:{}", server.address.port());
    let ca = dir.path().join("ca.pem");
    let run = |args: &[&str]| {
        let output = Command::new(&grpcurl)
            .arg("-cacert")
            .arg(&ca)
            .args(args)
            .output()
            .expect("run grpcurl");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = run(&[&address, "list"]);
    assert!(ok && stdout.contains("points.v1.PointsService"), "{stdout}{stderr}");
    let (ok, stdout, stderr) = run(&[
        "-H",
        "authorization: Bearer ops-token",
        "-d",
        r#"{"payer": "DANNON", "points": 5, "timestamp": "2024-01-01T00:00:00Z"}"#,
        &address,
        "points.v1.PointsService/AddTransaction",
    ]);
    assert!(ok && stdout.contains("\"id\": \"1\""), "{stdout}{stderr}");
    let (ok, _, stderr) = run(&[&address, "points.v1.PointsService/GetBalances"]);
    assert!(!ok && stderr.contains("Unauthenticated"), "{stderr}");
}

/// Under TLS, the handshake timeout bounds the TLS handshake and the HTTP/2
/// preface after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshakes_and_prefaces_are_bounded_by_the_handshake_timeout() {
    use tokio_rustls::rustls;
    let dir = tempfile::tempdir().expect("temporary directory");
    let pki = pki();
    let certificate = write(dir.path(), "server.pem", &pki.server.0);
    let key = write(dir.path(), "server.key", &pki.server.1);
    let server = ServerProcess::start(&[
        "--tls-cert",
        certificate.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--handshake-timeout-ms",
        "300",
    ]);

    // No ClientHello at all.
    let connected = Instant::now();
    let mut silent = TcpStream::connect(server.address).await.expect("connect");
    // A finished TLS handshake, then no HTTP/2 preface.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).expect("a trusted root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tls_connected = Instant::now();
    let tcp = TcpStream::connect(server.address).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a server name");
    let mut tls = connector.connect(name, tcp).await.expect("the TLS handshake succeeds");

    let elapsed = closed_after(&mut silent, connected, Duration::from_secs(5)).await;
    assert!(elapsed >= Duration::from_millis(250), "closed after only {elapsed:?}");
    let elapsed = closed_after(&mut tls, tls_connected, Duration::from_secs(5)).await;
    assert!(elapsed >= Duration::from_millis(200), "closed after only {elapsed:?}");
}

/// A client CA without a tokens file makes certificates required: a client
/// without one fails the handshake, one with a certificate from the CA is
/// served (and the server may then listen off loopback).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ca_without_a_tokens_file_requires_a_certificate() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let pki = pki();
    let paths = [
        write(dir.path(), "server.pem", &pki.server.0),
        write(dir.path(), "server.key", &pki.server.1),
        write(dir.path(), "ca.pem", &pki.ca),
    ];
    let [cert, key, ca] = paths.each_ref().map(|path| path.to_str().expect("utf-8 path"));
    let mut command = ServerProcess::command();
    command.args(["--listen", "0.0.0.0:0", "--in-memory"]);
    command.args(["--tls-cert", cert, "--tls-key", key, "--tls-client-ca", ca]);
    let server = ServerProcess::spawn(command);
    let uri = format!("https://localhost:{}", server.address.port());

    let anonymous = match connect(uri.clone()).tls(&pki.ca, "localhost", None).try_channel().await {
        Err(_) => None,
        Ok(channel) => Some(Client::new(channel).get_balances(GetBalancesRequest::default()).await),
    };
    assert!(!matches!(anonymous, Some(Ok(_))), "served without a certificate: {anonymous:?}");

    let channel = connect(uri).tls(&pki.ca, "localhost", Some(&pki.client)).channel().await;
    let mut client = Client::new(channel);
    let earn = add_request("", "", "DANNON", 10, "2024-01-01T00:00:00Z");
    client.add_transaction(earn).await.expect("a certificate from the CA is served");
}

/// A certificate names its client by a DNS subject alternative name before
/// its common name: the SAN wins when both name a client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificates_subject_alternative_name_names_its_client_before_its_common_name() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let pki = pki();
    let billing = "[[client]]\nname = \"billing\"\n\
                   certificate_identity = \"billing.internal\"\nroles = [\"admin\"]\n";
    let reporting = "[[client]]\nname = \"reporting\"\n\
                     certificate_identity = \"reporting.internal\"\nroles = [\"read\"]\n";
    let server =
        start_mutual_tls_server(dir.path(), &pki, &[billing.to_owned(), reporting.to_owned()]);
    // Its SAN says billing (admin), its CN says reporting (read only).
    let mut billing =
        Client::new(tls_channel(&server, &pki, Some(&pki.san_client)).await.expect("mTLS"));
    let earn = add_request("", "", "DANNON", 10, "2024-01-01T00:00:00Z");
    billing.add_transaction(earn).await.expect("named billing by its SAN: admin");
    let mut reporting =
        Client::new(tls_channel(&server, &pki, Some(&pki.client)).await.expect("mTLS"));
    let earn = add_request("", "", "DANNON", 10, "2024-01-01T00:00:00Z");
    let status = reporting.add_transaction(earn).await.expect_err("reporting reads only");
    assert_eq!(status.code(), Code::PermissionDenied);
}

/// SIGHUP puts a renewed certificate in force: a new connection sees it (and
/// one trusting only the old CA fails), while a connection opened before
/// keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_the_certificate_for_new_connections_and_old_ones_keep_working() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (old, new) = (pki(), pki());
    let paths = [
        write(dir.path(), "server.pem", &old.server.0),
        write(dir.path(), "server.key", &old.server.1),
        tokens_file(dir.path(), &[token_client("ops", &["admin"], &[])]),
    ];
    let [cert, key, tokens] = paths.each_ref().map(|path| path.to_str().expect("utf-8 path"));
    let server =
        ServerProcess::start(&["--tls-cert", cert, "--tls-key", key, "--tokens-file", tokens]);
    let mut before = Client::new(tls_channel(&server, &old, None).await.expect("old certificate"));
    let read = || with_token(GetBalancesRequest::default(), "ops-token");
    before.get_balances(read()).await.expect("served with the old certificate");

    write(dir.path(), "server.pem", &new.server.0);
    write(dir.path(), "server.key", &new.server.1);
    server.signal("HUP");
    let mut after = crate::common::wait::eventually(
        "a new connection to see the new certificate",
        Duration::from_secs(5),
        || async { tls_channel(&server, &new, None).await.ok().map(Client::new) },
    )
    .await;
    after.get_balances(read()).await.expect("served with the new certificate");
    let stale = match tls_channel(&server, &old, None).await {
        Err(_) => None,
        Ok(channel) => Some(Client::new(channel).get_balances(read()).await),
    };
    assert!(!matches!(stale, Some(Ok(_))), "the old certificate is still served: {stale:?}");
    before.get_balances(read()).await.expect("the connection opened before keeps working");
}
