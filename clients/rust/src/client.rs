//! [`Client`]: one HTTP/2 connection to a worker, with the settings the worker expects.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_core::Stream;
use tokio::time::{Instant, Sleep};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use crate::builder::{ClientBuilder, TokenInterceptor};
use crate::v1::inference_service_client::InferenceServiceClient;
use crate::v1::session_service_client::SessionServiceClient;
use crate::v1::{
    CancelTurnRequest, CloseSessionRequest, GetLoadRequest, GetModelInfoRequest, GetSessionRequest,
    ListModelsRequest, RollbackSessionRequest,
};
use crate::{
    DetokenizeRequest, DetokenizeResponse, EmbedRequest, EmbedResponse, Error, ForkSessionRequest,
    GenerateRequest, GenerateResponse, GetLoadResponse, GetSessionResponse, MAX_MESSAGE_BYTES,
    ModelInfo, OpenSessionRequest, SessionInfo, TokenizeRequest, TokenizeResponse,
};

/// The generated stub a [`Client`] calls through: its channel, with the client's token (if any)
/// added to every call.
pub type Stub = InferenceServiceClient<InterceptedService<Channel, TokenInterceptor>>;

/// The generated `SessionService` stub a [`Client`] calls through, on the same channel and with
/// the same token as its [`Stub`].
pub type SessionStub = SessionServiceClient<InterceptedService<Channel, TokenInterceptor>>;

/// A client of one llamagrid worker.
///
/// Cloning is cheap and clones share the connection, so one `Client` can serve many tasks. Every
/// method takes `&self`; calls run concurrently over the one HTTP/2 connection, which tonic
/// re-establishes on the next call after it breaks.
#[derive(Debug, Clone)]
pub struct Client {
    stub: Stub,
    sessions: SessionStub,
    timeout: Option<Duration>,
}

impl Client {
    /// Connects to a worker at `addr`, either `host:port` or a URI such as `http://host:port`
    /// (plaintext) or `https://host:port` (TLS, trusting the system's roots). For a CA of your
    /// own, a client certificate or a token, use [`Client::builder`].
    ///
    /// The channel pings every [`KEEPALIVE_INTERVAL`](crate::KEEPALIVE_INTERVAL) (30 s), even
    /// without calls in flight, gives up on the connection after
    /// [`KEEPALIVE_TIMEOUT`](crate::KEEPALIVE_TIMEOUT) (10 s) without an answer, and sends and
    /// accepts messages of up to [`MAX_MESSAGE_BYTES`] (64 MiB).
    pub async fn connect(addr: impl AsRef<str>) -> Result<Self, Error> {
        let channel = Self::endpoint(addr.as_ref())?.connect().await?;
        Ok(Self::from_channel(channel))
    }

    /// Like [`Client::connect`], but the connection is made on the first call.
    pub fn connect_lazy(addr: impl AsRef<str>) -> Result<Self, Error> {
        Ok(Self::from_channel(Self::endpoint(addr.as_ref())?.connect_lazy()))
    }

    /// Settings for a connection with TLS, a client certificate (mTLS) or a token; finish with
    /// [`ClientBuilder::connect`].
    pub fn builder(addr: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(addr)
    }

    /// The endpoint [`Client::connect`] dials, with the keepalive settings applied, for callers
    /// that want to adjust it (timeouts) and then use [`Client::from_channel`].
    pub fn endpoint(addr: &str) -> Result<Endpoint, Error> {
        ClientBuilder::new(addr).endpoint()
    }

    /// A client over an existing channel, with the 64 MiB message limits.
    #[must_use]
    pub fn from_channel(channel: Channel) -> Self {
        Self::with_interceptor(channel, TokenInterceptor::default())
    }

    pub(crate) fn with_interceptor(channel: Channel, interceptor: TokenInterceptor) -> Self {
        let sessions = SessionServiceClient::with_interceptor(channel.clone(), interceptor.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let stub = InferenceServiceClient::with_interceptor(channel, interceptor)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Self { stub, sessions, timeout: None }
    }

    /// A copy of this client, on the same connection, whose calls must finish within `timeout`.
    ///
    /// The deadline travels to the worker (`grpc-timeout`), which stops work on the request when
    /// it passes, and the client enforces it too: a call or a [`GenerateStream`] still running
    /// then fails with [`Code::DeadlineExceeded`](crate::Code::DeadlineExceeded) and the call is
    /// cancelled. For a stream the deadline covers the whole stream, not each message.
    #[must_use]
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self { stub: self.stub.clone(), sessions: self.sessions.clone(), timeout: Some(timeout) }
    }

    /// The generated tonic stub, for anything this wrapper does not cover (metadata, compression).
    /// Its calls carry the client's token, if any.
    pub fn stub(&self) -> Stub {
        self.stub.clone()
    }

    /// The generated tonic stub of the session service; its calls carry the client's token, if
    /// any.
    pub fn session_stub(&self) -> SessionStub {
        self.sessions.clone()
    }

    /// Starts a generation and returns its stream of chunks, which ends with one final message.
    pub async fn generate(&self, request: GenerateRequest) -> Result<GenerateStream, Error> {
        let (request, deadline) = self.request(request);
        let mut stub = self.stub.clone();
        let response = within(deadline, async move { stub.generate(request).await }).await?;
        Ok(GenerateStream {
            inner: Some(response.into_inner()),
            deadline: deadline.map(|at| Box::pin(tokio::time::sleep_until(at))),
        })
    }

    /// Embeds a batch of texts or token lists.
    pub async fn embed(&self, request: EmbedRequest) -> Result<EmbedResponse, Error> {
        self.unary(request, |mut stub, r| async move { stub.embed(r).await }).await
    }

    /// Turns text into token ids.
    pub async fn tokenize(&self, request: TokenizeRequest) -> Result<TokenizeResponse, Error> {
        self.unary(request, |mut stub, r| async move { stub.tokenize(r).await }).await
    }

    /// Turns token ids back into text.
    pub async fn detokenize(
        &self,
        request: DetokenizeRequest,
    ) -> Result<DetokenizeResponse, Error> {
        self.unary(request, |mut stub, r| async move { stub.detokenize(r).await }).await
    }

    /// Describes the model served under `model` (empty: the worker's only model).
    pub async fn get_model_info(&self, model: impl Into<String>) -> Result<ModelInfo, Error> {
        let request = GetModelInfoRequest { model: model.into() };
        let response =
            self.unary(request, |mut stub, r| async move { stub.get_model_info(r).await });
        Ok(response.await?.info.unwrap_or_default())
    }

    /// Describes every model the worker serves.
    pub async fn list_models(&self) -> Result<Vec<ModelInfo>, Error> {
        let response = self
            .unary(ListModelsRequest {}, |mut stub, r| async move { stub.list_models(r).await });
        Ok(response.await?.models)
    }

    /// The worker's current load: requests running and queued, KV cache occupancy.
    pub async fn get_load(&self) -> Result<GetLoadResponse, Error> {
        self.unary(GetLoadRequest {}, |mut stub, r| async move { stub.get_load(r).await }).await
    }

    /// Creates a session and describes it. An empty `model` means the worker's only model, a
    /// `ttl_s` of 0 the worker's default; a `transcript`, when set, is the history to start from.
    pub async fn open_session(&self, request: OpenSessionRequest) -> Result<SessionInfo, Error> {
        let response =
            self.session_unary(request, |mut stub, r| async move { stub.open_session(r).await });
        Ok(response.await?.session.unwrap_or_default())
    }

    /// Describes a session and, when `with_transcript`, returns its transcript too. An unknown,
    /// closed or reaped session fails with [`Code::NotFound`](crate::Code::NotFound), reason
    /// [`reason::SESSION_NOT_FOUND`](crate::reason::SESSION_NOT_FOUND); an expired one with
    /// [`reason::SESSION_EXPIRED`](crate::reason::SESSION_EXPIRED).
    pub async fn get_session(
        &self,
        session_id: impl Into<String>,
        with_transcript: bool,
    ) -> Result<GetSessionResponse, Error> {
        let request = GetSessionRequest { session_id: session_id.into(), with_transcript };
        self.session_unary(request, |mut stub, r| async move { stub.get_session(r).await }).await
    }

    /// Creates a new session holding the first `turns` turns of another, which stays as it was,
    /// and describes the new one. More turns than the session has fails with
    /// [`Code::InvalidArgument`](crate::Code::InvalidArgument).
    pub async fn fork_session(&self, request: ForkSessionRequest) -> Result<SessionInfo, Error> {
        let response =
            self.session_unary(request, |mut stub, r| async move { stub.fork_session(r).await });
        Ok(response.await?.session.unwrap_or_default())
    }

    /// Keeps the first `turns` turns of a session, drops the later ones and describes the
    /// session after it. More turns than the session has fails with
    /// [`Code::InvalidArgument`](crate::Code::InvalidArgument).
    pub async fn rollback_session(
        &self,
        session_id: impl Into<String>,
        turns: u32,
    ) -> Result<SessionInfo, Error> {
        let request = RollbackSessionRequest { session_id: session_id.into(), turns };
        let response = self
            .session_unary(request, |mut stub, r| async move { stub.rollback_session(r).await });
        Ok(response.await?.session.unwrap_or_default())
    }

    /// Deletes a session; a turn running on it is cancelled.
    pub async fn close_session(&self, session_id: impl Into<String>) -> Result<(), Error> {
        let request = CloseSessionRequest { session_id: session_id.into() };
        self.session_unary(request, |mut stub, r| async move { stub.close_session(r).await })
            .await?;
        Ok(())
    }

    /// Cancels the turn running on a session, from any caller: that turn's stream ends with
    /// [`Code::Cancelled`](crate::Code::Cancelled), reason
    /// [`reason::TURN_CANCELLED`](crate::reason::TURN_CANCELLED), and the session stays as it was
    /// before the turn. Returns whether a turn was running; an unknown session fails with
    /// [`Code::NotFound`](crate::Code::NotFound).
    pub async fn cancel_turn(&self, session_id: impl Into<String>) -> Result<bool, Error> {
        let request = CancelTurnRequest { session_id: session_id.into() };
        let response =
            self.session_unary(request, |mut stub, r| async move { stub.cancel_turn(r).await });
        Ok(response.await?.cancelled)
    }

    /// Makes one unary call on a copy of the stub, within this client's timeout.
    pub(crate) async fn unary<Req, Resp, Fut>(
        &self,
        message: Req,
        call: impl FnOnce(Stub, Request<Req>) -> Fut,
    ) -> Result<Resp, Error>
    where
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let (request, deadline) = self.request(message);
        let response = within(deadline, call(self.stub.clone(), request)).await?;
        Ok(response.into_inner())
    }

    /// [`Client::unary`] on the session service's stub.
    async fn session_unary<Req, Resp, Fut>(
        &self,
        message: Req,
        call: impl FnOnce(SessionStub, Request<Req>) -> Fut,
    ) -> Result<Resp, Error>
    where
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let (request, deadline) = self.request(message);
        let response = within(deadline, call(self.sessions.clone(), request)).await?;
        Ok(response.into_inner())
    }

    /// Wraps a message in a request carrying this client's timeout, and computes its deadline.
    fn request<T>(&self, message: T) -> (Request<T>, Option<Instant>) {
        let mut request = Request::new(message);
        if let Some(timeout) = self.timeout {
            request.set_timeout(timeout);
        }
        (request, self.timeout.map(|timeout| Instant::now() + timeout))
    }
}

/// The stream of a [`Client::generate`] call: chunks, then one final message.
///
/// Read it with [`GenerateStream::message`] or as a [`Stream`]. Dropping it cancels the call,
/// and the worker frees the request's slot.
#[derive(Debug)]
pub struct GenerateStream {
    /// `None` once the stream has ended, failed or passed its deadline.
    inner: Option<Streaming<GenerateResponse>>,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl GenerateStream {
    /// The next message, or `None` after the last one.
    pub async fn message(&mut self) -> Result<Option<GenerateResponse>, Error> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await.transpose()
    }
}

impl Stream for GenerateStream {
    type Item = Result<GenerateResponse, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(deadline) = this.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            // Dropping the response body resets the HTTP/2 stream: the worker sees a cancel.
            this.inner = None;
            return Poll::Ready(Some(Err(deadline_exceeded().into())));
        }
        let item = ready!(Pin::new(inner).poll_next(cx));
        if !matches!(item, Some(Ok(_))) {
            this.inner = None;
        }
        Poll::Ready(item.map(|result| result.map_err(Error::from)))
    }
}

/// Runs `call`, failing it with DEADLINE_EXCEEDED if it is still running at `deadline`.
async fn within<T>(
    deadline: Option<Instant>,
    call: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    match deadline {
        None => call.await,
        Some(at) => {
            tokio::time::timeout_at(at, call).await.unwrap_or_else(|_| Err(deadline_exceeded()))
        }
    }
}

fn deadline_exceeded() -> Status {
    Status::deadline_exceeded("deadline exceeded before the call finished")
}
