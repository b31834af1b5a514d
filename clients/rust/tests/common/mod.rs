//! What every live test file needs: a runtime per test, and a client of the worker the harness
//! names in LLAMAGRID_WORKER_ADDR (tests/integration/test_clients.py).
#![allow(dead_code)] // each test file uses its own part of it

use std::future::Future;
use std::time::Duration;

use llamagrid_client::{Client, Code, Error};

/// Runs a test body on a runtime of its own.
pub fn run<F: Future>(test: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("cannot build a tokio runtime")
        .block_on(test)
}

/// A client of the live worker, with a generous timeout (the worker may share a few busy
/// cores with other suites).
pub async fn connect() -> Client {
    let addr = std::env::var("LLAMAGRID_WORKER_ADDR")
        .ok()
        .filter(|addr| !addr.is_empty())
        .expect("LLAMAGRID_WORKER_ADDR is not set: these tests need a running llamagrid worker, e.g. LLAMAGRID_WORKER_ADDR=127.0.0.1:50051");
    let client = Client::connect(&addr)
        .await
        .unwrap_or_else(|err| panic!("cannot connect to the worker at {addr}: {err}"));
    client.with_timeout(Duration::from_secs(120))
}

/// Asserts that a call failed with this code and reason.
pub fn assert_fails<T: std::fmt::Debug>(
    result: Result<T, Error>,
    code: Code,
    reason: &str,
    what: &str,
) {
    let err = result.expect_err(what);
    assert_eq!((err.code(), err.reason()), (code, Some(reason)), "{what}: {err}");
}
