//! [`ClientBuilder`]: a connection with TLS, a client certificate (mTLS) and a token.

use std::fmt;
use std::path::PathBuf;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

use crate::{Client, Error, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT};

/// PEM input, from a file read when the connection is set up, or in memory.
#[derive(Debug, Clone)]
enum Pem {
    File(PathBuf),
    Bytes(Vec<u8>),
}

impl Pem {
    fn read(&self, what: &str) -> Result<Vec<u8>, Error> {
        match self {
            Pem::Bytes(bytes) => Ok(bytes.clone()),
            Pem::File(path) => std::fs::read(path).map_err(|err| {
                Error::Config(format!("cannot read the {what} {}: {err}", path.display()))
            }),
        }
    }
}

/// Settings for a connection to a worker: TLS, a client certificate and a token, on top of the
/// keepalive and message-size defaults of [`Client::connect`].
///
/// ```no_run
/// # async fn demo() -> Result<(), llamagrid_client::Error> {
/// let client = llamagrid_client::Client::builder("worker.internal:50051")
///     .ca_certificate_file("ca.pem") // TLS, trusting this CA; without it, the system's roots
///     .identity_files("client.pem", "client.key") // mTLS
///     .token(std::env::var("LLAMAGRID_WORKER_TOKEN").unwrap_or_default())
///     .connect()
///     .await?;
/// # Ok(())
/// # }
/// ```
///
/// Any TLS setting (or an `https://` address) makes the connection TLS.
#[derive(Clone)]
pub struct ClientBuilder {
    addr: String,
    tls: bool,
    ca: Option<Pem>,
    identity: Option<(Pem, Pem)>,
    domain_name: Option<String>,
    token: Option<String>,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("addr", &self.addr)
            .field("tls", &self.tls)
            .field("ca", &self.ca)
            .field("identity", &self.identity.as_ref().map(|(cert, _)| cert))
            .field("domain_name", &self.domain_name)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl ClientBuilder {
    pub(crate) fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            tls: false,
            ca: None,
            identity: None,
            domain_name: None,
            token: None,
        }
    }

    /// Connect over TLS. Without [`ca_certificate_pem`](Self::ca_certificate_pem) or
    /// [`ca_certificate_file`](Self::ca_certificate_file), the worker's certificate must chain
    /// to one of the system's trusted roots.
    #[must_use]
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Connect over TLS and trust the CA certificates in this PEM (instead of the system's
    /// roots) to sign the worker's certificate.
    #[must_use]
    pub fn ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(Pem::Bytes(pem.into()));
        self.tls()
    }

    /// Like [`ca_certificate_pem`](Self::ca_certificate_pem), with the PEM read from a file
    /// when the connection is set up.
    #[must_use]
    pub fn ca_certificate_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca = Some(Pem::File(path.into()));
        self.tls()
    }

    /// Connect over TLS and present this client certificate chain and private key (PEM; the
    /// key as PKCS#8, PKCS#1 or SEC1), for a worker that requires client certificates (mTLS).
    #[must_use]
    pub fn identity_pem(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.identity = Some((Pem::Bytes(cert.into()), Pem::Bytes(key.into())));
        self.tls()
    }

    /// Like [`identity_pem`](Self::identity_pem), with the PEM read from files when the
    /// connection is set up.
    #[must_use]
    pub fn identity_files(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.identity = Some((Pem::File(cert.into()), Pem::File(key.into())));
        self.tls()
    }

    /// The name the worker's certificate must carry, when it is not the host of the address.
    #[must_use]
    pub fn domain_name(mut self, name: impl Into<String>) -> Self {
        self.domain_name = Some(name.into());
        self
    }

    /// Send `authorization: Bearer <token>` with every call, for a worker started with a token
    /// (`LLAMAGRID_WORKER_TOKEN` or `--token-file`). It must be an RFC 6750 bearer token (see
    /// [`TokenInterceptor::new`]). It is sent over a plaintext connection too, where anyone on
    /// the network path can read it: beyond loopback, use it with TLS.
    #[must_use]
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Connects, and fails if the connection (TLS handshake included) cannot be made.
    pub async fn connect(self) -> Result<Client, Error> {
        let interceptor = self.interceptor()?;
        let channel = self.endpoint()?.connect().await?;
        Ok(Client::with_interceptor(channel, interceptor))
    }

    /// Like [`connect`](Self::connect), but the connection is made on the first call. Settings
    /// that cannot work (an unreadable file, a malformed token) still fail here.
    pub fn connect_lazy(self) -> Result<Client, Error> {
        let interceptor = self.interceptor()?;
        let channel = self.endpoint()?.connect_lazy();
        Ok(Client::with_interceptor(channel, interceptor))
    }

    /// The endpoint these settings describe (keepalive and TLS, not the token), for callers that
    /// want to adjust it further and then use [`Client::from_channel`].
    pub fn endpoint(&self) -> Result<Endpoint, Error> {
        let addr = self.addr.as_str();
        let https = addr.starts_with("https://");
        let uri = match (addr.contains("://"), self.tls) {
            (false, true) => format!("https://{addr}"),
            (false, false) => format!("http://{addr}"),
            (true, true) if !https => {
                return Err(Error::Config(format!(
                    "TLS settings with a non-https address: {addr}"
                )));
            }
            (true, _) => addr.to_owned(),
        };
        let endpoint = Endpoint::from_shared(uri)?
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        if !(self.tls || https) {
            return Ok(endpoint);
        }
        let mut config = ClientTlsConfig::new();
        config = match &self.ca {
            Some(ca) => config.ca_certificate(Certificate::from_pem(ca.read("CA certificate")?)),
            None => config.with_enabled_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            let identity =
                Identity::from_pem(cert.read("client certificate")?, key.read("client key")?);
            config = config.identity(identity);
        }
        if let Some(name) = &self.domain_name {
            config = config.domain_name(name);
        }
        Ok(endpoint.tls_config(config)?)
    }

    fn interceptor(&self) -> Result<TokenInterceptor, Error> {
        match &self.token {
            Some(token) => TokenInterceptor::new(token),
            None => Ok(TokenInterceptor::default()),
        }
    }
}

/// The longest token sent (gRPC's default limit on a call's metadata is 8 KiB).
pub const MAX_TOKEN_CHARS: usize = 4096;

/// Adds `authorization: Bearer <token>` to every call (or nothing, when it holds no token).
///
/// [`ClientBuilder::token`] installs one on the client; it is public so that the type of
/// [`Client::stub`] can be named.
#[derive(Clone, Default)]
pub struct TokenInterceptor {
    header: Option<MetadataValue<Ascii>>,
}

impl TokenInterceptor {
    /// An interceptor that sends `token`, which must be an RFC 6750 bearer token: letters,
    /// digits and `-._~+/`, optionally ending in `=`, at most [`MAX_TOKEN_CHARS`] characters.
    pub fn new(token: &str) -> Result<Self, Error> {
        if token.is_empty() {
            return Err(Error::Config("the token is empty".into()));
        }
        if token.len() > MAX_TOKEN_CHARS {
            return Err(Error::Config(format!(
                "the token is longer than {MAX_TOKEN_CHARS} characters"
            )));
        }
        let body = token.trim_end_matches('=');
        if body.is_empty()
            || !body.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
        {
            return Err(Error::Config(
                "the token must be letters, digits and -._~+/ only, optionally ending in = \
                 (an RFC 6750 bearer token)"
                    .into(),
            ));
        }
        let mut header = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| Error::Config("the token is not a valid header value".into()))?;
        header.set_sensitive(true);
        Ok(Self { header: Some(header) })
    }
}

impl fmt::Debug for TokenInterceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let token = self.header.as_ref().map(|_| "<redacted>");
        f.debug_struct("TokenInterceptor").field("token", &token).finish()
    }
}

impl Interceptor for TokenInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request.metadata_mut().insert("authorization", header.clone());
        }
        Ok(request)
    }
}
