package dev.llamagrid.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import dev.llamagrid.v1.ChatConversation;
import dev.llamagrid.v1.ChatMessage;
import dev.llamagrid.v1.DetokenizeRequest;
import dev.llamagrid.v1.EmbedInput;
import dev.llamagrid.v1.EmbedRequest;
import dev.llamagrid.v1.EmbedResponse;
import dev.llamagrid.v1.Embedding;
import dev.llamagrid.v1.FinishReason;
import dev.llamagrid.v1.GenerateFinal;
import dev.llamagrid.v1.GenerateRequest;
import dev.llamagrid.v1.GenerateResponse;
import dev.llamagrid.v1.ListModelsResponse;
import dev.llamagrid.v1.SamplingParams;
import dev.llamagrid.v1.TokenizeRequest;
import dev.llamagrid.v1.TokenizeResponse;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.StreamObserver;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * Tests against a live worker whose address is in {@code LLAMAGRID_WORKER_ADDR} (host:port). They
 * fail, rather than skip, when it is unset. When {@code LLAMAGRID_PARITY_OUT} is set, the chat
 * stream test writes the token ids it received there as {@code {"token_ids": [...]}}.
 */
class LiveWorkerTest {
  private static LlamagridClient client;

  @BeforeAll
  static void connect() {
    String addr = System.getenv("LLAMAGRID_WORKER_ADDR");
    if (addr == null || addr.isBlank()) {
      fail(
          "LLAMAGRID_WORKER_ADDR is not set: start a worker and set it to its host:port, e.g. "
              + "LLAMAGRID_WORKER_ADDR=127.0.0.1:50051 mvn -B -q -f clients/java/pom.xml test");
    }
    client = LlamagridClient.connect(addr);
  }

  @AfterAll
  static void close() {
    if (client != null) {
      client.close();
    }
  }

  /** The parity request: a short greedy chat answer. */
  static GenerateRequest parityRequest() {
    return GenerateRequest.newBuilder()
        .setChat(
            ChatConversation.newBuilder()
                .addMessages(message("system", "You are a terse assistant."))
                .addMessages(message("user", "Name three primary colors.")))
        .setSampling(
            SamplingParams.newBuilder().setTemperature(0f).setSeed(42).setMaxTokens(24))
        .build();
  }

  private static ChatMessage message(String role, String content) {
    return ChatMessage.newBuilder().setRole(role).setContent(content).build();
  }

  @Test
  void streamsChatCompletion() throws IOException {
    List<Integer> tokenIds = new ArrayList<>();
    StringBuilder text = new StringBuilder();
    int textChunks = 0;
    List<GenerateFinal> finals = new ArrayList<>();
    try (LlamagridClient.GenerateStream stream = client.generate(parityRequest())) {
      while (stream.hasNext()) {
        GenerateResponse response = stream.next();
        assertTrue(finals.isEmpty(), "a message came after the final one");
        switch (response.getEventCase()) {
          case CHUNK -> {
            tokenIds.addAll(response.getChunk().getTokenIdsList());
            if (!response.getChunk().getText().isEmpty()) {
              textChunks++;
              text.append(response.getChunk().getText());
            }
          }
          case FINAL -> finals.add(response.getFinal());
          default -> fail("empty GenerateResponse");
        }
      }
    }

    assertTrue(textChunks >= 1, "no chunk carried text");
    assertEquals(1, finals.size(), "expected exactly one final message");
    GenerateFinal last = finals.get(0);
    assertNotEquals(FinishReason.FINISH_REASON_UNSPECIFIED, last.getFinishReason());
    assertTrue(last.hasUsage(), "final message has no usage");
    assertEquals(tokenIds.size(), last.getUsage().getCompletionTokens());
    assertTrue(last.getUsage().getPromptTokens() > 0);
    assertFalse(text.toString().isBlank());

    String out = System.getenv("LLAMAGRID_PARITY_OUT");
    if (out != null && !out.isEmpty()) {
      String ids = tokenIds.stream().map(String::valueOf).collect(Collectors.joining(", "));
      Files.writeString(Path.of(out), "{\"token_ids\": [" + ids + "]}\n", StandardCharsets.UTF_8);
    }
  }

  @Test
  void streamsAsynchronously() throws Exception {
    CompletableFuture<List<GenerateResponse>> done = new CompletableFuture<>();
    List<GenerateResponse> received = new ArrayList<>();
    GenerateRequest request =
        parityRequest().toBuilder()
            .setSampling(SamplingParams.newBuilder().setTemperature(0f).setMaxTokens(4))
            .build();
    client.generate(
        request,
        new StreamObserver<>() {
          @Override
          public void onNext(GenerateResponse value) {
            received.add(value);
          }

          @Override
          public void onError(Throwable t) {
            done.completeExceptionally(t);
          }

          @Override
          public void onCompleted() {
            done.complete(received);
          }
        });
    List<GenerateResponse> responses = done.get(60, TimeUnit.SECONDS);
    assertTrue(responses.size() >= 2, "expected chunks and a final message");
    assertTrue(responses.get(responses.size() - 1).hasFinal(), "stream did not end with a final");
  }

  @Test
  void embedsNormalizedBatch() {
    EmbedRequest.Builder request = EmbedRequest.newBuilder().setNormalize(true);
    for (String text : List.of("The sky is blue.", "Grass is green.", "llamagrid serves GGUF")) {
      request.addInputs(EmbedInput.newBuilder().setText(text));
    }
    EmbedResponse response = client.embed(request.build());

    assertEquals(3, response.getEmbeddingsCount());
    int width = response.getEmbeddings(0).getValuesCount();
    assertTrue(width > 0, "empty embedding");
    for (Embedding embedding : response.getEmbeddingsList()) {
      assertEquals(width, embedding.getValuesCount());
      double sumOfSquares = 0;
      for (float v : embedding.getValuesList()) {
        sumOfSquares += (double) v * v;
      }
      assertEquals(1.0, Math.sqrt(sumOfSquares), 1e-3);
    }
  }

  @Test
  void tokenizeDetokenizeRoundTrip() {
    String text = "Hello, llamagrid!";
    TokenizeResponse tokens =
        client.tokenize(TokenizeRequest.newBuilder().setText(text).setAddSpecial(false).build());
    assertTrue(tokens.getTokenIdsCount() > 0);

    String back =
        client
            .detokenize(
                DetokenizeRequest.newBuilder().addAllTokenIds(tokens.getTokenIdsList()).build())
            .getText();
    assertEquals(text, back);
  }

  @Test
  void deadlineCancelsGenerationOnTheWorker() throws InterruptedException {
    GenerateRequest request =
        GenerateRequest.newBuilder()
            .setPrompt("Write a very long story about a lighthouse keeper.")
            .setSampling(
                SamplingParams.newBuilder()
                    .setMaxTokens(2000)
                    .setIgnoreEos(true)
                    .setTemperature(0f))
            .build();

    long started = System.nanoTime();
    StatusRuntimeException error =
        assertThrows(
            StatusRuntimeException.class,
            () -> {
              try (LlamagridClient.GenerateStream stream =
                  client.withTimeout(Duration.ofMillis(1500)).generate(request)) {
                while (stream.hasNext()) {
                  stream.next();
                }
              }
            });
    long elapsedMs = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - started);
    assertEquals(Status.Code.DEADLINE_EXCEEDED, error.getStatus().getCode());
    assertTrue(elapsedMs < 10_000, "the deadline fired only after " + elapsedMs + " ms");

    // The worker must notice the cancellation and free the slot.
    long giveUp = System.nanoTime() + TimeUnit.SECONDS.toNanos(5);
    int active;
    do {
      active = client.getLoad().getActiveRequests();
      if (active == 0) {
        break;
      }
      Thread.sleep(100);
    } while (System.nanoTime() < giveUp);
    assertEquals(0, active, "the worker still generates for the expired request");
  }

  @Test
  void invalidTemperatureIsInvalidArgument() {
    GenerateRequest request =
        GenerateRequest.newBuilder()
            .setPrompt("Hello")
            .setSampling(SamplingParams.newBuilder().setTemperature(-1f).setMaxTokens(4))
            .build();

    StatusRuntimeException error =
        assertThrows(
            StatusRuntimeException.class,
            () -> {
              try (LlamagridClient.GenerateStream stream = client.generate(request)) {
                while (stream.hasNext()) {
                  stream.next();
                }
              }
            });
    assertEquals(Status.Code.INVALID_ARGUMENT, error.getStatus().getCode());
    String message = error.getStatus().getDescription();
    assertTrue(message != null && !message.isBlank(), "empty error message");
    assertTrue(message.contains("temperature"), "message does not name the field: " + message);
    assertEquals("INVALID_VALUE", LlamagridClient.errorReason(error));
    assertEquals(
        LlamagridClient.ERROR_DOMAIN, LlamagridClient.errorInfo(error).orElseThrow().getDomain());
  }

  @Test
  void listsTheOneModel() {
    ListModelsResponse models = client.listModels();
    assertEquals(1, models.getModelsCount());
    assertEquals("smollm2", models.getModels(0).getAlias());
  }

  /**
   * A request and a response both larger than gRPC's 4 MiB default limit, which only the
   * client's raised limits (64 MiB) let through. Detokenize is used because it costs the worker
   * next to nothing; a comparable embedding batch takes minutes on a small CPU.
   */
  @Test
  void exchangesMessagesLargerThanFourMebibytes() {
    String text = "Hello, llamagrid!";
    List<Integer> ids = client.tokenize(TokenizeRequest.newBuilder().setText(text).build())
        .getTokenIdsList();
    int repeats = 400_000;
    List<Integer> manyIds = new ArrayList<>(ids.size() * repeats);
    for (int i = 0; i < repeats; i++) {
      manyIds.addAll(ids);
    }
    DetokenizeRequest request = DetokenizeRequest.newBuilder().addAllTokenIds(manyIds).build();
    assertTrue(request.getSerializedSize() > 4 << 20, "request not above 4 MiB");

    String back = client.withTimeout(Duration.ofMinutes(1)).detokenize(request).getText();
    assertTrue(back.length() > 4 << 20, "response not above 4 MiB");
    assertEquals(text.repeat(repeats), back);
  }
}
