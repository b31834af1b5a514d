//! TLS, mTLS and token tests against a live worker that serves TLS, requires client certificates
//! signed by a CA and a token on every call. The live tests pass without doing anything when
//! `LLAMAGRID_TLS_WORKER_ADDR` is unset (Rust tests cannot report themselves skipped: they print
//! why to stderr); when it is set, the other variables must be too:
//!
//! - `LLAMAGRID_TLS_WORKER_ADDR`: host:port of the worker
//! - `LLAMAGRID_TLS_CA`: PEM file of the CA that signed the worker's and the client's certificates
//! - `LLAMAGRID_TLS_CLIENT_CERT`, `LLAMAGRID_TLS_CLIENT_KEY`: a client certificate it signed
//! - `LLAMAGRID_TLS_STRANGER_CERT`, `LLAMAGRID_TLS_STRANGER_KEY`: one another CA signed
//! - `LLAMAGRID_TLS_TOKEN`: the worker's token

use std::future::Future;
use std::time::Duration;

use llamagrid_client::{
    ChatMessage, Client, ClientBuilder, Code, DetokenizeRequest, Error, Event, GenerateRequest,
    MAX_TOKEN_CHARS, SamplingParams, TokenizeRequest,
};

struct TlsWorker {
    addr: String,
    ca: String,
    cert: String,
    key: String,
    stranger_cert: String,
    stranger_key: String,
    token: String,
}

/// The TLS worker's settings, or `None` (after saying so) when there is none to test against.
fn tls_worker(test: &str) -> Option<TlsWorker> {
    let Some(addr) = std::env::var("LLAMAGRID_TLS_WORKER_ADDR").ok().filter(|a| !a.is_empty())
    else {
        eprintln!("{test}: skipped, LLAMAGRID_TLS_WORKER_ADDR is not set");
        return None;
    };
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|value| !value.is_empty())
            .unwrap_or_else(|| panic!("LLAMAGRID_TLS_WORKER_ADDR is set but {name} is not"))
    };
    Some(TlsWorker {
        addr,
        ca: var("LLAMAGRID_TLS_CA"),
        cert: var("LLAMAGRID_TLS_CLIENT_CERT"),
        key: var("LLAMAGRID_TLS_CLIENT_KEY"),
        stranger_cert: var("LLAMAGRID_TLS_STRANGER_CERT"),
        stranger_key: var("LLAMAGRID_TLS_STRANGER_KEY"),
        token: var("LLAMAGRID_TLS_TOKEN"),
    })
}

fn run<F: Future>(test: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("cannot build a tokio runtime")
        .block_on(test)
}

fn tokenize_request() -> TokenizeRequest {
    TokenizeRequest { text: "Hello over TLS!".into(), ..Default::default() }
}

#[test]
fn tls_with_client_certificate_and_token_round_trips() {
    let Some(w) = tls_worker("tls_with_client_certificate_and_token_round_trips") else { return };
    run(async {
        let client = Client::builder(&w.addr)
            .ca_certificate_file(&w.ca)
            .identity_files(&w.cert, &w.key)
            .token(&w.token)
            .connect()
            .await
            .unwrap_or_else(|err| panic!("cannot connect to {}: {err}", w.addr));
        let client = client.with_timeout(Duration::from_secs(120));

        let tokens = client.tokenize(tokenize_request()).await.expect("Tokenize failed");
        let text = client
            .detokenize(DetokenizeRequest { token_ids: tokens.token_ids, ..Default::default() })
            .await
            .expect("Detokenize failed");
        assert_eq!(text.text, "Hello over TLS!");

        let request = GenerateRequest::chat([ChatMessage::new("user", "Name a primary color.")])
            .with_sampling(SamplingParams {
                temperature: Some(0.0),
                max_tokens: Some(4),
                ..Default::default()
            });
        let mut stream = client.generate(request).await.expect("Generate failed");
        let mut completion_tokens = None;
        while let Some(response) = stream.message().await.expect("the stream failed") {
            if let Some(Event::Final(fin)) = response.event {
                completion_tokens = fin.usage.map(|usage| usage.completion_tokens);
            }
        }
        assert!(completion_tokens.unwrap_or(0) > 0, "no final message with generated tokens");

        // The raw stub carries the token too.
        let mut stub = client.stub();
        stub.tokenize(tokenize_request()).await.expect("Tokenize through the stub failed");
    });
}

#[test]
fn tls_without_token_is_unauthenticated() {
    let Some(w) = tls_worker("tls_without_token_is_unauthenticated") else { return };
    run(async {
        let read = |path: &str| std::fs::read(path).unwrap_or_else(|err| panic!("{path}: {err}"));
        let builder = Client::builder(&w.addr)
            .ca_certificate_pem(read(&w.ca))
            .identity_pem(read(&w.cert), read(&w.key));

        let client = builder.clone().connect().await.expect("the TLS connection failed");
        let err = client.tokenize(tokenize_request()).await.expect_err("accepted without a token");
        assert_eq!(err.code(), Code::Unauthenticated, "{err}");

        let wrong = builder.clone().token(format!("{}x", w.token)).connect().await.unwrap();
        let err = wrong.tokenize(tokenize_request()).await.expect_err("accepted a wrong token");
        assert_eq!(err.code(), Code::Unauthenticated, "{err}");

        // The same settings with the token: the failures above were the token's.
        let right = builder.token(&w.token).connect().await.unwrap();
        right.tokenize(tokenize_request()).await.expect("Tokenize with the token failed");
    });
}

/// Connecting with these settings, or else the first call, fails: the TLS handshake is refused.
async fn assert_refused(builder: ClientBuilder) {
    let err = match builder.connect().await {
        Err(err) => err,
        Ok(client) => client
            .with_timeout(Duration::from_secs(60))
            .tokenize(tokenize_request())
            .await
            .expect_err("a call succeeded over a connection that should have been refused"),
    };
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    eprintln!("refused: {err}");
}

#[test]
fn tls_stranger_certificate_is_refused() {
    let Some(w) = tls_worker("tls_stranger_certificate_is_refused") else { return };
    run(assert_refused(
        Client::builder(&w.addr)
            .ca_certificate_file(&w.ca)
            .identity_files(&w.stranger_cert, &w.stranger_key)
            .token(&w.token),
    ));
}

#[test]
fn tls_missing_client_certificate_is_refused() {
    let Some(w) = tls_worker("tls_missing_client_certificate_is_refused") else { return };
    run(assert_refused(Client::builder(&w.addr).ca_certificate_file(&w.ca).token(&w.token)));
}

#[test]
fn tls_untrusted_worker_is_refused() {
    // Only the system's roots are trusted, and none of them signed the worker's certificate.
    let Some(w) = tls_worker("tls_untrusted_worker_is_refused") else { return };
    run(assert_refused(
        Client::builder(&w.addr).tls().identity_files(&w.cert, &w.key).token(&w.token),
    ));
}

/// Settings that cannot work fail before anything is sent; no worker is needed.
#[test]
fn settings_that_cannot_work_are_refused_early() {
    let config_error = |result: Result<Client, Error>| match result {
        Err(Error::Config(message)) => message,
        other => panic!("expected a settings error, got {other:?}"),
    };
    let too_long = "x".repeat(MAX_TOKEN_CHARS + 1);
    for bad in ["", "two words", "line\nbreak", "caf\u{e9}", "a=b", "=", "semi;colon", &too_long] {
        let message = config_error(Client::builder("127.0.0.1:1").token(bad).connect_lazy());
        assert!(message.contains("token"), "{message}");
        assert!(bad.len() < 3 || !message.contains(bad), "the message repeats the token");
    }
    let message = config_error(
        Client::builder("127.0.0.1:1").ca_certificate_file("/nonexistent/ca.pem").connect_lazy(),
    );
    assert!(message.contains("/nonexistent/ca.pem"), "{message}");
    let message = config_error(Client::builder("http://127.0.0.1:1").tls().connect_lazy());
    assert!(message.contains("non-https"), "{message}");

    // An https:// address is TLS with the system's roots, through the plain constructors too.
    run(async { Client::connect_lazy("https://127.0.0.1:1").expect("an https:// address") });

    // A key that is not PEM is a transport error from tonic, also before any connection.
    let err = Client::builder("127.0.0.1:1")
        .identity_pem("not a certificate", "not a key")
        .connect_lazy()
        .expect_err("accepted an identity that is not PEM");
    assert!(matches!(err, Error::Transport(_)), "{err:?}");

    // Good tokens are taken, over plaintext too (a worker on loopback), and never show in debug
    // output. (A lazy channel needs a runtime to be made on.)
    let longest = "x".repeat(MAX_TOKEN_CHARS);
    run(async {
        for good in ["s3cret-token", "a~b+c/d_e==", &longest] {
            for builder in [Client::builder("127.0.0.1:1"), Client::builder("127.0.0.1:1").tls()] {
                let builder = builder.token(good);
                assert!(!format!("{builder:?}").contains(good));
                let client = builder.connect_lazy().expect("a good token was refused");
                assert!(!format!("{client:?}").contains(good));
            }
        }
    });
}
