//! Tool calls against the live worker of `LLAMAGRID_WORKER_ADDR` (see `worker.rs`); they fail,
//! rather than skip, when it is unset.
//!
//! SmolLM2 was not trained to call tools: a tool choice naming a function makes the worker hold
//! its output to a grammar made from the tools' schemas, and parse what it wrote into
//! `GenerateFinal::tool_calls`. Greedy decoding throughout.

use std::collections::BTreeMap;

use llamagrid_client::{
    ChatMessage, Client, Code, Event, FinishReason, GenerateFinal, GenerateRequest, SamplingParams,
    Tool, ToolCall, ToolCallDelta, ToolChoice, ToolChoiceMode, reason,
};
use serde_json::{Map, Value};

mod common;
use common::{connect, run};

const WEATHER_SCHEMA: &str = r#"{
  "type": "object",
  "properties": {
    "city": {"type": "string", "maxLength": 24},
    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
  },
  "required": ["city", "unit"],
  "additionalProperties": false
}"#;
const TIME_SCHEMA: &str = r#"{"type": "object", "properties": {"zone": {"type": "string"}}}"#;
const QUESTION: &str = "What is the weather like in Paris?";
const WEATHER_RESULT: &str = r#"{"temperature": 18, "unit": "celsius"}"#;

fn tools() -> [Tool; 2] {
    [
        Tool {
            strict: true,
            ..Tool::new("get_weather", "Get the current weather in a city.", WEATHER_SCHEMA)
        },
        Tool::new("get_time", "Get the current time in a time zone.", TIME_SCHEMA),
    ]
}

fn greedy(max_tokens: u32) -> SamplingParams {
    SamplingParams { temperature: Some(0.0), max_tokens: Some(max_tokens), ..Default::default() }
}

/// What one Generate stream carried.
struct Streamed {
    /// The text of every chunk, in order.
    texts: Vec<String>,
    /// The tool-call deltas of every chunk, in order.
    deltas: Vec<ToolCallDelta>,
    /// The stream's only final message.
    fin: GenerateFinal,
}

impl Streamed {
    fn text(&self) -> String {
        self.texts.concat()
    }
}

/// Runs a request to its end: its chunks and its one final message.
async fn generate(client: &Client, request: GenerateRequest) -> Streamed {
    let mut stream = client.generate(request).await.expect("Generate failed");
    let (mut texts, mut deltas, mut token_ids, mut finals) = (vec![], vec![], 0, vec![]);
    while let Some(response) = stream.message().await.expect("the stream failed") {
        match response.event.expect("a response without an event") {
            Event::Chunk(chunk) => {
                texts.push(chunk.text);
                deltas.extend(chunk.tool_calls);
                token_ids += chunk.token_ids.len();
            }
            Event::Final(fin) => finals.push(fin),
        }
    }
    assert_eq!(finals.len(), 1, "expected exactly one final message: {finals:?}");
    let fin = finals.remove(0);
    let usage = fin.usage.as_ref().expect("the final message has no usage");
    assert_eq!(usage.completion_tokens as usize, token_ids, "{fin:?}");
    Streamed { texts, deltas, fin }
}

fn json_object(text: &str, what: &str) -> Map<String, Value> {
    match serde_json::from_str(text) {
        Ok(Value::Object(object)) => object,
        other => panic!("{what} is not a JSON object: {text:?} ({other:?})"),
    }
}

/// Checks that the streamed deltas rebuild the final message's calls: per index, the first
/// delta carries the call's id and name, the later ones only fragments of its arguments, and
/// the fragments join to the same JSON as the call's arguments.
fn check_deltas(deltas: &[ToolCallDelta], calls: &[ToolCall]) {
    let mut by_index: BTreeMap<u32, Vec<&ToolCallDelta>> = BTreeMap::new();
    for delta in deltas {
        by_index.entry(delta.index).or_default().push(delta);
    }
    let indexes: Vec<u32> = by_index.keys().copied().collect();
    let expected: Vec<u32> = (0..).take(calls.len()).collect();
    assert_eq!(indexes, expected, "delta indexes for {} calls", calls.len());
    for (call, parts) in calls.iter().zip(by_index.values()) {
        let (first, later) = parts.split_first().expect("no deltas for a call");
        assert_eq!((&first.id, &first.name), (&call.id, &call.name), "first delta of {call:?}");
        for delta in later {
            assert!(delta.id.is_empty() && delta.name.is_empty(), "a later delta: {delta:?}");
        }
        let joined: String = parts.iter().map(|delta| delta.arguments.as_str()).collect();
        assert_eq!(
            json_object(&joined, "the joined argument fragments"),
            json_object(&call.arguments, "the call's arguments"),
            "fragments {joined:?} against {:?}",
            call.arguments
        );
    }
}

#[test]
fn named_function_is_called_then_its_result_answered() {
    run(async {
        let client = connect().await;
        let question = ChatMessage::new("user", QUESTION);
        let request = GenerateRequest::chat([question.clone()])
            .with_tools(tools())
            .with_tool_choice(ToolChoice::function("get_weather"))
            .with_sampling(greedy(64));
        let tool_names: Vec<String> = request.tools.iter().map(|tool| tool.name.clone()).collect();

        // Turn 1: the call, streamed in parts, then complete in the final message.
        let first = generate(&client, request).await;
        let fin = &first.fin;
        assert_eq!(fin.finish_reason(), FinishReason::ToolCalls, "{fin:?}");
        let [call] = fin.tool_calls.as_slice() else {
            panic!("expected exactly one call: {:?}", fin.tool_calls)
        };
        assert_eq!(call.name, "get_weather");
        assert!(
            call.id.len() == 29
                && call.id.starts_with("call_")
                && call.id[5..].chars().all(|c| c.is_ascii_alphanumeric()),
            "not a call id: {:?}",
            call.id
        );
        let arguments = json_object(&call.arguments, "the call's arguments");
        let keys: Vec<&str> = arguments.keys().map(String::as_str).collect();
        assert_eq!(keys, ["city", "unit"], "additionalProperties is false: {arguments:?}");
        let city = arguments["city"].as_str().expect("city is not a string");
        assert!(city.chars().count() <= 24, "city longer than its maxLength: {city:?}");
        let unit = arguments["unit"].as_str().expect("unit is not a string");
        assert!(["celsius", "fahrenheit"].contains(&unit), "unit outside its enum: {unit:?}");
        check_deltas(&first.deltas, &fin.tool_calls);
        for text in &first.texts {
            assert!(text.trim().is_empty(), "a chunk's text carries the call: {text:?}");
        }

        // Turn 2: the conversation with the call and its result; the model answers in text.
        let messages = [
            question,
            ChatMessage::assistant_tool_calls([call.clone()]),
            ChatMessage::tool_result(&call.id, WEATHER_RESULT),
        ];
        let request = GenerateRequest::chat(messages)
            .with_tools(tools())
            .with_tool_choice(ToolChoice::mode(ToolChoiceMode::None))
            .with_sampling(greedy(48));
        let second = generate(&client, request).await;
        let answer = second.text();
        let fin2 = &second.fin;
        assert!(
            matches!(
                fin2.finish_reason(),
                FinishReason::Eos | FinishReason::StopString | FinishReason::Length
            ),
            "{fin2:?}"
        );
        assert!(fin2.tool_calls.is_empty() && second.deltas.is_empty(), "calls: {fin2:?}");
        assert!(!answer.trim().is_empty(), "no answer text: {fin2:?}");
        // More than the question alone: the first turn's prompt is no baseline, since SmolLM2's
        // template reads no tools and the worker described them there (tool choice none: not).
        let prompt_tokens = |fin: &GenerateFinal| fin.usage.as_ref().map(|u| u.prompt_tokens);
        let alone = generate(
            &client,
            GenerateRequest::chat([ChatMessage::new("user", QUESTION)]).with_sampling(greedy(1)),
        )
        .await;
        assert!(
            prompt_tokens(fin2) > prompt_tokens(&alone.fin),
            "the call and its result were not rendered: {:?} then {:?} prompt tokens",
            prompt_tokens(&alone.fin),
            prompt_tokens(fin2)
        );

        println!("tools offered: {}; tool_choice: function get_weather", tool_names.join(", "));
        println!("user: {QUESTION}");
        println!(
            "assistant calls {} (id {}) with {} [{}, {} argument fragments]",
            call.name,
            call.id,
            call.arguments,
            fin.finish_reason().as_str_name(),
            first.deltas.len()
        );
        println!("tool ({}): {WEATHER_RESULT}", call.id);
        println!("assistant: {answer:?} [{}]", fin2.finish_reason().as_str_name());
    });
}

#[test]
fn naming_a_function_not_offered_is_invalid_argument() {
    run(async {
        let client = connect().await;
        let request = GenerateRequest::chat([ChatMessage::new("user", QUESTION)])
            .with_tools(tools())
            .with_tool_choice(ToolChoice::function("get_stock_price"))
            .with_sampling(greedy(16));

        let err = match client.generate(request).await {
            Err(err) => err,
            // A refusal may also arrive as the stream's first message.
            Ok(mut stream) => match stream.message().await {
                Err(err) => err,
                Ok(response) => panic!("the worker accepted the request: {response:?}"),
            },
        };
        assert_eq!(err.code(), Code::InvalidArgument, "unexpected error: {err}");
        assert_eq!(err.reason(), Some(reason::INVALID_VALUE), "ErrorInfo: {err:?}");
        assert_eq!(err.param(), Some("tool_choice"), "{err:?}");
        assert!(err.message().contains("get_stock_price"), "unhelpful: {:?}", err.message());
        println!("tool_choice get_stock_price refused: {:?}: {}", err.code(), err.message());
    });
}
