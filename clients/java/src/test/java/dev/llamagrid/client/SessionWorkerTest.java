package dev.llamagrid.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import dev.llamagrid.v1.ChatConversation;
import dev.llamagrid.v1.ChatMessage;
import dev.llamagrid.v1.ForkSessionRequest;
import dev.llamagrid.v1.GenerateFinal;
import dev.llamagrid.v1.GenerateRequest;
import dev.llamagrid.v1.GenerateResponse;
import dev.llamagrid.v1.GetSessionRequest;
import dev.llamagrid.v1.GetSessionResponse;
import dev.llamagrid.v1.OpenSessionRequest;
import dev.llamagrid.v1.RollbackSessionRequest;
import dev.llamagrid.v1.SamplingParams;
import dev.llamagrid.v1.SessionCommit;
import dev.llamagrid.v1.SessionInfo;
import dev.llamagrid.v1.SessionRef;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.function.Executable;

/**
 * Session calls against the live worker of {@code LLAMAGRID_WORKER_ADDR}; like {@link
 * LiveWorkerTest}, they fail rather than skip when it is unset.
 */
class SessionWorkerTest {
  private static LlamagridClient connection;
  /** The connection, with a deadline on every call. */
  private static LlamagridClient client;
  /** Sessions a test opened, closed after it whatever state it left them in. */
  private final List<String> opened = new ArrayList<>();

  @BeforeAll
  static void connect() {
    String addr = System.getenv("LLAMAGRID_WORKER_ADDR");
    if (addr == null || addr.isBlank()) {
      fail("LLAMAGRID_WORKER_ADDR is not set: start a worker and set it to its host:port");
    }
    connection = LlamagridClient.connect(addr);
    client = connection.withTimeout(Duration.ofMinutes(2));
  }

  @AfterAll
  static void close() {
    if (connection != null) {
      connection.close();
    }
  }

  @AfterEach
  void closeSessions() {
    for (String id : opened) {
      try {
        client.closeSession(id);
      } catch (StatusRuntimeException e) {
        assertEquals(ErrorReason.SESSION_NOT_FOUND, LlamagridClient.errorReason(e), e::toString);
      }
    }
  }

  /** Runs one greedy 8-token turn and returns its final message. */
  private static GenerateFinal turn(SessionRef session, String user) {
    GenerateRequest request =
        GenerateRequest.newBuilder()
            .setChat(
                ChatConversation.newBuilder()
                    .addMessages(ChatMessage.newBuilder().setRole("user").setContent(user)))
            .setSampling(SamplingParams.newBuilder().setTemperature(0f).setMaxTokens(8))
            .setSession(session)
            .build();
    GenerateFinal last = null;
    try (LlamagridClient.GenerateStream stream = client.generate(request)) {
      while (stream.hasNext()) {
        GenerateResponse response = stream.next();
        if (response.hasFinal()) {
          last = response.getFinal();
        }
      }
    }
    assertNotNull(last, "the stream had no final message");
    return last;
  }

  /** Runs a turn that must succeed and returns what it committed. */
  private static SessionCommit commit(SessionRef session, String user) {
    GenerateFinal last = turn(session, user);
    assertTrue(last.hasSession(), "the final message has no session commit: " + last);
    return last.getSession();
  }

  private static void assertFails(
      Status.Code code, String reason, Executable call, String what) {
    StatusRuntimeException e = assertThrows(StatusRuntimeException.class, call, what);
    assertEquals(code, e.getStatus().getCode(), what + ": " + e);
    assertEquals(reason, LlamagridClient.errorReason(e), what + ": " + e);
  }

  private static GetSessionResponse get(String id) {
    return client.getSession(
        GetSessionRequest.newBuilder().setSessionId(id).setWithTranscript(true).build());
  }

  @Test
  void sessionLifecycle() {
    SessionInfo session = client.openSession(OpenSessionRequest.getDefaultInstance());
    String id = session.getSessionId();
    opened.add(id);
    assertFalse(id.isEmpty(), "no session id");
    assertEquals(0, session.getLength());
    assertEquals(List.of(), session.getTurnEndsList());

    SessionCommit first = commit(LlamagridClient.turn(id), "Name one color.");
    assertEquals(1, first.getTurns());
    assertTrue(first.getLength() > 0, "the first turn committed no tokens");
    assertEquals(first.getLength(), first.getAppendedTokenIdsCount());
    SessionCommit second = commit(LlamagridClient.turn(id), "Name another one.");
    assertEquals(2, second.getTurns());
    assertTrue(second.getLength() > first.getLength(), "the session did not grow");
    assertEquals(second.getLength() - first.getLength(), second.getAppendedTokenIdsCount());

    GetSessionResponse got = get(id);
    assertEquals(id, got.getSession().getSessionId());
    assertEquals(second.getLength(), got.getSession().getLength());
    assertEquals(
        List.of(first.getLength(), second.getLength()), got.getSession().getTurnEndsList());
    List<Integer> appended = new ArrayList<>(first.getAppendedTokenIdsList());
    appended.addAll(second.getAppendedTokenIdsList());
    assertEquals(appended, got.getTranscript().getTokenIdsList());

    SessionInfo fork =
        client.forkSession(ForkSessionRequest.newBuilder().setSessionId(id).setTurns(1).build());
    opened.add(fork.getSessionId());
    assertNotEquals(id, fork.getSessionId());
    assertEquals(first.getLength(), fork.getLength());
    assertEquals(List.of(first.getLength()), fork.getTurnEndsList());
    assertEquals(second.getLength(), get(id).getSession().getLength(), "the fork changed it");

    // expected_turns 0 is sent as set (a proto3 optional): the session has 2 turns.
    assertFails(
        Status.Code.ABORTED,
        ErrorReason.SESSION_LENGTH_MISMATCH,
        () -> turn(LlamagridClient.turn(id, 0), "This turn must not run."),
        "a turn expecting 0 turns");
    SessionCommit third = commit(LlamagridClient.turn(id, 2), "And a third.");
    assertEquals(3, third.getTurns());
    assertTrue(third.getLength() > second.getLength(), "the third turn committed no tokens");

    StatusRuntimeException tooFar =
        assertThrows(
            StatusRuntimeException.class,
            () ->
                client.rollbackSession(
                    RollbackSessionRequest.newBuilder().setSessionId(id).setTurns(4).build()));
    assertEquals(Status.Code.INVALID_ARGUMENT, tooFar.getStatus().getCode(), tooFar::toString);
    SessionInfo back =
        client.rollbackSession(
            RollbackSessionRequest.newBuilder().setSessionId(id).setTurns(0).build());
    assertEquals(0, back.getLength());
    assertEquals(List.of(), back.getTurnEndsList());
    assertEquals(0, get(id).getTranscript().getTokenIdsCount());

    client.closeSession(id);
    assertFails(
        Status.Code.NOT_FOUND,
        ErrorReason.SESSION_NOT_FOUND,
        () -> get(id),
        "GetSession after CloseSession");
    assertFails(
        Status.Code.NOT_FOUND,
        ErrorReason.SESSION_NOT_FOUND,
        () -> turn(LlamagridClient.turn(id), "Hello?"),
        "a turn on a closed session");
  }

  /**
   * Starts a long turn, checks that a second turn is refused while it runs, cancels it and
   * checks that it committed nothing.
   */
  @Test
  void busySessionAndCancelledTurn() throws InterruptedException {
    String id = client.openSession(OpenSessionRequest.getDefaultInstance()).getSessionId();
    opened.add(id);
    GenerateRequest longTurn =
        GenerateRequest.newBuilder()
            .setChat(
                ChatConversation.newBuilder()
                    .addMessages(
                        ChatMessage.newBuilder()
                            .setRole("user")
                            .setContent("Count from one to one thousand.")))
            .setSampling(
                SamplingParams.newBuilder()
                    .setTemperature(0f)
                    .setMaxTokens(2000)
                    .setIgnoreEos(true))
            .setSession(LlamagridClient.turn(id))
            .build();
    try (LlamagridClient.GenerateStream stream = client.generate(longTurn)) {
      // Once the turn has produced output, it is running.
      assertTrue(stream.hasNext() && stream.next().hasChunk(), "the long turn produced nothing");
      assertFails(
          Status.Code.ABORTED,
          ErrorReason.SESSION_BUSY,
          () -> turn(LlamagridClient.turn(id), "A second turn at the same time."),
          "a second turn while one runs");
    } // closing the stream cancels the long turn

    // Wait for the worker to see the cancellation, then check that nothing was committed.
    SessionInfo info = get(id).getSession();
    long giveUp = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
    while (info.getBusy() && System.nanoTime() < giveUp) {
      Thread.sleep(50);
      info = get(id).getSession();
    }
    assertFalse(info.getBusy(), "the cancelled turn still runs: " + info);
    assertEquals(0, info.getLength(), "the cancelled turn committed tokens: " + info);
    assertEquals(List.of(), info.getTurnEndsList());
    assertEquals(1, commit(LlamagridClient.turn(id), "Name one color.").getTurns());
  }

  /**
   * Cancels a running turn through CancelTurn, as another caller would: its stream fails with
   * {@code CANCELLED} ({@code TURN_CANCELLED}), the session keeps no turn, and a second
   * CancelTurn finds nothing to cancel.
   */
  @Test
  void cancelTurnEndsTheRunningTurn() {
    String id = client.openSession(OpenSessionRequest.getDefaultInstance()).getSessionId();
    opened.add(id);
    assertFalse(client.cancelTurn(id), "CancelTurn with no turn running");
    GenerateRequest longTurn =
        GenerateRequest.newBuilder()
            .setChat(
                ChatConversation.newBuilder()
                    .addMessages(
                        ChatMessage.newBuilder()
                            .setRole("user")
                            .setContent("Tell me a long story about a lighthouse.")))
            .setSampling(
                SamplingParams.newBuilder().setTemperature(0f).setMaxTokens(400).setIgnoreEos(true))
            .setSession(LlamagridClient.turn(id))
            .build();
    try (LlamagridClient.GenerateStream stream = client.generate(longTurn)) {
      // The stream's messages arrive on gRPC's threads while this one waits for the first chunk.
      assertTrue(stream.hasNext() && stream.next().hasChunk(), "the long turn produced nothing");
      assertTrue(client.cancelTurn(id), "CancelTurn found no turn running");
      assertFails(
          Status.Code.CANCELLED,
          ErrorReason.TURN_CANCELLED,
          () -> {
            while (stream.hasNext()) {
              assertFalse(stream.next().hasFinal(), "the cancelled turn finished");
            }
          },
          "the rest of the cancelled turn");
    }
    SessionInfo info = get(id).getSession();
    assertFalse(info.getBusy(), "the cancelled turn still runs: " + info);
    assertEquals(0, info.getLength(), "the cancelled turn committed tokens: " + info);
    assertEquals(List.of(), info.getTurnEndsList());
    assertFalse(client.cancelTurn(id), "a second CancelTurn");
    client.closeSession(id);
  }

  @Test
  void unknownSessionIsNotFound() {
    assertFails(
        Status.Code.NOT_FOUND,
        ErrorReason.SESSION_NOT_FOUND,
        () -> get("no-such-session"),
        "GetSession of an unknown id");
    assertFails(
        Status.Code.NOT_FOUND,
        ErrorReason.SESSION_NOT_FOUND,
        () ->
            client.forkSession(
                ForkSessionRequest.newBuilder().setSessionId("no-such-session").build()),
        "ForkSession of an unknown id");
    assertFails(
        Status.Code.NOT_FOUND,
        ErrorReason.SESSION_NOT_FOUND,
        () -> client.cancelTurn("no-such-session"),
        "CancelTurn of an unknown id");
  }

  @Test
  void negativeExpectedTurnsIsRefused() {
    assertThrows(IllegalArgumentException.class, () -> LlamagridClient.turn("s", -1));
  }
}
