//! Session calls against the live worker of `LLAMAGRID_WORKER_ADDR` (see `worker.rs`); they fail,
//! rather than skip, when it is unset.

use std::time::{Duration, Instant};

use llamagrid_client::{
    ChatMessage, Client, Code, Error, Event, ForkSessionRequest, GenerateFinal, GenerateRequest,
    OpenSessionRequest, SamplingParams, SessionCommit, SessionRef, reason,
};

mod common;
use common::{assert_fails, connect, run};

/// Runs one greedy 8-token turn and returns its final message, or the error it failed with.
async fn turn(client: &Client, session: SessionRef, user: &str) -> Result<GenerateFinal, Error> {
    let request = GenerateRequest::chat([ChatMessage::new("user", user)])
        .with_sampling(SamplingParams {
            temperature: Some(0.0),
            max_tokens: Some(8),
            ..Default::default()
        })
        .with_session(session);
    let mut stream = client.generate(request).await?;
    let mut last = None;
    while let Some(response) = stream.message().await? {
        if let Some(Event::Final(fin)) = response.event {
            last = Some(fin);
        }
    }
    Ok(last.expect("the stream had no final message"))
}

/// Runs a turn that must succeed and returns what it committed.
async fn commit(client: &Client, session: SessionRef, user: &str) -> SessionCommit {
    let fin =
        turn(client, session, user).await.unwrap_or_else(|err| panic!("turn {user:?}: {err}"));
    let Some(session) = fin.session else { panic!("turn {user:?}: no session commit in {fin:?}") };
    session
}

/// Closes the sessions a test opened, whatever state it left them in.
async fn close_all(client: &Client, ids: &[String]) {
    for id in ids {
        if let Err(err) = client.close_session(id).await {
            assert_eq!(err.reason(), Some(reason::SESSION_NOT_FOUND), "closing {id}: {err}");
        }
    }
}

#[test]
fn session_lifecycle() {
    run(async {
        let client = connect().await;
        let opened = client.open_session(OpenSessionRequest::default()).await.expect("OpenSession");
        let id = opened.session_id.clone();
        assert!(!id.is_empty(), "no session id: {opened:?}");
        assert_eq!((opened.length, opened.turn_ends.len()), (0, 0), "{opened:?}");

        let first = commit(&client, SessionRef::new(&id), "Name one color.").await;
        assert_eq!(first.turns, 1, "{first:?}");
        assert!(first.length > 0, "the first turn committed no tokens");
        assert_eq!(first.appended_token_ids.len(), first.length as usize);
        let second = commit(&client, SessionRef::new(&id), "Name another one.").await;
        assert_eq!(second.turns, 2, "{second:?}");
        assert!(second.length > first.length, "the session did not grow: {second:?}");
        assert_eq!(second.appended_token_ids.len(), (second.length - first.length) as usize);

        let got = client.get_session(&id, true).await.expect("GetSession");
        let info = got.session.expect("GetSession returned no session");
        assert_eq!((info.session_id.as_str(), info.length), (id.as_str(), second.length));
        assert_eq!(info.turn_ends, [first.length, second.length]);
        let transcript = got.transcript.expect("GetSession returned no transcript").token_ids;
        assert_eq!(
            transcript,
            [first.appended_token_ids.clone(), second.appended_token_ids].concat()
        );

        let request = ForkSessionRequest { session_id: id.clone(), turns: 1, ..Default::default() };
        let fork = client.fork_session(request).await.expect("ForkSession");
        assert_ne!(fork.session_id, id);
        assert_eq!((fork.length, fork.turn_ends.as_slice()), (first.length, &[first.length][..]));
        let original = client.get_session(&id, false).await.expect("GetSession");
        assert_eq!(
            original.session.unwrap_or_default().length,
            second.length,
            "the fork changed it"
        );

        // expected_turns 0 is sent as set (a proto3 optional): the session has 2 turns.
        let mismatch =
            turn(&client, SessionRef::new(&id).expecting_turns(0), "Must not run.").await;
        assert_fails(mismatch, Code::Aborted, reason::SESSION_LENGTH_MISMATCH, "expecting 0 turns");
        let third = commit(&client, SessionRef::new(&id).expecting_turns(2), "And a third.").await;
        assert_eq!(third.turns, 3, "{third:?}");
        assert!(third.length > second.length, "the third turn committed no tokens: {third:?}");

        let too_far =
            client.rollback_session(&id, 4).await.expect_err("a rollback to 4 of 3 turns");
        assert_eq!(too_far.code(), Code::InvalidArgument, "{too_far}");
        let back = client.rollback_session(&id, 0).await.expect("RollbackSession");
        assert_eq!((back.length, back.turn_ends.len()), (0, 0), "{back:?}");
        let emptied = client.get_session(&id, true).await.expect("GetSession");
        assert_eq!(emptied.transcript.unwrap_or_default().token_ids, Vec::<i32>::new());

        client.close_session(&id).await.expect("CloseSession");
        let gone = client.get_session(&id, false).await;
        assert_fails(gone, Code::NotFound, reason::SESSION_NOT_FOUND, "GetSession after Close");
        let closed_turn = turn(&client, SessionRef::new(&id), "Hello?").await;
        assert_fails(closed_turn, Code::NotFound, reason::SESSION_NOT_FOUND, "a turn after Close");

        close_all(&client, &[fork.session_id]).await;
    });
}

/// A greedy turn of session `id` that runs until `max_tokens` (EOS ignored).
fn long_turn(id: &str, max_tokens: u32) -> GenerateRequest {
    GenerateRequest::chat([ChatMessage::new("user", "Count from one to one thousand.")])
        .with_sampling(SamplingParams {
            temperature: Some(0.0),
            max_tokens: Some(max_tokens),
            ignore_eos: Some(true),
            ..Default::default()
        })
        .with_session(SessionRef::new(id))
}

/// Starts a long turn, checks that a second turn is refused while it runs, cancels it and checks
/// that it committed nothing.
#[test]
fn busy_session_and_cancelled_turn() {
    run(async {
        let client = connect().await;
        let opened = client.open_session(OpenSessionRequest::default()).await.expect("OpenSession");
        let id = opened.session_id;
        let long = long_turn(&id, 2000);
        let mut stream = client.generate(long).await.expect("the long turn");
        // Once the turn has produced output, it is running.
        let first = stream.message().await.expect("the long turn failed");
        assert!(
            matches!(first.as_ref().and_then(|r| r.event.as_ref()), Some(Event::Chunk(_))),
            "the long turn did not start with a chunk: {first:?}"
        );
        let second = turn(&client, SessionRef::new(&id), "A second turn at the same time.").await;
        assert_fails(second, Code::Aborted, reason::SESSION_BUSY, "a second turn while one runs");
        drop(stream); // cancels the long turn

        // Wait for the worker to see the cancellation, then check that nothing was committed.
        let give_up = Instant::now() + Duration::from_secs(10);
        let info = loop {
            let got = client.get_session(&id, false).await.expect("GetSession");
            let info = got.session.expect("GetSession returned no session");
            if !info.busy || Instant::now() >= give_up {
                break info;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(!info.busy, "the cancelled turn still runs: {info:?}");
        assert_eq!((info.length, info.turn_ends.len()), (0, 0), "it committed: {info:?}");
        assert_eq!(commit(&client, SessionRef::new(&id), "Name one color.").await.turns, 1);

        close_all(&client, &[id]).await;
    });
}

/// Starts a long turn, cancels it with CancelTurn once it has produced output, and checks that
/// its stream ends with CANCELLED (TURN_CANCELLED), that it committed nothing, and that a second
/// CancelTurn finds no turn to cancel.
#[test]
fn cancel_turn_ends_the_running_turn() {
    run(async {
        let client = connect().await;
        let opened = client.open_session(OpenSessionRequest::default()).await.expect("OpenSession");
        let id = opened.session_id;
        let long = long_turn(&id, 400);
        // The stream runs on the worker while this task holds it.
        let mut stream = client.generate(long).await.expect("the long turn");
        let first = stream.message().await.expect("the long turn failed");
        assert!(
            matches!(first.as_ref().and_then(|r| r.event.as_ref()), Some(Event::Chunk(_))),
            "the long turn did not start with a chunk: {first:?}"
        );

        assert!(client.cancel_turn(&id).await.expect("CancelTurn"), "no turn was running");
        let ended = loop {
            match stream.message().await {
                Ok(Some(response)) => {
                    if let Some(Event::Final(fin)) = response.event {
                        panic!("the cancelled turn finished: {fin:?}");
                    }
                }
                Ok(None) => panic!("the cancelled turn's stream ended without an error"),
                Err(err) => break err,
            }
        };
        assert_eq!(
            (ended.code(), ended.reason()),
            (Code::Cancelled, Some(reason::TURN_CANCELLED)),
            "the cancelled turn's stream: {ended}"
        );

        let got = client.get_session(&id, false).await.expect("GetSession");
        let info = got.session.expect("GetSession returned no session");
        assert_eq!((info.length, info.turn_ends.len()), (0, 0), "it committed: {info:?}");
        assert!(!info.busy, "the cancelled turn still runs: {info:?}");
        assert!(
            !client.cancel_turn(&id).await.expect("CancelTurn"),
            "a second cancel found a turn"
        );

        client.close_session(&id).await.expect("CloseSession");
    });
}

#[test]
fn unknown_session_is_not_found() {
    run(async {
        let client = connect().await;
        let got = client.get_session("no-such-session", false).await;
        assert_fails(got, Code::NotFound, reason::SESSION_NOT_FOUND, "GetSession of an unknown id");
        let request =
            ForkSessionRequest { session_id: "no-such-session".into(), ..Default::default() };
        let fork = client.fork_session(request).await;
        assert_fails(
            fork,
            Code::NotFound,
            reason::SESSION_NOT_FOUND,
            "ForkSession of an unknown id",
        );
        let cancel = client.cancel_turn("no-such-session").await;
        assert_fails(
            cancel,
            Code::NotFound,
            reason::SESSION_NOT_FOUND,
            "CancelTurn of an unknown id",
        );
    });
}
