package dev.llamagrid.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import dev.llamagrid.v1.ChatConversation;
import dev.llamagrid.v1.ChatMessage;
import dev.llamagrid.v1.GenerateFinal;
import dev.llamagrid.v1.GenerateRequest;
import dev.llamagrid.v1.GenerateResponse;
import dev.llamagrid.v1.GetModelInfoRequest;
import dev.llamagrid.v1.ModelInfo;
import dev.llamagrid.v1.SamplingParams;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * Images against the live vision worker of {@code LLAMAGRID_VISION_WORKER_ADDR}: SmolLM2 with a
 * test projector (seeded random weights, {@code tests/mmproj_model.py}) that turns a 56x56 image
 * into 16 tokens. Skipped when it is unset; when it is set, {@code LLAMAGRID_TEST_IMAGE} must name
 * a 56x56 PNG, and {@code LLAMAGRID_WORKER_ADDR} a worker without a projector. The answers mean
 * nothing: the tests check that the image reached the model, through the prompt's token count.
 * Greedy decoding.
 */
class ImageWorkerTest {
  /** How many tokens the test projector makes of a 56x56 image (4x4 patches of 14 pixels). */
  private static final int IMAGE_TOKENS = 16;

  private static final String QUESTION = "What is in this picture?";

  private static byte[] png;
  private static LlamagridClient vision;

  @BeforeAll
  static void connect() throws IOException {
    String addr = System.getenv("LLAMAGRID_VISION_WORKER_ADDR");
    assumeTrue(
        addr != null && !addr.isBlank(),
        "LLAMAGRID_VISION_WORKER_ADDR is not set: no vision worker to test against");
    String image = System.getenv("LLAMAGRID_TEST_IMAGE");
    if (image == null || image.isBlank()) {
      fail("LLAMAGRID_VISION_WORKER_ADDR is set but LLAMAGRID_TEST_IMAGE is not");
    }
    png = Files.readAllBytes(Path.of(image));
    vision = LlamagridClient.connect(addr);
  }

  @AfterAll
  static void close() {
    if (vision != null) {
      vision.close();
    }
  }

  /** What one Generate stream carried. */
  private record Streamed(List<Integer> tokenIds, GenerateFinal last) {}

  /** Reads a whole Generate stream: its token ids and its one final message. */
  private static Streamed generate(LlamagridClient client, GenerateRequest request) {
    List<Integer> ids = new ArrayList<>();
    List<GenerateFinal> finals = new ArrayList<>();
    try (LlamagridClient.GenerateStream stream =
        client.withTimeout(Duration.ofMinutes(2)).generate(request)) {
      while (stream.hasNext()) {
        GenerateResponse response = stream.next();
        switch (response.getEventCase()) {
          case CHUNK -> ids.addAll(response.getChunk().getTokenIdsList());
          case FINAL -> finals.add(response.getFinal());
          default -> fail("empty GenerateResponse");
        }
      }
    }
    assertEquals(1, finals.size(), "expected exactly one final message");
    GenerateFinal last = finals.get(0);
    assertEquals(ids.size(), last.getUsage().getCompletionTokens(), "token ids streamed vs usage");
    return new Streamed(ids, last);
  }

  private static GenerateRequest greedy(ChatMessage message) {
    return GenerateRequest.newBuilder()
        .setChat(ChatConversation.newBuilder().addMessages(message))
        .setSampling(SamplingParams.newBuilder().setTemperature(0f).setMaxTokens(8))
        .build();
  }

  private static GenerateRequest withImage() {
    return greedy(
        Content.message("user", Content.text(QUESTION), Content.image(png, "image/png")));
  }

  @Test
  void anImagePartAddsItsTokensToThePrompt() {
    ModelInfo info = vision.getModelInfo(GetModelInfoRequest.getDefaultInstance()).getInfo();
    assertTrue(info.getVision(), "the vision worker does not report vision");
    assertFalse(info.getMediaMarker().isEmpty(), "the vision worker reports no media marker");

    Streamed image = generate(vision, withImage());
    Streamed text = generate(vision, greedy(Content.message("user", Content.text(QUESTION))));
    long with = image.last().getUsage().getPromptTokens();
    long without = text.last().getUsage().getPromptTokens();
    assertEquals(without + IMAGE_TOKENS, with, "prompt tokens with the image vs without");
    assertFalse(image.tokenIds().isEmpty(), "nothing generated");
    assertEquals(
        image.tokenIds(),
        generate(vision, withImage()).tokenIds(),
        "the same image and prompt gave other tokens");
    System.out.printf(
        "[images] prompt_tokens %d with the image, %d without; tokens %s%n",
        with, without, image.tokenIds());
  }

  @Test
  void anImageToAWorkerWithoutProjectorIsInvalidArgument() {
    String addr = System.getenv("LLAMAGRID_WORKER_ADDR");
    if (addr == null || addr.isBlank()) {
      fail("LLAMAGRID_WORKER_ADDR is not set: start a worker and set it to its host:port");
    }
    try (LlamagridClient plain = LlamagridClient.connect(addr)) {
      StatusRuntimeException error =
          assertThrows(StatusRuntimeException.class, () -> generate(plain, withImage()));
      assertEquals(Status.Code.INVALID_ARGUMENT, error.getStatus().getCode(), error::toString);
    }
  }
}
