package dev.llamagrid.client;

import dev.llamagrid.v1.ChatMessage;
import dev.llamagrid.v1.Tool;
import dev.llamagrid.v1.ToolCall;
import dev.llamagrid.v1.ToolChoice;
import dev.llamagrid.v1.ToolChoiceMode;
import java.util.Arrays;

/**
 * Builders for tool calling: the functions a {@link dev.llamagrid.v1.GenerateRequest} offers
 * ({@code addTools}), its {@code setToolChoice}, and the turns that send a call and its result
 * back in the conversation.
 *
 * <p>A call arrives in the stream as {@link dev.llamagrid.v1.ToolCallDelta} parts of the chunks
 * ({@code getChunk().getToolCallsList()}) and, complete, in the final message ({@code
 * getFinal().getToolCallsList()}, finish reason {@code FINISH_REASON_TOOL_CALLS}).
 */
public final class Tools {
  private Tools() {}

  /**
   * A function the model may call. {@code parametersJson} is a JSON Schema of its arguments, as
   * JSON text ("" means no arguments).
   */
  public static Tool tool(String name, String description, String parametersJson) {
    return Tool.newBuilder()
        .setName(name)
        .setDescription(description)
        .setParametersJson(parametersJson)
        .build();
  }

  /** Like {@link #tool}, for a function whose arguments must validate against the schema. */
  public static Tool strictTool(String name, String description, String parametersJson) {
    return tool(name, description, parametersJson).toBuilder().setStrict(true).build();
  }

  /** A tool choice that makes the model call this function, one of the request's tools. */
  public static ToolChoice choiceFunction(String name) {
    return ToolChoice.newBuilder().setFunction(name).build();
  }

  /**
   * A tool choice of a mode: {@code TOOL_CHOICE_MODE_AUTO}, {@code TOOL_CHOICE_MODE_NONE} (answer
   * in text) or {@code TOOL_CHOICE_MODE_REQUIRED} (call at least one tool).
   */
  public static ToolChoice choiceMode(ToolChoiceMode mode) {
    return ToolChoice.newBuilder().setMode(mode).build();
  }

  /**
   * The assistant turn that made these calls (as {@code GenerateFinal.getToolCallsList()} gives
   * them), to send back in the conversation before their results.
   */
  public static ChatMessage callMessage(Iterable<ToolCall> calls) {
    return ChatMessage.newBuilder().setRole("assistant").addAllToolCalls(calls).build();
  }

  /** Like {@link #callMessage(Iterable)}. */
  public static ChatMessage callMessage(ToolCall... calls) {
    return callMessage(Arrays.asList(calls));
  }

  /** A "tool" turn: the result ({@code content}) of the call whose id is {@code callId}. */
  public static ChatMessage result(String callId, String content) {
    return ChatMessage.newBuilder()
        .setRole("tool")
        .setContent(content)
        .setToolCallId(callId)
        .build();
  }
}
