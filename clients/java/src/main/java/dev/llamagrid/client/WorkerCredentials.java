package dev.llamagrid.client;

import io.grpc.CallCredentials;
import io.grpc.ChannelCredentials;
import io.grpc.CompositeChannelCredentials;
import io.grpc.Metadata;
import io.grpc.TlsChannelCredentials;
import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.nio.file.Path;
import java.util.concurrent.Executor;
import java.util.regex.Pattern;

/**
 * Credentials for a worker that serves TLS, requires client certificates (mTLS) or a token:
 *
 * <pre>{@code
 * ChannelCredentials credentials = WorkerCredentials.tls()
 *     .trustCertificates(Path.of("ca.pem"))                           // or the JVM's default CAs
 *     .clientCertificate(Path.of("client.pem"), Path.of("client.key")) // mTLS
 *     .token(System.getenv("LLAMAGRID_WORKER_TOKEN"))                 // on every call
 *     .build();
 * try (LlamagridClient client = LlamagridClient.connect("worker.internal:50051", credentials)) {
 *   ...
 * }
 * }</pre>
 *
 * <p>The token travels as {@code authorization: Bearer <token>} metadata. It must be an RFC 6750
 * bearer token: letters, digits and {@code -._~+/}, optionally ending in {@code =}, at most {@value
 * #MAX_TOKEN_CHARS} characters.
 */
public final class WorkerCredentials {
  /** The longest token sent (gRPC's default limit on a call's metadata is 8 KiB). */
  public static final int MAX_TOKEN_CHARS = 4096;

  private static final Pattern TOKEN = Pattern.compile("[A-Za-z0-9\\-._~+/]+=*");

  private WorkerCredentials() {}

  /** A builder of TLS credentials; with no other setting, the JVM's default CAs are trusted. */
  public static Builder tls() {
    return new Builder();
  }

  /**
   * Call credentials that send {@code authorization: Bearer <token>} with each call, for a stub
   * ({@code stub.withCallCredentials(...)}) or a channel of your own. They are sent over a
   * plaintext channel too, where anyone on the network path can read them: beyond loopback, use
   * them with TLS.
   *
   * @throws IllegalArgumentException if the token is not an RFC 6750 bearer token of at most
   *     {@value #MAX_TOKEN_CHARS} characters
   */
  public static CallCredentials bearerToken(String token) {
    return new BearerToken(token);
  }

  /** Builds TLS channel credentials, optionally with a client certificate and a token. */
  public static final class Builder {
    private final TlsChannelCredentials.Builder tls = TlsChannelCredentials.newBuilder();
    private CallCredentials token;

    private Builder() {}

    /** Trusts the CA certificates of this PEM file (instead of the JVM's default CAs). */
    public Builder trustCertificates(Path caPem) throws IOException {
      tls.trustManager(caPem.toFile());
      return this;
    }

    /** Trusts the CA certificates of this PEM text (instead of the JVM's default CAs). */
    public Builder trustCertificates(byte[] caPem) throws IOException {
      tls.trustManager(new ByteArrayInputStream(caPem));
      return this;
    }

    /**
     * Presents this client certificate chain and its private key (PEM files; the key as
     * unencrypted PKCS#8), for a worker that requires client certificates (mTLS).
     */
    public Builder clientCertificate(Path certChainPem, Path privateKeyPem) throws IOException {
      tls.keyManager(certChainPem.toFile(), privateKeyPem.toFile());
      return this;
    }

    /** Like {@link #clientCertificate(Path, Path)}, from PEM text. */
    public Builder clientCertificate(byte[] certChainPem, byte[] privateKeyPem)
        throws IOException {
      tls.keyManager(
          new ByteArrayInputStream(certChainPem), new ByteArrayInputStream(privateKeyPem));
      return this;
    }

    /**
     * Sends {@code authorization: Bearer <token>} with every call, for a worker started with a
     * token ({@code LLAMAGRID_WORKER_TOKEN} or {@code --token-file}).
     *
     * @throws IllegalArgumentException if the token is not an RFC 6750 bearer token of at most
     *     {@value #MAX_TOKEN_CHARS} characters
     */
    public Builder token(String token) {
      this.token = new BearerToken(token);
      return this;
    }

    /** The credentials, for {@link LlamagridClient#connect(String, ChannelCredentials)}. */
    public ChannelCredentials build() {
      ChannelCredentials channel = tls.build();
      return token == null ? channel : CompositeChannelCredentials.create(channel, token);
    }
  }

  /** Adds the token to each call's metadata. */
  private static final class BearerToken extends CallCredentials {
    private static final Metadata.Key<String> AUTHORIZATION =
        Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);
    private final String header;

    BearerToken(String token) {
      if (token == null || token.isEmpty()) {
        throw new IllegalArgumentException("the token is empty");
      }
      if (token.length() > MAX_TOKEN_CHARS) {
        throw new IllegalArgumentException(
            "the token is longer than " + MAX_TOKEN_CHARS + " characters");
      }
      if (!TOKEN.matcher(token).matches()) {
        throw new IllegalArgumentException(
            "the token must be letters, digits and -._~+/ only, optionally ending in = (an RFC"
                + " 6750 bearer token)");
      }
      this.header = "Bearer " + token;
    }

    @Override
    public void applyRequestMetadata(
        RequestInfo requestInfo, Executor appExecutor, MetadataApplier applier) {
      Metadata headers = new Metadata();
      headers.put(AUTHORIZATION, header);
      applier.apply(headers);
    }

    @Override
    public String toString() {
      return "BearerToken(<redacted>)";
    }
  }
}
