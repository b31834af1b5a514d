package dev.llamagrid.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import dev.llamagrid.v1.ApplyChatTemplateRequest;
import dev.llamagrid.v1.ChatConversation;
import dev.llamagrid.v1.ChatMessage;
import dev.llamagrid.v1.EraseSlotRequest;
import dev.llamagrid.v1.GetSlotsRequest;
import dev.llamagrid.v1.ListLoraAdaptersRequest;
import dev.llamagrid.v1.LoraScale;
import dev.llamagrid.v1.RestoreSlotRequest;
import dev.llamagrid.v1.SaveSlotRequest;
import dev.llamagrid.v1.SetLoraAdaptersRequest;
import dev.llamagrid.v1.SlotState;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.time.Duration;
import java.util.List;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.function.Executable;

/**
 * The chat template, LoRA adapter and slot calls against the live worker of {@code
 * LLAMAGRID_WORKER_ADDR} (SmolLM2 and its ChatML template, no adapters, no {@code
 * --slot-save-path}); like {@link LiveWorkerTest}, they fail rather than skip when it is unset.
 */
class ControlWorkerTest {
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

  private static void assertFails(
      Status.Code code, String reason, Executable call, String what) {
    StatusRuntimeException e = assertThrows(StatusRuntimeException.class, call, what);
    assertEquals(code, e.getStatus().getCode(), what + ": " + e);
    assertEquals(reason, LlamagridClient.errorReason(e), what + ": " + e);
  }

  @Test
  void applyChatTemplateRendersTheConversation() {
    String question = "Which planet is known as the red planet?";
    String prompt =
        client.applyChatTemplate(
            ApplyChatTemplateRequest.newBuilder()
                .setChat(
                    ChatConversation.newBuilder()
                        .addMessages(ChatMessage.newBuilder().setRole("user").setContent(question)))
                .build());
    assertTrue(prompt.contains(question), "the prompt lacks the message: " + prompt);
    assertTrue(prompt.contains("<|im_start|>user"), "the prompt is not ChatML: " + prompt);
    assertTrue(
        prompt.stripTrailing().endsWith("<|im_start|>assistant"),
        "the prompt does not open the assistant's turn: " + prompt);

    assertFails(
        Status.Code.INVALID_ARGUMENT,
        ErrorReason.INVALID_VALUE,
        () -> client.applyChatTemplate(ApplyChatTemplateRequest.getDefaultInstance()),
        "a conversation without messages");
  }

  @Test
  void plainWorkerHasNoLoraAdapters() {
    assertEquals(
        List.of(), client.listLoraAdapters(ListLoraAdaptersRequest.getDefaultInstance()));
    // Setting no scale at all sets every adapter (none here) to 0.
    assertEquals(List.of(), client.setLoraAdapters(SetLoraAdaptersRequest.getDefaultInstance()));
    StatusRuntimeException e =
        assertThrows(
            StatusRuntimeException.class,
            () ->
                client.setLoraAdapters(
                    SetLoraAdaptersRequest.newBuilder()
                        .addAdapters(LoraScale.newBuilder().setId(0).setScale(1f))
                        .build()),
            "an adapter id the worker does not have");
    assertEquals(Status.Code.INVALID_ARGUMENT, e.getStatus().getCode(), e::toString);
    assertEquals(ErrorReason.INVALID_VALUE, LlamagridClient.errorReason(e), e::toString);
    assertEquals(
        "adapters",
        LlamagridClient.errorInfo(e).orElseThrow().getMetadataOrDefault("param", ""),
        e::toString);
  }

  @Test
  void slotsMatchTheLoadAndSlotFilesAreOff() {
    int slots = client.getLoad().getSlots();
    List<SlotState> states = client.getSlots(GetSlotsRequest.getDefaultInstance());
    assertTrue(slots > 0, "the worker reports no slots");
    assertEquals(slots, states.size(), "GetSlots: " + states);
    for (int i = 0; i < states.size(); i++) {
      SlotState state = states.get(i);
      assertEquals(i, state.getId(), "slots out of id order: " + states);
      assertTrue(state.getNCtx() > 0, "a slot without context: " + state);
      assertFalse(state.getProcessing() && state.getRequestId().isEmpty(), state::toString);
    }

    assertFails(
        Status.Code.FAILED_PRECONDITION,
        ErrorReason.SLOT_FILES_OFF,
        () -> client.saveSlot(SaveSlotRequest.newBuilder().setId(0).setFilename("s0.bin").build()),
        "SaveSlot without --slot-save-path");
    assertFails(
        Status.Code.FAILED_PRECONDITION,
        ErrorReason.SLOT_FILES_OFF,
        () ->
            client.restoreSlot(
                RestoreSlotRequest.newBuilder().setId(0).setFilename("s0.bin").build()),
        "RestoreSlot without --slot-save-path");
    assertFails(
        Status.Code.FAILED_PRECONDITION,
        ErrorReason.SLOT_FILES_OFF,
        () -> client.eraseSlot(EraseSlotRequest.newBuilder().setId(0).build()),
        "EraseSlot without --slot-save-path");
  }
}
