//! Integration tests against a live worker, whose address is `LLAMAGRID_WORKER_ADDR`
//! (e.g. `127.0.0.1:50051`). They fail, rather than skip, when it is unset.
//!
//! When `LLAMAGRID_PARITY_OUT` is set, the chat generation test writes the token ids it got
//! there as `{"token_ids": [...]}`, for comparison with the other clients.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use llamagrid_client::{
    ChatMessage, Client, Code, DetokenizeRequest, EmbedRequest, Error, Event, FinishReason,
    GenerateRequest, SamplingParams, TokenizeRequest, reason,
};
use tokio_stream::StreamExt;

mod common;
use common::run;

/// Tests that generate run one at a time, so that the deadline test sees only its own request.
static GENERATION: Mutex<()> = Mutex::new(());

fn one_generation_at_a_time() -> MutexGuard<'static, ()> {
    GENERATION.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn connect() -> Client {
    let addr = std::env::var("LLAMAGRID_WORKER_ADDR")
        .ok()
        .filter(|addr| !addr.is_empty())
        .expect("LLAMAGRID_WORKER_ADDR is not set: these tests need a running llamagrid worker, e.g. LLAMAGRID_WORKER_ADDR=127.0.0.1:50051");
    Client::connect(&addr)
        .await
        .unwrap_or_else(|err| panic!("cannot connect to the worker at {addr}: {err}"))
}

fn greedy(max_tokens: u32) -> SamplingParams {
    SamplingParams { temperature: Some(0.0), max_tokens: Some(max_tokens), ..Default::default() }
}

/// The error a generation fails with, whether the worker rejects it at once or mid-stream,
/// and how many chunks arrived before it.
async fn generation_error(client: &Client, request: GenerateRequest) -> (Error, usize) {
    let mut stream = match client.generate(request).await {
        Ok(stream) => stream,
        Err(err) => return (err, 0),
    };
    let mut chunks = 0;
    while let Some(item) = stream.next().await {
        match item.map(|response| response.event) {
            Ok(Some(Event::Chunk(_))) => chunks += 1,
            Ok(Some(Event::Final(fin))) => panic!("the generation finished: {fin:?}"),
            Ok(None) => panic!("a response without an event"),
            Err(err) => return (err, chunks),
        }
    }
    panic!("the stream ended without an error or a final message")
}

#[test]
fn generate_streams_a_chat_to_one_final() {
    let _serial = one_generation_at_a_time();
    run(async {
        let client = connect().await;
        let request = GenerateRequest::chat([
            ChatMessage::new("system", "You are a terse assistant."),
            ChatMessage::new("user", "Name three primary colors."),
        ])
        .with_sampling(SamplingParams { seed: Some(42), ..greedy(24) });

        let mut stream = client.generate(request).await.expect("Generate failed");
        let (mut text, mut text_chunks, mut token_ids, mut finals) =
            (String::new(), 0, vec![], vec![]);
        while let Some(response) = stream.message().await.expect("the stream failed") {
            match response.event.expect("a response without an event") {
                Event::Chunk(chunk) => {
                    text_chunks += usize::from(!chunk.text.is_empty());
                    text.push_str(&chunk.text);
                    token_ids.extend(chunk.token_ids);
                }
                Event::Final(fin) => finals.push(fin),
            }
        }

        assert!(text_chunks > 0, "no chunk carried text");
        assert_eq!(finals.len(), 1, "expected exactly one final message: {finals:?}");
        let fin = &finals[0];
        assert_ne!(fin.finish_reason(), FinishReason::Unspecified, "no finish reason");
        let usage = fin.usage.as_ref().expect("the final message has no usage");
        assert_eq!(usage.completion_tokens as usize, token_ids.len());
        assert!(usage.prompt_tokens > 0);
        eprintln!("{text:?} [{}]", fin.finish_reason().as_str_name());

        if let Some(path) = std::env::var_os("LLAMAGRID_PARITY_OUT").filter(|p| !p.is_empty()) {
            let ids: Vec<String> = token_ids.iter().map(i32::to_string).collect();
            std::fs::write(&path, format!("{{\"token_ids\": [{}]}}\n", ids.join(", ")))
                .unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
        }
    });
}

#[test]
fn embed_returns_unit_vectors() {
    run(async {
        let client = connect().await;
        let texts = ["The sky is blue.", "Grass is green.", "Roses are red."];
        let response = client.embed(EmbedRequest::texts(texts, true)).await.expect("Embed failed");

        assert_eq!(response.embeddings.len(), 3);
        let width = response.embeddings[0].values.len();
        assert!(width > 0, "empty embedding");
        for embedding in &response.embeddings {
            assert_eq!(embedding.values.len(), width, "vectors of different lengths");
            let norm = embedding.values.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() <= 1e-3, "norm {norm} is not 1");
        }
    });
}

#[test]
fn tokenize_and_detokenize_round_trip() {
    run(async {
        let client = connect().await;
        let text = "Hello, llamagrid!";
        let tokens = client
            .tokenize(TokenizeRequest {
                text: text.into(),
                add_special: false,
                ..Default::default()
            })
            .await
            .expect("Tokenize failed");
        assert!(!tokens.token_ids.is_empty());

        let detokenized = client
            .detokenize(DetokenizeRequest { token_ids: tokens.token_ids, ..Default::default() })
            .await
            .expect("Detokenize failed");
        assert_eq!(detokenized.text, text);
    });
}

#[test]
fn deadline_cancels_generation_on_the_worker() {
    let _serial = one_generation_at_a_time();
    run(async {
        let client = connect().await;
        let request = GenerateRequest::prompt("Count from one to one thousand: one, two,")
            .with_sampling(SamplingParams { ignore_eos: Some(true), ..greedy(2000) });

        let started = Instant::now();
        let timeout = Duration::from_millis(1500);
        let (err, chunks) = generation_error(&client.with_timeout(timeout), request).await;
        let elapsed = started.elapsed();
        assert_eq!(err.code(), Code::DeadlineExceeded, "unexpected error: {err}");
        assert!(elapsed >= Duration::from_millis(1400), "failed after only {elapsed:?}");
        assert!(elapsed < Duration::from_secs(10), "the deadline fired late: {elapsed:?}");
        eprintln!("DEADLINE_EXCEEDED after {elapsed:?} and {chunks} chunks");

        // The worker must stop generating for the abandoned request. It does so at its next
        // decode step; the bound is generous because a loaded machine stretches that step.
        let give_up = Instant::now() + Duration::from_secs(30);
        loop {
            let load = client.get_load().await.expect("GetLoad failed");
            if load.active_requests == 0 {
                break;
            }
            assert!(Instant::now() < give_up, "the worker still runs the request: {load:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

#[test]
fn invalid_temperature_is_invalid_argument() {
    let _serial = one_generation_at_a_time();
    run(async {
        let client = connect().await;
        let request = GenerateRequest::prompt("Hello")
            .with_sampling(SamplingParams { temperature: Some(-1.0), ..greedy(8) });

        let (err, _) = generation_error(&client, request).await;
        assert_eq!(err.code(), Code::InvalidArgument, "unexpected error: {err}");
        assert!(err.message().contains("temperature"), "unhelpful message: {:?}", err.message());
        assert_eq!(err.reason(), Some(reason::INVALID_VALUE), "ErrorInfo: {err:?}");
        assert_eq!(err.param(), Some("temperature"));
    });
}

#[test]
fn list_models_has_smollm2() {
    run(async {
        let client = connect().await;
        let models = client.list_models().await.expect("ListModels failed");
        let aliases: Vec<&str> = models.iter().map(|m| m.alias.as_str()).collect();
        assert_eq!(aliases, ["smollm2"]);
    });
}

#[test]
fn response_larger_than_tonic_default_limit() {
    run(async {
        let client = connect().await;
        // About 400k tokens with their pieces: a response of more than 4 MiB, tonic's default
        // limit for received messages, that only the raised 64 MiB limit lets through.
        let text = "grid ".repeat(400_000);
        let response = client
            .tokenize(TokenizeRequest { text, with_pieces: true, ..Default::default() })
            .await
            .expect("Tokenize failed");
        let bytes = prost::Message::encoded_len(&response);
        assert!(bytes > 4 << 20, "the response has only {bytes} bytes");
        assert_eq!(response.pieces.len(), response.token_ids.len());
    });
}

/// Compiles only if the calls' futures and the stream can move across threads (`tokio::spawn`).
#[allow(dead_code)]
fn calls_are_send(client: &Client) {
    fn send<T: Send>(_: T) {}
    send(client.generate(GenerateRequest::prompt("")));
    send(client.embed(EmbedRequest::default()));
    send(client.get_load());
    send(None::<llamagrid_client::GenerateStream>);
}
