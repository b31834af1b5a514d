package dev.llamagrid.client;

import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.ErrorInfo;
import dev.llamagrid.v1.ApplyChatTemplateRequest;
import dev.llamagrid.v1.CancelTurnRequest;
import dev.llamagrid.v1.CloseSessionRequest;
import dev.llamagrid.v1.DetokenizeRequest;
import dev.llamagrid.v1.DetokenizeResponse;
import dev.llamagrid.v1.EmbedRequest;
import dev.llamagrid.v1.EmbedResponse;
import dev.llamagrid.v1.EraseSlotRequest;
import dev.llamagrid.v1.EraseSlotResponse;
import dev.llamagrid.v1.ForkSessionRequest;
import dev.llamagrid.v1.GenerateRequest;
import dev.llamagrid.v1.GenerateResponse;
import dev.llamagrid.v1.GetLoadRequest;
import dev.llamagrid.v1.GetLoadResponse;
import dev.llamagrid.v1.GetModelInfoRequest;
import dev.llamagrid.v1.GetModelInfoResponse;
import dev.llamagrid.v1.GetSessionRequest;
import dev.llamagrid.v1.GetSessionResponse;
import dev.llamagrid.v1.GetSlotsRequest;
import dev.llamagrid.v1.InferenceServiceGrpc;
import dev.llamagrid.v1.ListLoraAdaptersRequest;
import dev.llamagrid.v1.ListModelsRequest;
import dev.llamagrid.v1.ListModelsResponse;
import dev.llamagrid.v1.LoraAdapter;
import dev.llamagrid.v1.OpenSessionRequest;
import dev.llamagrid.v1.RestoreSlotRequest;
import dev.llamagrid.v1.RestoreSlotResponse;
import dev.llamagrid.v1.RollbackSessionRequest;
import dev.llamagrid.v1.SaveSlotRequest;
import dev.llamagrid.v1.SaveSlotResponse;
import dev.llamagrid.v1.SessionInfo;
import dev.llamagrid.v1.SessionRef;
import dev.llamagrid.v1.SessionServiceGrpc;
import dev.llamagrid.v1.SetLoraAdaptersRequest;
import dev.llamagrid.v1.SlotState;
import dev.llamagrid.v1.TokenizeRequest;
import dev.llamagrid.v1.TokenizeResponse;
import io.grpc.ChannelCredentials;
import io.grpc.Context;
import io.grpc.Grpc;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.protobuf.StatusProto;
import io.grpc.stub.StreamObserver;
import java.time.Duration;
import java.util.Iterator;
import java.util.List;
import java.util.Optional;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;

/**
 * A client for one llamagrid worker ({@code llamagrid.v1.InferenceService} and {@code
 * SessionService}).
 *
 * <p>{@link #connect(String)} opens a plaintext channel with the llamagrid defaults:
 *
 * <ul>
 *   <li>messages up to {@value #MAX_MESSAGE_BYTES} bytes (64 MiB) sent and received;
 *   <li>a keepalive ping every 30 s, even without calls, answered within 10 s (the worker accepts
 *       pings no closer than 10 s apart);
 *   <li>reconnection attempts at most 5 s apart while the worker is unreachable.
 * </ul>
 *
 * <p>{@link #connect(String, ChannelCredentials)} does the same over TLS, with a client
 * certificate (mTLS) or a token as {@link WorkerCredentials} describe.
 *
 * <p>Calls have no deadline unless one is set with {@link #withTimeout(Duration)}. Failures are
 * thrown as {@link io.grpc.StatusRuntimeException}; {@link #errorReason(Throwable)} reads the
 * worker's {@code google.rpc.ErrorInfo} reason (such as {@code INVALID_VALUE}) from it.
 *
 * <p>A client is thread-safe. Close the client returned by {@link #connect(String)} when done;
 * views made by {@link #withTimeout(Duration)} share its channel and need no closing.
 */
public final class LlamagridClient implements AutoCloseable {
  /** The largest message sent or accepted: 64 MiB. */
  public static final int MAX_MESSAGE_BYTES = 64 * 1024 * 1024;
  /** How often an idle connection is pinged. */
  public static final Duration KEEPALIVE_TIME = Duration.ofSeconds(30);
  /** How long a ping may go unanswered before the connection is dropped. */
  public static final Duration KEEPALIVE_TIMEOUT = Duration.ofSeconds(10);
  /** The longest wait between two attempts to reach an unreachable worker. */
  public static final Duration MAX_RECONNECT_BACKOFF = Duration.ofSeconds(5);
  /** The {@code ErrorInfo} domain of every llamagrid error. */
  public static final String ERROR_DOMAIN = "llamagrid.dev";

  private final ManagedChannel channel;
  private final ScheduledExecutorService backoffTimer; // null when the channel is not ours
  private final Duration timeout; // null: no deadline

  private LlamagridClient(
      ManagedChannel channel, ScheduledExecutorService backoffTimer, Duration timeout) {
    this.channel = channel;
    this.backoffTimer = backoffTimer;
    this.timeout = timeout;
  }

  /**
   * Wraps a channel built by the caller, who keeps ownership of it: {@link #close()} leaves it
   * open. Use {@link #channelBuilder(String)} to get the llamagrid defaults.
   */
  public LlamagridClient(ManagedChannel channel) {
    this(channel, null, null);
  }

  /** Connects to a worker at {@code target} ("host:port" or any gRPC target URI), in plaintext. */
  public static LlamagridClient connect(String target) {
    return open(channelBuilder(target).build());
  }

  /**
   * Connects to a worker at {@code target} with these credentials, typically TLS from {@link
   * WorkerCredentials#tls()}, with the same defaults as {@link #connect(String)}.
   *
   * @throws IllegalArgumentException if the credentials cannot be used (such as a certificate or
   *     key that is not valid PEM)
   */
  public static LlamagridClient connect(String target, ChannelCredentials credentials) {
    return open(channelBuilder(target, credentials).build());
  }

  private static LlamagridClient open(ManagedChannel channel) {
    return new LlamagridClient(channel, Channels.capReconnectBackoff(channel), null);
  }

  /**
   * A plaintext channel builder with the llamagrid message-size and keepalive defaults. The
   * outbound limit is applied per call by this class, as grpc-java has no channel-wide one, and
   * the 5 s reconnect cap only comes with {@link #connect(String)}.
   */
  public static ManagedChannelBuilder<?> channelBuilder(String target) {
    return Channels.withDefaults(ManagedChannelBuilder.forTarget(target).usePlaintext());
  }

  /**
   * A channel builder with these credentials (see {@link WorkerCredentials}) and the llamagrid
   * defaults of {@link #channelBuilder(String)}.
   *
   * @throws IllegalArgumentException if the credentials cannot be used
   */
  public static ManagedChannelBuilder<?> channelBuilder(
      String target, ChannelCredentials credentials) {
    return Channels.withDefaults(Grpc.newChannelBuilder(target, credentials));
  }

  /**
   * A view of this client whose calls each get a deadline {@code timeout} after they start. It
   * shares this client's channel; closing it does nothing.
   */
  public LlamagridClient withTimeout(Duration timeout) {
    return new LlamagridClient(channel, null, timeout);
  }

  /** The channel, for stubs of other services (such as {@code grpc.health.v1.Health}). */
  public ManagedChannel channel() {
    return channel;
  }

  /** A blocking stub with this client's message limit and deadline. */
  public InferenceServiceGrpc.InferenceServiceBlockingStub blockingStub() {
    return Channels.configure(InferenceServiceGrpc.newBlockingStub(channel), timeout);
  }

  /** An async stub with this client's message limit and deadline. */
  public InferenceServiceGrpc.InferenceServiceStub asyncStub() {
    return Channels.configure(InferenceServiceGrpc.newStub(channel), timeout);
  }

  /** A blocking stub of the session service with this client's message limit and deadline. */
  public SessionServiceGrpc.SessionServiceBlockingStub sessionStub() {
    return Channels.configure(SessionServiceGrpc.newBlockingStub(channel), timeout);
  }

  /**
   * Starts a generation and returns its stream: chunks, then one final message. Iterating blocks
   * until the next message; a failure is thrown from {@code hasNext()}/{@code next()} as a
   * {@link io.grpc.StatusRuntimeException}. Close the stream to cancel the generation early
   * (try-with-resources); a fully read stream needs no closing.
   */
  public GenerateStream generate(GenerateRequest request) {
    Context.CancellableContext context = Context.current().withCancellation();
    Context previous = context.attach();
    try {
      return new GenerateStream(blockingStub().generate(request), context);
    } finally {
      context.detach(previous);
    }
  }

  /**
   * Starts a generation whose messages go to {@code observer}, on gRPC's threads. Pass an
   * {@link io.grpc.stub.ClientResponseObserver} to get the call's handle and cancel it.
   */
  public void generate(GenerateRequest request, StreamObserver<GenerateResponse> observer) {
    asyncStub().generate(request, observer);
  }

  /** Embeds a batch of texts or token lists. */
  public EmbedResponse embed(EmbedRequest request) {
    return blockingStub().embed(request);
  }

  /** Turns text into token ids. */
  public TokenizeResponse tokenize(TokenizeRequest request) {
    return blockingStub().tokenize(request);
  }

  /** Turns token ids back into text. */
  public DetokenizeResponse detokenize(DetokenizeRequest request) {
    return blockingStub().detokenize(request);
  }

  /**
   * The prompt text a conversation renders to: the model's chat template applied to its messages,
   * followed by the opening of the assistant's turn, without generating anything. The messages
   * are checked as a {@link #generate(GenerateRequest)} chat input is ({@code INVALID_ARGUMENT}).
   */
  public String applyChatTemplate(ApplyChatTemplateRequest request) {
    return blockingStub().applyChatTemplate(request).getPrompt();
  }

  /** Describes the model served under an alias (empty: the worker's only model). */
  public GetModelInfoResponse getModelInfo(GetModelInfoRequest request) {
    return blockingStub().getModelInfo(request);
  }

  /** Describes every model the worker serves. */
  public ListModelsResponse listModels() {
    return blockingStub().listModels(ListModelsRequest.getDefaultInstance());
  }

  /** The worker's current load: active and queued requests, KV cache occupancy. */
  public GetLoadResponse getLoad() {
    return blockingStub().getLoad(GetLoadRequest.getDefaultInstance());
  }

  /**
   * The LoRA adapters of a model (empty: the worker's only model) in id order, with the scales a
   * request that gives none of its own runs with; empty when the worker loaded none.
   */
  public List<LoraAdapter> listLoraAdapters(ListLoraAdaptersRequest request) {
    return blockingStub().listLoraAdapters(request).getAdaptersList();
  }

  /**
   * Sets the scales of a model's LoRA adapters for the requests admitted from now on (adapters
   * left out get 0) and returns every adapter with its new scale. An unknown or repeated id, or a
   * scale that is not finite or beyond -10..10, fails with {@code INVALID_ARGUMENT}, reason
   * {@link ErrorReason#INVALID_VALUE}, and changes nothing.
   */
  public List<LoraAdapter> setLoraAdapters(SetLoraAdaptersRequest request) {
    return blockingStub().setLoraAdapters(request).getAdaptersList();
  }

  /** Every slot of the worker, in id order: whether it is busy, its request and cached tokens. */
  public List<SlotState> getSlots(GetSlotsRequest request) {
    return blockingStub().getSlots(request).getSlotsList();
  }

  /**
   * Writes an idle slot's cached tokens and KV state to a file of the worker's {@code
   * --slot-save-path}. Without one it fails with {@code FAILED_PRECONDITION}, reason {@link
   * ErrorReason#SLOT_FILES_OFF}, as do {@link #restoreSlot} and {@link #eraseSlot}; a busy slot
   * fails with {@code ABORTED}, reason {@link ErrorReason#SLOT_BUSY}.
   */
  public SaveSlotResponse saveSlot(SaveSlotRequest request) {
    return blockingStub().saveSlot(request);
  }

  /**
   * Loads a file written by {@link #saveSlot} into an idle slot, so that the next request starting
   * with its tokens reuses them. A file made for another model or other context settings fails
   * with {@code INVALID_ARGUMENT}.
   */
  public RestoreSlotResponse restoreSlot(RestoreSlotRequest request) {
    return blockingStub().restoreSlot(request);
  }

  /** Drops an idle slot's cached tokens and says how many it held. */
  public EraseSlotResponse eraseSlot(EraseSlotRequest request) {
    return blockingStub().eraseSlot(request);
  }

  /**
   * Creates a session and describes it. An empty model means the worker's only model, a TTL of 0
   * the worker's default; a transcript, when set, is the history to start from.
   */
  public SessionInfo openSession(OpenSessionRequest request) {
    return sessionStub().openSession(request).getSession();
  }

  /**
   * Describes a session and, with {@code with_transcript}, returns its transcript too. An
   * unknown, closed or reaped session fails with {@code NOT_FOUND}, reason {@link
   * ErrorReason#SESSION_NOT_FOUND}; an expired one with {@link ErrorReason#SESSION_EXPIRED}.
   */
  public GetSessionResponse getSession(GetSessionRequest request) {
    return sessionStub().getSession(request);
  }

  /**
   * Creates a new session holding the first {@code turns} turns of another, which stays as it
   * was, and describes the new one. More turns than the session has fails with {@code
   * INVALID_ARGUMENT}.
   */
  public SessionInfo forkSession(ForkSessionRequest request) {
    return sessionStub().forkSession(request).getSession();
  }

  /**
   * Keeps the first {@code turns} turns of a session, drops the later ones and describes the
   * session after it. More turns than the session has fails with {@code INVALID_ARGUMENT}.
   */
  public SessionInfo rollbackSession(RollbackSessionRequest request) {
    return sessionStub().rollbackSession(request).getSession();
  }

  /** Deletes a session; a turn running on it is cancelled. */
  public void closeSession(String sessionId) {
    sessionStub().closeSession(CloseSessionRequest.newBuilder().setSessionId(sessionId).build());
  }

  /**
   * Cancels the turn running on a session, from any caller, and says whether one ran. The turn's
   * stream then fails with {@code CANCELLED}, reason {@link ErrorReason#TURN_CANCELLED}, and the
   * session stays as it was before the turn. An unknown session fails with {@code NOT_FOUND}.
   */
  public boolean cancelTurn(String sessionId) {
    return sessionStub()
        .cancelTurn(CancelTurnRequest.newBuilder().setSessionId(sessionId).build())
        .getCancelled();
  }

  /**
   * A reference that makes a {@link GenerateRequest} the next turn of a session, for {@link
   * GenerateRequest.Builder#setSession(SessionRef)}. The request's input (chat messages, prompt or
   * tokens) is then only the new turn, and the final message reports what the turn committed in
   * {@code getFinal().getSession()}. A cancelled or failed turn commits nothing; a second turn
   * while one runs fails with {@code ABORTED}, reason {@link ErrorReason#SESSION_BUSY}.
   */
  public static SessionRef turn(String sessionId) {
    return SessionRef.newBuilder().setSessionId(sessionId).build();
  }

  /**
   * Like {@link #turn(String)}, for a turn that runs only if the session has exactly {@code
   * expectedTurns} committed turns; otherwise the call fails with {@code ABORTED}, reason {@link
   * ErrorReason#SESSION_LENGTH_MISMATCH}. Use it to retry a turn whose outcome was not seen
   * without committing it twice.
   */
  public static SessionRef turn(String sessionId, int expectedTurns) {
    if (expectedTurns < 0) {
      throw new IllegalArgumentException("expectedTurns must not be negative: " + expectedTurns);
    }
    return SessionRef.newBuilder().setSessionId(sessionId).setExpectedTurns(expectedTurns).build();
  }

  /**
   * The {@code google.rpc.ErrorInfo} a worker attached to a failed call, read from the
   * {@code grpc-status-details-bin} trailer of a {@link io.grpc.StatusRuntimeException} or
   * {@link io.grpc.StatusException}; empty for other errors or when there is none.
   */
  public static Optional<ErrorInfo> errorInfo(Throwable error) {
    com.google.rpc.Status status = StatusProto.fromThrowable(error);
    if (status == null) {
      return Optional.empty();
    }
    for (com.google.protobuf.Any detail : status.getDetailsList()) {
      if (detail.is(ErrorInfo.class)) {
        try {
          return Optional.of(detail.unpack(ErrorInfo.class));
        } catch (InvalidProtocolBufferException e) {
          return Optional.empty();
        }
      }
    }
    return Optional.empty();
  }

  /**
   * The reason of a failed call's {@code ErrorInfo} (one of the {@link ErrorReason} constants,
   * such as {@code CONTEXT_LENGTH_EXCEEDED}, {@code INVALID_VALUE} or {@code QUEUE_FULL}), or ""
   * when it carries none.
   */
  public static String errorReason(Throwable error) {
    return errorInfo(error).map(ErrorInfo::getReason).orElse("");
  }

  /**
   * Shuts the channel down, if this client opened it, giving running calls up to 5 s to finish
   * before cancelling them.
   */
  @Override
  public void close() {
    if (backoffTimer == null) {
      return;
    }
    backoffTimer.shutdownNow();
    channel.shutdown();
    try {
      if (!channel.awaitTermination(5, TimeUnit.SECONDS)) {
        channel.shutdownNow();
      }
    } catch (InterruptedException e) {
      channel.shutdownNow();
      Thread.currentThread().interrupt();
    }
  }

  /** The messages of one Generate call, read in order; closing it cancels the call. */
  public static final class GenerateStream implements Iterator<GenerateResponse>, AutoCloseable {
    private final Iterator<GenerateResponse> responses;
    private final Context.CancellableContext context;

    GenerateStream(Iterator<GenerateResponse> responses, Context.CancellableContext context) {
      this.responses = responses;
      this.context = context;
    }

    @Override
    public boolean hasNext() {
      boolean more;
      try {
        more = responses.hasNext();
      } catch (RuntimeException e) {
        close();
        throw e;
      }
      if (!more) {
        close();
      }
      return more;
    }

    @Override
    public GenerateResponse next() {
      try {
        return responses.next();
      } catch (RuntimeException e) {
        close();
        throw e;
      }
    }

    /** Cancels the call if it is still running; the worker stops generating for it. */
    @Override
    public void close() {
      context.cancel(null);
    }
  }
}
