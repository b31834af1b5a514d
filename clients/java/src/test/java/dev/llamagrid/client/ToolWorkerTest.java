package dev.llamagrid.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import dev.llamagrid.v1.ChatConversation;
import dev.llamagrid.v1.ChatMessage;
import dev.llamagrid.v1.FinishReason;
import dev.llamagrid.v1.GenerateChunk;
import dev.llamagrid.v1.GenerateFinal;
import dev.llamagrid.v1.GenerateRequest;
import dev.llamagrid.v1.GenerateResponse;
import dev.llamagrid.v1.SamplingParams;
import dev.llamagrid.v1.Tool;
import dev.llamagrid.v1.ToolCall;
import dev.llamagrid.v1.ToolCallDelta;
import dev.llamagrid.v1.ToolChoiceMode;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Set;
import java.util.TreeMap;
import java.util.stream.Collectors;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * Tool calls against the live worker of {@code LLAMAGRID_WORKER_ADDR} (SmolLM2 under its own chat
 * template); like {@link LiveWorkerTest}, they fail rather than skip when it is unset. SmolLM2 was
 * not trained to call tools: a tool choice naming a function makes the worker hold its output to
 * a grammar made from the tools' schemas, so even it makes a valid call. Greedy decoding.
 */
class ToolWorkerTest {
  private static final Tool WEATHER =
      Tools.strictTool(
          "get_weather",
          "Get the current weather in a city.",
          "{\"type\": \"object\", \"properties\": {"
              + "\"city\": {\"type\": \"string\", \"maxLength\": 24}, "
              + "\"unit\": {\"type\": \"string\", \"enum\": [\"celsius\", \"fahrenheit\"]}}, "
              + "\"required\": [\"city\", \"unit\"], \"additionalProperties\": false}");
  private static final Tool TIME =
      Tools.tool(
          "get_time",
          "Get the current time in a time zone.",
          "{\"type\": \"object\", \"properties\": {\"zone\": {\"type\": \"string\"}}}");
  private static final ChatMessage QUESTION =
      ChatMessage.newBuilder()
          .setRole("user")
          .setContent("What is the weather like in Paris?")
          .build();

  private static LlamagridClient connection;
  /** The connection, with a deadline on every call. */
  private static LlamagridClient client;

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

  /** What one Generate stream carried. */
  private record Streamed(
      String text, List<ToolCallDelta> deltas, int tokens, GenerateFinal last) {}

  /** Reads a whole Generate stream: its text, tool-call parts and the one final message. */
  private static Streamed generate(GenerateRequest request) {
    StringBuilder text = new StringBuilder();
    List<ToolCallDelta> deltas = new ArrayList<>();
    int tokens = 0;
    List<GenerateFinal> finals = new ArrayList<>();
    try (LlamagridClient.GenerateStream stream = client.generate(request)) {
      while (stream.hasNext()) {
        GenerateResponse response = stream.next();
        assertTrue(finals.isEmpty(), "a message came after the final one");
        switch (response.getEventCase()) {
          case CHUNK -> {
            GenerateChunk chunk = response.getChunk();
            text.append(chunk.getText());
            deltas.addAll(chunk.getToolCallsList());
            tokens += chunk.getTokenIdsCount();
          }
          case FINAL -> finals.add(response.getFinal());
          default -> fail("empty GenerateResponse");
        }
      }
    }
    assertEquals(1, finals.size(), "expected exactly one final message");
    GenerateFinal last = finals.get(0);
    assertEquals(tokens, last.getUsage().getCompletionTokens(), "token ids streamed vs usage");
    return new Streamed(text.toString(), deltas, tokens, last);
  }

  private static GenerateRequest.Builder chat(int maxTokens, ChatMessage... messages) {
    return GenerateRequest.newBuilder()
        .setChat(ChatConversation.newBuilder().addAllMessages(List.of(messages)))
        .setSampling(SamplingParams.newBuilder().setTemperature(0f).setMaxTokens(maxTokens));
  }

  /**
   * Checks that the streamed parts of the call at {@code index} make up {@code call}: the first
   * carries its id and name (and later ones neither), and their argument fragments join to the
   * same JSON as its arguments.
   */
  private static void assertStreamedAs(ToolCall call, int index, List<ToolCallDelta> deltas) {
    List<ToolCallDelta> parts =
        deltas.stream().filter(d -> d.getIndex() == index).collect(Collectors.toList());
    assertFalse(parts.isEmpty(), "no delta streamed for call " + index);
    assertEquals(call.getId(), parts.get(0).getId(), "id on the first delta");
    assertEquals(call.getName(), parts.get(0).getName(), "name on the first delta");
    for (ToolCallDelta later : parts.subList(1, parts.size())) {
      assertEquals("", later.getId(), "a later delta repeats the id");
      assertEquals("", later.getName(), "a later delta repeats the name");
    }
    String joined = parts.stream().map(ToolCallDelta::getArguments).collect(Collectors.joining());
    // The same JSON value: the fragments are the model's text, the final call's arguments the
    // worker's re-serialization of it (whitespace may differ).
    assertEquals(
        JsonParser.parseString(call.getArguments()),
        JsonParser.parseString(joined),
        () -> "argument fragments " + joined + " vs the final call's " + call.getArguments());
  }

  @Test
  void callsTheNamedFunctionThenAnswersWithItsResult() {
    // Turn 1: the model must call get_weather.
    GenerateRequest first =
        chat(64, QUESTION)
            .addTools(WEATHER)
            .addTools(TIME)
            .setToolChoice(Tools.choiceFunction("get_weather"))
            .build();
    Streamed called = generate(first);

    GenerateFinal last = called.last();
    assertEquals(FinishReason.FINISH_REASON_TOOL_CALLS, last.getFinishReason());
    assertEquals(1, last.getToolCallsCount(), () -> "calls: " + last.getToolCallsList());
    ToolCall call = last.getToolCalls(0);
    assertEquals("get_weather", call.getName());
    assertFalse(call.getId().isEmpty(), "the call has no id");
    JsonElement parsed = JsonParser.parseString(call.getArguments());
    assertTrue(parsed.isJsonObject(), "arguments are not an object: " + call.getArguments());
    JsonObject arguments = parsed.getAsJsonObject();
    assertEquals(Set.of("city", "unit"), arguments.keySet(), call::getArguments);
    JsonElement city = arguments.get("city");
    assertTrue(
        city.isJsonPrimitive() && city.getAsJsonPrimitive().isString(), "city is not a string");
    assertTrue(city.getAsString().length() <= 24, "city longer than its maxLength");
    assertTrue(
        Set.of("celsius", "fahrenheit").contains(arguments.get("unit").getAsString()),
        () -> "unit not in the enum: " + arguments.get("unit"));
    // The call came as deltas, never as text.
    assertStreamedAs(call, 0, called.deltas());
    assertTrue(
        called.deltas().stream().allMatch(d -> d.getIndex() == 0), "deltas of a second call");
    assertTrue(called.text().isBlank(), () -> "call markup in the text: " + called.text());

    // Turn 2: the conversation, the call and its result; the model answers in text.
    String result = "{\"temperature\": 18, \"unit\": \"celsius\"}";
    GenerateRequest second =
        chat(
                32,
                QUESTION,
                Tools.callMessage(last.getToolCallsList()),
                Tools.result(call.getId(), result))
            .addTools(WEATHER)
            .addTools(TIME)
            .setToolChoice(Tools.choiceMode(ToolChoiceMode.TOOL_CHOICE_MODE_NONE))
            .build();
    Streamed answered = generate(second);

    GenerateFinal end = answered.last();
    assertTrue(
        end.getFinishReason() == FinishReason.FINISH_REASON_EOS
            || end.getFinishReason() == FinishReason.FINISH_REASON_LENGTH,
        () -> "finish reason " + end.getFinishReason());
    assertEquals(0, end.getToolCallsCount(), () -> "calls: " + end.getToolCallsList());
    assertTrue(answered.deltas().isEmpty(), "tool-call deltas with tool choice none");
    assertTrue(answered.tokens() > 0, "the second turn generated nothing");
    assertFalse(answered.text().isBlank(), "the second turn has no text");
    // More than the question alone: the first turn's prompt is no baseline, since SmolLM2's
    // template reads no tools and the worker described them there (tool choice none: not).
    GenerateFinal alone = generate(chat(1, QUESTION).build()).last();
    assertTrue(
        end.getUsage().getPromptTokens() > alone.getUsage().getPromptTokens(),
        "the second turn's prompt is not longer than the question alone");

    // A transcript, for the record.
    String names =
        first.getToolsList().stream().map(Tool::getName).collect(Collectors.joining(", "));
    System.out.printf(
        "[tools] request: tools %s; tool_choice function %s%n",
        names, first.getToolChoice().getFunction());
    System.out.printf(
        "[tools] call: id=%s name=%s arguments=%s (%d deltas, %s)%n",
        call.getId(),
        call.getName(),
        call.getArguments(),
        called.deltas().size(),
        last.getFinishReason());
    System.out.printf("[tools] tool result: %s%n", result);
    System.out.printf(
        "[tools] second turn (%s): %s%n", end.getFinishReason(), answered.text().strip());
  }

  @Test
  void aToolChoiceNamingAnUnknownFunctionIsInvalidArgument() {
    GenerateRequest request =
        chat(8, QUESTION)
            .addTools(WEATHER)
            .addTools(TIME)
            .setToolChoice(Tools.choiceFunction("get_stock_price"))
            .build();
    StatusRuntimeException error =
        assertThrows(StatusRuntimeException.class, () -> generate(request));
    assertEquals(Status.Code.INVALID_ARGUMENT, error.getStatus().getCode());
    String message = error.getStatus().getDescription();
    assertTrue(
        message != null && message.contains("get_stock_price"),
        "message does not name the function: " + message);
    assertEquals(ErrorReason.INVALID_VALUE, LlamagridClient.errorReason(error));
    assertEquals(
        "tool_choice",
        LlamagridClient.errorInfo(error).orElseThrow().getMetadataOrDefault("param", ""));
  }
}
