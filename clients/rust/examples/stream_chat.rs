//! Streams a chat answer from a llamagrid worker to stdout, then prints the finish reason.
//!
//! ```text
//! cargo run --manifest-path clients/rust/Cargo.toml --example stream_chat -- 127.0.0.1:50051 "Why is the sky blue?"
//! ```
//!
//! Arguments: `[ADDR] [QUESTION]`. ADDR defaults to `$LLAMAGRID_WORKER_ADDR`.

use std::error::Error;
use std::io::Write;
use std::process::ExitCode;

use llamagrid_client::{ChatMessage, Client, Event, GenerateRequest, SamplingParams};

const USAGE: &str =
    "usage: stream_chat [HOST:PORT] [QUESTION] (HOST:PORT defaults to $LLAMAGRID_WORKER_ADDR)";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(addr) = args.next().or_else(|| std::env::var("LLAMAGRID_WORKER_ADDR").ok()) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let question = args.next().unwrap_or_else(|| "Name three primary colors.".to_owned());

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    match runtime.map_err(Box::from).and_then(|rt| rt.block_on(stream_chat(&addr, &question))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("stream_chat: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn stream_chat(addr: &str, question: &str) -> Result<(), Box<dyn Error>> {
    let client = Client::connect(addr).await?;
    let request = GenerateRequest::chat([
        ChatMessage::new("system", "You are a terse assistant."),
        ChatMessage::new("user", question),
    ])
    .with_sampling(SamplingParams {
        max_tokens: Some(256),
        temperature: Some(0.0),
        ..Default::default()
    });

    let mut stream = client.generate(request).await?;
    let mut stdout = std::io::stdout();
    while let Some(response) = stream.message().await? {
        match response.event {
            Some(Event::Chunk(chunk)) => {
                stdout.write_all(chunk.text.as_bytes())?;
                stdout.flush()?;
            }
            Some(Event::Final(fin)) => {
                let tokens = fin.usage.map_or(0, |usage| usage.completion_tokens);
                println!("\n[{}, {tokens} tokens]", fin.finish_reason().as_str_name());
            }
            None => {}
        }
    }
    Ok(())
}
