package dev.llamagrid.client;

/**
 * The {@code google.rpc.ErrorInfo} reasons a llamagrid worker reports (domain {@value
 * LlamagridClient#ERROR_DOMAIN}), as {@link LlamagridClient#errorReason(Throwable)} returns them.
 */
public final class ErrorReason {
  /** The prompt plus the requested completion does not fit the context. */
  public static final String CONTEXT_LENGTH_EXCEEDED = "CONTEXT_LENGTH_EXCEEDED";
  /** The request names a model this worker does not serve. */
  public static final String MODEL_NOT_FOUND = "MODEL_NOT_FOUND";
  /** A field has a value out of range or of the wrong form. */
  public static final String INVALID_VALUE = "INVALID_VALUE";
  /** The request asks for something this worker cannot do. */
  public static final String UNSUPPORTED_PARAMETER = "UNSUPPORTED_PARAMETER";
  /** The worker's queue is full ({@code RESOURCE_EXHAUSTED}, with a retry delay). */
  public static final String QUEUE_FULL = "QUEUE_FULL";
  /** The request waited in the worker's queue longer than its queue timeout. */
  public static final String QUEUE_TIMEOUT = "QUEUE_TIMEOUT";
  /** The worker is shutting down or still loading its model. */
  public static final String NOT_READY = "NOT_READY";
  /** The session is unknown, closed or reaped ({@code NOT_FOUND}). */
  public static final String SESSION_NOT_FOUND = "SESSION_NOT_FOUND";
  /** The session was not used for its TTL ({@code NOT_FOUND}). */
  public static final String SESSION_EXPIRED = "SESSION_EXPIRED";
  /** A turn is already running on the session ({@code ABORTED}). */
  public static final String SESSION_BUSY = "SESSION_BUSY";
  /**
   * The session does not have the turns the request expected ({@code ABORTED}; see {@link
   * LlamagridClient#turn(String, int)}).
   */
  public static final String SESSION_LENGTH_MISMATCH = "SESSION_LENGTH_MISMATCH";
  /** The worker holds its maximum number of sessions ({@code RESOURCE_EXHAUSTED}). */
  public static final String SESSION_LIMIT = "SESSION_LIMIT";
  /**
   * The session's turn was cancelled through {@link LlamagridClient#cancelTurn(String)} ({@code
   * CANCELLED}); nothing was committed.
   */
  public static final String TURN_CANCELLED = "TURN_CANCELLED";
  /** The slot runs a request: saving, restoring and erasing need an idle one ({@code ABORTED}). */
  public static final String SLOT_BUSY = "SLOT_BUSY";
  /**
   * The worker has no {@code --slot-save-path}: slot files are off ({@code FAILED_PRECONDITION}).
   */
  public static final String SLOT_FILES_OFF = "SLOT_FILES_OFF";

  private ErrorReason() {}
}
