package dev.llamagrid.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import dev.llamagrid.v1.ChatConversation;
import dev.llamagrid.v1.ChatMessage;
import dev.llamagrid.v1.DetokenizeRequest;
import dev.llamagrid.v1.GenerateFinal;
import dev.llamagrid.v1.GenerateRequest;
import dev.llamagrid.v1.GenerateResponse;
import dev.llamagrid.v1.SamplingParams;
import dev.llamagrid.v1.TokenizeRequest;
import dev.llamagrid.v1.TokenizeResponse;
import io.grpc.ChannelCredentials;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * Tests against a live worker that serves TLS, requires client certificates signed by a CA (mTLS)
 * and a token on every call. They are skipped when {@code LLAMAGRID_TLS_WORKER_ADDR} is unset;
 * when it is set, the other variables must be too: {@code LLAMAGRID_TLS_CA} (PEM of the CA that
 * signed the worker's and the client's certificates), {@code LLAMAGRID_TLS_CLIENT_CERT} and
 * {@code LLAMAGRID_TLS_CLIENT_KEY} (a client certificate it signed), {@code
 * LLAMAGRID_TLS_STRANGER_CERT} and {@code LLAMAGRID_TLS_STRANGER_KEY} (one another CA signed) and
 * {@code LLAMAGRID_TLS_TOKEN} (the worker's token).
 */
class TlsWorkerTest {
  private static final String TEXT = "Hello over TLS!";
  private static String addr;
  private static Path ca;
  private static Path cert;
  private static Path key;
  private static Path strangerCert;
  private static Path strangerKey;
  private static String token;

  @BeforeAll
  static void settings() {
    addr = System.getenv("LLAMAGRID_TLS_WORKER_ADDR");
    assumeTrue(
        addr != null && !addr.isBlank(),
        "LLAMAGRID_TLS_WORKER_ADDR is not set: no TLS worker to test against");
    ca = Path.of(required("LLAMAGRID_TLS_CA"));
    cert = Path.of(required("LLAMAGRID_TLS_CLIENT_CERT"));
    key = Path.of(required("LLAMAGRID_TLS_CLIENT_KEY"));
    strangerCert = Path.of(required("LLAMAGRID_TLS_STRANGER_CERT"));
    strangerKey = Path.of(required("LLAMAGRID_TLS_STRANGER_KEY"));
    token = required("LLAMAGRID_TLS_TOKEN");
  }

  private static String required(String name) {
    String value = System.getenv(name);
    if (value == null || value.isBlank()) {
      fail("LLAMAGRID_TLS_WORKER_ADDR is set but " + name + " is not");
    }
    return value;
  }

  private static TokenizeRequest tokenizeRequest() {
    return TokenizeRequest.newBuilder().setText(TEXT).build();
  }

  /** CA, client certificate and token, all from files: a round trip and a short generation. */
  @Test
  void connectsWithClientCertificateAndToken() throws IOException {
    ChannelCredentials credentials =
        WorkerCredentials.tls()
            .trustCertificates(ca)
            .clientCertificate(cert, key)
            .token(token)
            .build();
    try (LlamagridClient client = LlamagridClient.connect(addr, credentials)) {
      LlamagridClient bounded = client.withTimeout(Duration.ofMinutes(2));
      TokenizeResponse tokens = bounded.tokenize(tokenizeRequest());
      String text =
          bounded
              .detokenize(
                  DetokenizeRequest.newBuilder().addAllTokenIds(tokens.getTokenIdsList()).build())
              .getText();
      assertEquals(TEXT, text);

      GenerateRequest request =
          GenerateRequest.newBuilder()
              .setChat(
                  ChatConversation.newBuilder()
                      .addMessages(
                          ChatMessage.newBuilder()
                              .setRole("user")
                              .setContent("Name a primary color.")))
              .setSampling(SamplingParams.newBuilder().setTemperature(0f).setMaxTokens(4))
              .build();
      GenerateFinal last = null;
      try (LlamagridClient.GenerateStream stream = bounded.generate(request)) {
        while (stream.hasNext()) {
          GenerateResponse response = stream.next();
          if (response.hasFinal()) {
            last = response.getFinal();
          }
        }
      }
      assertNotNull(last, "no final message");
      assertTrue(last.getUsage().getCompletionTokens() > 0, "no token was generated");
    }
  }

  /**
   * CA and client certificate from PEM bytes, no token: the connection works, and every call is
   * UNAUTHENTICATED, also with a wrong token; the right token on the call is accepted.
   */
  @Test
  void refusesCallsWithoutTheToken() throws IOException {
    ChannelCredentials credentials =
        WorkerCredentials.tls()
            .trustCertificates(Files.readAllBytes(ca))
            .clientCertificate(Files.readAllBytes(cert), Files.readAllBytes(key))
            .build();
    try (LlamagridClient client = LlamagridClient.connect(addr, credentials)) {
      LlamagridClient bounded = client.withTimeout(Duration.ofMinutes(2));
      StatusRuntimeException error =
          assertThrows(StatusRuntimeException.class, () -> bounded.tokenize(tokenizeRequest()));
      assertEquals(Status.Code.UNAUTHENTICATED, error.getStatus().getCode(), error.toString());

      error =
          assertThrows(
              StatusRuntimeException.class,
              () ->
                  bounded
                      .blockingStub()
                      .withCallCredentials(WorkerCredentials.bearerToken(token + "x"))
                      .tokenize(tokenizeRequest()));
      assertEquals(Status.Code.UNAUTHENTICATED, error.getStatus().getCode(), error.toString());

      TokenizeResponse tokens =
          bounded
              .blockingStub()
              .withCallCredentials(WorkerCredentials.bearerToken(token))
              .tokenize(tokenizeRequest());
      assertFalse(tokens.getTokenIdsList().isEmpty());
    }
  }

  /** A call over a connection with these credentials fails: the TLS handshake was refused. */
  private static void assertRefused(ChannelCredentials credentials) {
    try (LlamagridClient client = LlamagridClient.connect(addr, credentials)) {
      StatusRuntimeException error =
          assertThrows(
              StatusRuntimeException.class,
              () -> client.withTimeout(Duration.ofMinutes(1)).tokenize(tokenizeRequest()));
      assertEquals(Status.Code.UNAVAILABLE, error.getStatus().getCode(), error.toString());
    }
  }

  @Test
  void refusesAStrangersCertificate() throws IOException {
    assertRefused(
        WorkerCredentials.tls()
            .trustCertificates(ca)
            .clientCertificate(strangerCert, strangerKey)
            .token(token)
            .build());
  }

  @Test
  void refusesAClientWithoutCertificate() throws IOException {
    assertRefused(WorkerCredentials.tls().trustCertificates(ca).token(token).build());
  }

  /** Only the JVM's default CAs are trusted, and none of them signed the worker's certificate. */
  @Test
  void refusesAnUntrustedWorker() throws IOException {
    assertRefused(WorkerCredentials.tls().clientCertificate(cert, key).token(token).build());
  }
}
