package dev.llamagrid.examples;

import dev.llamagrid.client.LlamagridClient;
import dev.llamagrid.v1.ChatConversation;
import dev.llamagrid.v1.ChatMessage;
import dev.llamagrid.v1.GenerateRequest;
import dev.llamagrid.v1.GenerateResponse;
import dev.llamagrid.v1.SamplingParams;
import io.grpc.StatusRuntimeException;
import java.time.Duration;

/**
 * Streams a chat answer from a llamagrid worker to stdout, then prints why it finished.
 *
 * <p>Usage: {@code StreamChat [HOST:PORT] [QUESTION]}. The address defaults to
 * {@code LLAMAGRID_WORKER_ADDR}, the question to a short one.
 */
public final class StreamChat {
  private StreamChat() {}

  public static void main(String[] args) {
    String addr = args.length > 0 ? args[0] : System.getenv("LLAMAGRID_WORKER_ADDR");
    String question = args.length > 1 ? args[1] : "Name three primary colors.";
    if (addr == null || addr.isBlank()) {
      System.err.println("usage: StreamChat HOST:PORT [QUESTION] (or set LLAMAGRID_WORKER_ADDR)");
      System.exit(2);
    }

    GenerateRequest request =
        GenerateRequest.newBuilder()
            .setChat(
                ChatConversation.newBuilder()
                    .addMessages(
                        ChatMessage.newBuilder()
                            .setRole("system")
                            .setContent("You are a terse assistant."))
                    .addMessages(ChatMessage.newBuilder().setRole("user").setContent(question)))
            .setSampling(SamplingParams.newBuilder().setTemperature(0.7f).setMaxTokens(128))
            .build();

    try (LlamagridClient client = LlamagridClient.connect(addr);
        LlamagridClient.GenerateStream stream =
            client.withTimeout(Duration.ofMinutes(2)).generate(request)) {
      while (stream.hasNext()) {
        GenerateResponse response = stream.next();
        if (response.hasChunk()) {
          System.out.print(response.getChunk().getText());
          System.out.flush();
        } else if (response.hasFinal()) {
          System.out.println();
          System.out.printf(
              "[finish_reason=%s, completion_tokens=%d]%n",
              response.getFinal().getFinishReason(),
              response.getFinal().getUsage().getCompletionTokens());
        }
      }
    } catch (StatusRuntimeException e) {
      String reason = LlamagridClient.errorReason(e);
      System.err.printf(
          "%nrequest failed: %s%s%n", e.getStatus(), reason.isEmpty() ? "" : " (" + reason + ")");
      System.exit(1);
    }
  }
}
