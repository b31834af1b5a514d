//! A thin async client for llamagrid workers, speaking the `llamagrid.v1.InferenceService` and
//! `SessionService` gRPC contract over [tonic].
//!
//! ```no_run
//! use llamagrid_client::{ChatMessage, Client, Event, GenerateRequest, SamplingParams};
//!
//! # async fn demo() -> Result<(), llamagrid_client::Error> {
//! let client = Client::connect("127.0.0.1:50051").await?;
//! let request = GenerateRequest::chat([ChatMessage::new("user", "Name three primary colors.")])
//!     .with_sampling(SamplingParams { max_tokens: Some(24), ..Default::default() });
//! let mut stream = client.generate(request).await?;
//! while let Some(response) = stream.message().await? {
//!     match response.event {
//!         Some(Event::Chunk(chunk)) => print!("{}", chunk.text),
//!         Some(Event::Final(fin)) => println!("\n[{}]", fin.finish_reason().as_str_name()),
//!         None => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The messages are generated at build time from `protos/llamagrid/v1/inference.proto` and live
//! in [`v1`]; the most used ones are re-exported at the crate root.
#![warn(missing_docs)]

mod builder;
mod client;
mod control;
mod error;

use std::time::Duration;

pub use builder::{ClientBuilder, MAX_TOKEN_CHARS, TokenInterceptor};
pub use client::{Client, GenerateStream, SessionStub, Stub};
pub use error::{ERROR_DOMAIN, Error, StatusError, reason};
pub use tonic::Code;
pub use v1::generate_response::Event;
pub use v1::{
    ApplyChatTemplateRequest, ChatConversation, ChatMessage, ContentPart, DetokenizeRequest,
    DetokenizeResponse, EmbedInput, EmbedRequest, EmbedResponse, Embedding, EraseSlotRequest,
    EraseSlotResponse, FinishReason, ForkSessionRequest, GenerateChunk, GenerateFinal,
    GenerateRequest, GenerateResponse, GetLoadResponse, GetSessionResponse, Image, KvTier,
    LoraAdapter, LoraScale, ModelInfo, OpenSessionRequest, RestoreSlotRequest, RestoreSlotResponse,
    SamplingParams, SaveSlotRequest, SaveSlotResponse, SessionCommit, SessionInfo, SessionRef,
    SessionTranscript, SlotState, TokenList, TokenizeRequest, TokenizeResponse, Tool, ToolCall,
    ToolCallDelta, ToolChoice, ToolChoiceMode, Usage,
};

/// Compiles the README's code blocks as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The code generated from `llamagrid/v1/inference.proto`: messages, enums and the
/// `inference_service_client::InferenceServiceClient` and
/// `session_service_client::SessionServiceClient` stubs.
#[allow(missing_docs)]
pub mod v1 {
    tonic::include_proto!("llamagrid.v1");
}

/// The largest message sent or accepted, both ways: 64 MiB, as the worker allows (tonic's own
/// default for received messages is 4 MiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// How often an HTTP/2 ping is sent, even on an idle connection. The worker accepts pings no
/// closer than 10 s apart.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is considered dead.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

impl ChatMessage {
    /// A chat turn with the given role ("system", "user", "assistant", "tool") and text.
    #[must_use]
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into(), ..Default::default() }
    }

    /// An assistant turn that made these tool calls (as `GenerateFinal::tool_calls` returned
    /// them), to send back with their results in the next request.
    #[must_use]
    pub fn assistant_tool_calls(calls: impl IntoIterator<Item = ToolCall>) -> Self {
        Self { tool_calls: calls.into_iter().collect(), ..Self::new("assistant", "") }
    }

    /// A tool's result (role "tool"), answering the call whose id is `tool_call_id`.
    #[must_use]
    pub fn tool_result(tool_call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Self { tool_call_id: tool_call_id.into(), ..Self::new("tool", content) }
    }

    /// A chat turn made of parts, text and images in order, for a model that reads images
    /// ([`ModelInfo::vision`]); a model without a projector refuses images with
    /// [`Code::InvalidArgument`].
    ///
    /// ```
    /// use llamagrid_client::{ChatMessage, ContentPart};
    /// # let png: Vec<u8> = vec![];
    /// let turn = ChatMessage::from_parts(
    ///     "user",
    ///     [ContentPart::text("What is in this picture?"), ContentPart::image(png, "image/png")],
    /// );
    /// ```
    #[must_use]
    pub fn from_parts(
        role: impl Into<String>,
        parts: impl IntoIterator<Item = ContentPart>,
    ) -> Self {
        Self { parts: parts.into_iter().collect(), ..Self::new(role, "") }
    }
}

impl ContentPart {
    /// A text part of a chat turn.
    #[must_use]
    pub fn text(text: impl Into<String>) -> Self {
        Self { part: Some(v1::content_part::Part::Text(text.into())) }
    }

    /// An image part of a chat turn: see [`Image::new`].
    #[must_use]
    pub fn image(data: impl Into<Vec<u8>>, mime_type: impl Into<String>) -> Self {
        Self { part: Some(v1::content_part::Part::Image(Image::new(data, mime_type))) }
    }
}

impl Image {
    /// An encoded image (PNG, JPEG, GIF, BMP, TGA or PNM), for [`ContentPart::image`] or for
    /// [`GenerateRequest::with_images`]. `mime_type` is its type, such as `"image/png"`; empty
    /// lets the worker detect it from the bytes.
    #[must_use]
    pub fn new(data: impl Into<Vec<u8>>, mime_type: impl Into<String>) -> Self {
        Self { data: data.into(), mime_type: mime_type.into() }
    }
}

impl Tool {
    /// A function the model may call. `parameters_json` is a JSON Schema of its arguments, as
    /// JSON text (an object); empty means no arguments. Set `strict` for arguments that must
    /// validate against it: `Tool { strict: true, ..Tool::new(..) }`.
    #[must_use]
    pub fn new(
        name: impl Into<String>,
        description: impl Into<String>,
        parameters_json: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            description: description.into(),
            parameters_json: parameters_json.into(),
            ..Default::default()
        }
    }
}

impl ToolChoice {
    /// The model must call the function `name`, one of the request's tools.
    #[must_use]
    pub fn function(name: impl Into<String>) -> Self {
        Self { choice: Some(v1::tool_choice::Choice::Function(name.into())) }
    }

    /// The model may ([`ToolChoiceMode::Auto`]), must ([`ToolChoiceMode::Required`]) or must
    /// not ([`ToolChoiceMode::None`]) call tools.
    #[must_use]
    pub fn mode(mode: ToolChoiceMode) -> Self {
        Self { choice: Some(v1::tool_choice::Choice::Mode(mode.into())) }
    }
}

impl GenerateRequest {
    /// A request to continue a conversation, formatted with the model's chat template.
    #[must_use]
    pub fn chat(messages: impl IntoIterator<Item = ChatMessage>) -> Self {
        let chat = ChatConversation { messages: messages.into_iter().collect() };
        Self { input: Some(v1::generate_request::Input::Chat(chat)), ..Default::default() }
    }

    /// A request to complete raw prompt text.
    #[must_use]
    pub fn prompt(text: impl Into<String>) -> Self {
        Self { input: Some(v1::generate_request::Input::Prompt(text.into())), ..Default::default() }
    }

    /// The same request with these sampling parameters.
    #[must_use]
    pub fn with_sampling(mut self, sampling: SamplingParams) -> Self {
        self.sampling = Some(sampling);
        self
    }

    /// The same request offering these tools to the model (chat input only); without a
    /// [`ToolChoice`], the model may call them or answer in text.
    #[must_use]
    pub fn with_tools(mut self, tools: impl IntoIterator<Item = Tool>) -> Self {
        self.tools = tools.into_iter().collect();
        self
    }

    /// The same request with this tool choice, e.g. [`ToolChoice::function`].
    #[must_use]
    pub fn with_tool_choice(mut self, choice: ToolChoice) -> Self {
        self.tool_choice = Some(choice);
        self
    }

    /// The same request with these images for its raw prompt ([`GenerateRequest::prompt`]):
    /// each takes the place of one media marker ([`ModelInfo::media_marker`]) in the prompt, in
    /// order, and the number of markers must equal the number of images.
    #[must_use]
    pub fn with_images(mut self, images: impl IntoIterator<Item = Image>) -> Self {
        self.images = images.into_iter().collect();
        self
    }

    /// The same request as the next turn of a session (see [`SessionRef`]): its input is then
    /// only the new turn, and its final message reports what the turn committed
    /// (`GenerateFinal::session`).
    #[must_use]
    pub fn with_session(mut self, session: SessionRef) -> Self {
        self.session = Some(session);
        self
    }
}

impl SessionRef {
    /// A reference to the session `session_id`, for [`GenerateRequest::with_session`].
    ///
    /// A session is a conversation the worker keeps: the exact token ids of its committed turns.
    /// A turn commits when it finishes; a cancelled or failed turn commits nothing. A second turn
    /// while one runs fails with [`Code::Aborted`], reason [`reason::SESSION_BUSY`].
    #[must_use]
    pub fn new(session_id: impl Into<String>) -> Self {
        Self { session_id: session_id.into(), expected_turns: None }
    }

    /// The same reference for a turn that runs only if the session has exactly `turns`
    /// committed turns; otherwise it fails with [`Code::Aborted`], reason
    /// [`reason::SESSION_LENGTH_MISMATCH`]. Use it to retry a turn whose outcome was not seen
    /// without committing it twice.
    #[must_use]
    pub fn expecting_turns(mut self, turns: u32) -> Self {
        self.expected_turns = Some(turns);
        self
    }
}

impl EmbedRequest {
    /// A request to embed each text, for the worker's only model.
    #[must_use]
    pub fn texts<S: Into<String>>(texts: impl IntoIterator<Item = S>, normalize: bool) -> Self {
        let inputs = texts
            .into_iter()
            .map(|text| EmbedInput { input: Some(v1::embed_input::Input::Text(text.into())) })
            .collect();
        Self { inputs, normalize, ..Default::default() }
    }
}
