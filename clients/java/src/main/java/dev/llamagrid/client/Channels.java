package dev.llamagrid.client;

import io.grpc.ConnectivityState;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.stub.AbstractStub;
import java.time.Duration;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;

/** The llamagrid channel and stub defaults that {@link LlamagridClient} applies. */
final class Channels {
  private Channels() {}

  /** The message-size and keepalive defaults of {@link LlamagridClient#channelBuilder(String)}. */
  static ManagedChannelBuilder<?> withDefaults(ManagedChannelBuilder<?> builder) {
    return builder
        .maxInboundMessageSize(LlamagridClient.MAX_MESSAGE_BYTES)
        .keepAliveTime(LlamagridClient.KEEPALIVE_TIME.toMillis(), TimeUnit.MILLISECONDS)
        .keepAliveTimeout(LlamagridClient.KEEPALIVE_TIMEOUT.toMillis(), TimeUnit.MILLISECONDS)
        .keepAliveWithoutCalls(true);
  }

  /** A stub with the message limits both ways and, unless {@code timeout} is null, a deadline. */
  static <S extends AbstractStub<S>> S configure(S stub, Duration timeout) {
    S limited =
        stub.withMaxInboundMessageSize(LlamagridClient.MAX_MESSAGE_BYTES)
            .withMaxOutboundMessageSize(LlamagridClient.MAX_MESSAGE_BYTES);
    return timeout == null ? limited : limited.withDeadlineAfter(timeout);
  }

  /**
   * Starts the daemon timer that caps the channel's reconnect backoff; shut it down with the
   * channel.
   *
   * <p>grpc-java has no setting for the maximum reconnect backoff (its own grows to two minutes),
   * so while the channel is in TRANSIENT_FAILURE the timer resets the backoff every {@link
   * LlamagridClient#MAX_RECONNECT_BACKOFF}, which makes it try again at once: attempts are never
   * further apart than that.
   */
  static ScheduledExecutorService capReconnectBackoff(ManagedChannel channel) {
    ScheduledExecutorService timer =
        Executors.newSingleThreadScheduledExecutor(
            r -> {
              Thread t = new Thread(r, "llamagrid-reconnect");
              t.setDaemon(true);
              return t;
            });
    long period = LlamagridClient.MAX_RECONNECT_BACKOFF.toMillis();
    timer.scheduleWithFixedDelay(
        () -> {
          if (channel.getState(false) == ConnectivityState.TRANSIENT_FAILURE) {
            channel.resetConnectBackoff();
          }
        },
        period,
        period,
        TimeUnit.MILLISECONDS);
    return timer;
  }
}
