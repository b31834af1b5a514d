//! The error of every call, carrying the gRPC status code and the worker's `google.rpc.ErrorInfo`.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::StatusExt;

/// The `ErrorInfo.domain` of every error a llamagrid worker reports.
pub const ERROR_DOMAIN: &str = "llamagrid.dev";

/// The `ErrorInfo.reason` values a llamagrid worker reports.
pub mod reason {
    /// The prompt plus the requested completion does not fit the context.
    pub const CONTEXT_LENGTH_EXCEEDED: &str = "CONTEXT_LENGTH_EXCEEDED";
    /// The request names a model this worker does not serve.
    pub const MODEL_NOT_FOUND: &str = "MODEL_NOT_FOUND";
    /// A field has a value out of range or of the wrong form.
    pub const INVALID_VALUE: &str = "INVALID_VALUE";
    /// The request asks for something this worker cannot do.
    pub const UNSUPPORTED_PARAMETER: &str = "UNSUPPORTED_PARAMETER";
    /// The worker's queue is full (RESOURCE_EXHAUSTED, with a retry delay).
    pub const QUEUE_FULL: &str = "QUEUE_FULL";
    /// The request waited in the worker's queue longer than its queue timeout.
    pub const QUEUE_TIMEOUT: &str = "QUEUE_TIMEOUT";
    /// The worker is shutting down or still loading.
    pub const NOT_READY: &str = "NOT_READY";
    /// The session is unknown, closed or reaped (NOT_FOUND).
    pub const SESSION_NOT_FOUND: &str = "SESSION_NOT_FOUND";
    /// The session was not used for its TTL (NOT_FOUND).
    pub const SESSION_EXPIRED: &str = "SESSION_EXPIRED";
    /// A turn is already running on the session (ABORTED).
    pub const SESSION_BUSY: &str = "SESSION_BUSY";
    /// The session does not have the turns the request expected (ABORTED; see
    /// [`SessionRef::expecting_turns`](crate::SessionRef::expecting_turns)).
    pub const SESSION_LENGTH_MISMATCH: &str = "SESSION_LENGTH_MISMATCH";
    /// The worker holds its maximum number of sessions (RESOURCE_EXHAUSTED).
    pub const SESSION_LIMIT: &str = "SESSION_LIMIT";
    /// The session's turn was cancelled by [`Client::cancel_turn`](crate::Client::cancel_turn)
    /// (CANCELLED); it committed nothing.
    pub const TURN_CANCELLED: &str = "TURN_CANCELLED";
    /// The slot runs a request; saving, restoring or erasing it needs it idle (ABORTED).
    pub const SLOT_BUSY: &str = "SLOT_BUSY";
    /// Slot files are off: the worker was started without `--slot-save-path`
    /// (FAILED_PRECONDITION).
    pub const SLOT_FILES_OFF: &str = "SLOT_FILES_OFF";
}

/// Why a call failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The call ended with a gRPC status: one sent by the worker, or one made by the client
    /// (DEADLINE_EXCEEDED when the call's timeout passed, UNAVAILABLE when the connection broke).
    Status(Box<StatusError>),
    /// The channel could not be set up: a malformed address, a failed connection or TLS
    /// handshake, or a certificate or key that is not valid PEM.
    Transport(tonic::transport::Error),
    /// The client's own settings cannot be used: a PEM file that cannot be read, a malformed
    /// token, TLS settings with an `http://` address. Nothing was sent.
    Config(String),
}

/// A gRPC status with the details a llamagrid worker attaches to it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatusError {
    /// The gRPC status code.
    pub code: Code,
    /// The human-readable message.
    pub message: String,
    /// `ErrorInfo.reason`, such as [`reason::INVALID_VALUE`], when the status carried one.
    pub reason: Option<String>,
    /// `ErrorInfo.domain` ([`ERROR_DOMAIN`] for the worker's errors).
    pub domain: Option<String>,
    /// `ErrorInfo.metadata`, e.g. `param`: the request field at fault.
    pub metadata: HashMap<String, String>,
    /// `RetryInfo.retry_delay`: how long to wait before retrying (QUEUE_FULL).
    pub retry_delay: Option<Duration>,
}

impl Error {
    /// The gRPC status code; UNAVAILABLE for a transport error, INVALID_ARGUMENT for settings
    /// that cannot be used.
    pub fn code(&self) -> Code {
        match self {
            Error::Status(status) => status.code,
            Error::Transport(_) => Code::Unavailable,
            Error::Config(_) => Code::InvalidArgument,
        }
    }

    /// The human-readable message.
    pub fn message(&self) -> String {
        match self {
            Error::Status(status) => status.message.clone(),
            Error::Transport(err) => with_causes(err),
            Error::Config(message) => message.clone(),
        }
    }

    /// The worker's `ErrorInfo.reason`, such as [`reason::QUEUE_FULL`], when there is one.
    pub fn reason(&self) -> Option<&str> {
        self.status().and_then(|status| status.reason.as_deref())
    }

    /// The request field at fault (`ErrorInfo.metadata["param"]`), when the worker named one.
    pub fn param(&self) -> Option<&str> {
        self.status().and_then(|status| status.metadata.get("param")).map(String::as_str)
    }

    /// How long the worker asks the client to wait before retrying, when it said.
    pub fn retry_delay(&self) -> Option<Duration> {
        self.status().and_then(|status| status.retry_delay)
    }

    /// The status and its details, unless this is a transport error.
    pub fn status(&self) -> Option<&StatusError> {
        match self {
            Error::Status(status) => Some(status),
            Error::Transport(_) | Error::Config(_) => None,
        }
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        let details = status.get_error_details();
        let info = details.error_info();
        let (code, message) = match connection_failure(&status) {
            Some(cause) => (Code::Unavailable, with_causes(cause)),
            None => (status.code(), status.message().to_owned()),
        };
        Error::Status(Box::new(StatusError {
            code,
            message,
            reason: info.map(|info| info.reason.clone()).filter(|r| !r.is_empty()),
            domain: info.map(|info| info.domain.clone()).filter(|d| !d.is_empty()),
            metadata: info.map(|info| info.metadata.clone()).unwrap_or_default(),
            retry_delay: details.retry_info().and_then(|retry| retry.retry_delay),
        }))
    }
}

impl From<tonic::transport::Error> for Error {
    fn from(err: tonic::transport::Error) -> Self {
        Error::Transport(err)
    }
}

impl fmt::Display for StatusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)?;
        if let Some(reason) = &self.reason {
            write!(f, " [{reason}]")?;
        }
        Ok(())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Status(status) => status.fmt(f),
            Error::Transport(err) => f.write_str(&with_causes(err)),
            Error::Config(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for StatusError {}

/// The cause of a status that tonic made because the call's connection failed, such as a TLS
/// handshake the worker refused (it closes the connection once it has checked the client's
/// certificate) or a connection reset. tonic reports these as UNKNOWN "transport error", or as
/// CANCELLED when hyper dropped the request with its connection; gRPC calls both UNAVAILABLE, as
/// the other clients do.
fn connection_failure(status: &Status) -> Option<&(dyn std::error::Error + 'static)> {
    let source: &(dyn std::error::Error + 'static) = std::error::Error::source(status)?;
    let causes = || std::iter::successors(Some(source), |err| err.source());
    let failed = match status.code() {
        Code::Unknown => causes().any(|err| err.is::<tonic::transport::Error>()),
        Code::Cancelled => causes()
            .any(|err| err.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_canceled)),
        _ => false,
    };
    failed.then_some(source)
}

/// "transport error: tcp connect error: Connection refused": tonic's own message says little.
fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Status(_) | Error::Config(_) => None,
            Error::Transport(err) => Some(err),
        }
    }
}
