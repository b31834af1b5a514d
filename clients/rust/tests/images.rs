//! Images against the live vision worker of `LLAMAGRID_VISION_WORKER_ADDR`: SmolLM2 with a test
//! projector (seeded random weights, `tests/mmproj_model.py`) that turns a 56x56 image into 16
//! tokens. The tests pass without doing anything when it is unset (Rust tests cannot report
//! themselves skipped: they print why to stderr); when it is set, `LLAMAGRID_TEST_IMAGE` must name
//! a 56x56 PNG, and `LLAMAGRID_WORKER_ADDR` a worker without a projector. The answers mean
//! nothing: the tests check that the image reached the model, through the prompt's token count.
//! Greedy decoding.

use std::time::Duration;

use llamagrid_client::{
    ChatMessage, Client, Code, ContentPart, Error, Event, GenerateFinal, GenerateRequest,
    SamplingParams,
};

mod common;
use common::run;

/// How many tokens the test projector makes of a 56x56 image (4x4 patches of 14 pixels).
const IMAGE_TOKENS: u32 = 16;
const QUESTION: &str = "What is in this picture?";

/// The vision worker's address and the test image, or `None` (after saying so) when there is no
/// vision worker to test against.
fn vision_worker(test: &str) -> Option<(String, Vec<u8>)> {
    let Some(addr) = std::env::var("LLAMAGRID_VISION_WORKER_ADDR").ok().filter(|a| !a.is_empty())
    else {
        eprintln!("{test}: skipped, LLAMAGRID_VISION_WORKER_ADDR is not set");
        return None;
    };
    let path = std::env::var("LLAMAGRID_TEST_IMAGE")
        .ok()
        .filter(|path| !path.is_empty())
        .expect("LLAMAGRID_VISION_WORKER_ADDR is set but LLAMAGRID_TEST_IMAGE is not");
    let png = std::fs::read(&path).unwrap_or_else(|err| panic!("cannot read {path}: {err}"));
    Some((addr, png))
}

async fn connect(addr: &str) -> Client {
    let client = Client::connect(addr)
        .await
        .unwrap_or_else(|err| panic!("cannot connect to the worker at {addr}: {err}"));
    // Generous: the worker may share a few busy cores with other suites.
    client.with_timeout(Duration::from_secs(120))
}

fn greedy_chat(message: ChatMessage) -> GenerateRequest {
    GenerateRequest::chat([message]).with_sampling(SamplingParams {
        temperature: Some(0.0),
        max_tokens: Some(8),
        ..Default::default()
    })
}

fn with_image(png: &[u8]) -> GenerateRequest {
    greedy_chat(ChatMessage::from_parts(
        "user",
        [ContentPart::text(QUESTION), ContentPart::image(png, "image/png")],
    ))
}

/// Runs a request to its end: its token ids and its one final message, or the error it failed
/// with (at once or mid-stream).
async fn generate(
    client: &Client,
    request: GenerateRequest,
) -> Result<(Vec<i32>, GenerateFinal), Error> {
    let mut stream = client.generate(request).await?;
    let (mut ids, mut finals) = (vec![], vec![]);
    while let Some(response) = stream.message().await? {
        match response.event.expect("a response without an event") {
            Event::Chunk(chunk) => ids.extend(chunk.token_ids),
            Event::Final(fin) => finals.push(fin),
        }
    }
    assert_eq!(finals.len(), 1, "expected exactly one final message: {finals:?}");
    let fin = finals.remove(0);
    assert_eq!(
        fin.usage.as_ref().map(|u| u.completion_tokens as usize),
        Some(ids.len()),
        "{fin:?}"
    );
    Ok((ids, fin))
}

fn prompt_tokens(fin: &GenerateFinal) -> u32 {
    fin.usage.as_ref().expect("the final message has no usage").prompt_tokens
}

#[test]
fn image_part_adds_its_tokens_to_the_prompt() {
    let Some((addr, png)) = vision_worker("image_part_adds_its_tokens_to_the_prompt") else {
        return;
    };
    run(async {
        let client = connect(&addr).await;
        let info = client.get_model_info("").await.expect("GetModelInfo failed");
        assert!(info.vision && !info.media_marker.is_empty(), "no vision: {info:?}");

        let (ids, fin) = generate(&client, with_image(&png)).await.expect("with the image");
        let text_only = ChatMessage::from_parts("user", [ContentPart::text(QUESTION)]);
        let (_, fin_text) = generate(&client, greedy_chat(text_only)).await.expect("without");
        let (with, without) = (prompt_tokens(&fin), prompt_tokens(&fin_text));
        assert_eq!(with, without + IMAGE_TOKENS, "prompt tokens with the image vs without");
        assert!(!ids.is_empty(), "nothing generated: {fin:?}");
        let (again, _) = generate(&client, with_image(&png)).await.expect("the image again");
        assert_eq!(again, ids, "the same image and prompt gave other tokens");
        println!("prompt_tokens {with} with the image, {without} without; tokens {ids:?}");
    });
}

#[test]
fn image_to_a_worker_without_projector_is_invalid_argument() {
    let Some((_, png)) = vision_worker("image_to_a_worker_without_projector_is_invalid_argument")
    else {
        return;
    };
    let addr = std::env::var("LLAMAGRID_WORKER_ADDR")
        .ok()
        .filter(|addr| !addr.is_empty())
        .expect("LLAMAGRID_WORKER_ADDR is not set: it names a worker without a projector");
    run(async {
        let plain = connect(&addr).await;
        match generate(&plain, with_image(&png)).await {
            Ok((ids, fin)) => panic!("the worker generated {ids:?}: {fin:?}"),
            Err(err) => {
                assert_eq!(err.code(), Code::InvalidArgument, "unexpected error: {err}");
                println!("refused: {:?}: {}", err.code(), err.message());
            }
        }
    });
}
