package dev.llamagrid.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.llamagrid.v1.InferenceServiceGrpc;
import io.grpc.Attributes;
import io.grpc.CallCredentials;
import io.grpc.CompositeChannelCredentials;
import io.grpc.InsecureChannelCredentials;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;
import io.grpc.SecurityLevel;
import io.grpc.Status;
import java.nio.charset.StandardCharsets;
import org.junit.jupiter.api.Test;

/** Token and credential checks that need no worker. */
class WorkerCredentialsTest {
  private static final Metadata.Key<String> AUTHORIZATION =
      Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);

  /** What a call's credentials produced: headers, or the status it was failed with. */
  private static final class Outcome extends CallCredentials.MetadataApplier {
    Metadata headers;
    Status failure;

    @Override
    public void apply(Metadata headers) {
      this.headers = headers;
    }

    @Override
    public void fail(Status status) {
      this.failure = status;
    }
  }

  private static Outcome apply(CallCredentials credentials, SecurityLevel level) {
    CallCredentials.RequestInfo info =
        new CallCredentials.RequestInfo() {
          @Override
          public MethodDescriptor<?, ?> getMethodDescriptor() {
            return InferenceServiceGrpc.getTokenizeMethod();
          }

          @Override
          public SecurityLevel getSecurityLevel() {
            return level;
          }

          @Override
          public String getAuthority() {
            return "localhost";
          }

          @Override
          public Attributes getTransportAttrs() {
            return Attributes.EMPTY;
          }
        };
    Outcome outcome = new Outcome();
    credentials.applyRequestMetadata(info, Runnable::run, outcome);
    return outcome;
  }

  @Test
  void sendsTheToken() {
    String longest = "x".repeat(WorkerCredentials.MAX_TOKEN_CHARS);
    for (String token : new String[] {"abc.DEF-123", "a~b+c/d_e==", longest}) {
      // Over TLS and, for a worker on loopback, without it.
      for (SecurityLevel level :
          new SecurityLevel[] {SecurityLevel.PRIVACY_AND_INTEGRITY, SecurityLevel.NONE}) {
        Outcome outcome = apply(WorkerCredentials.bearerToken(token), level);
        assertNull(outcome.failure);
        assertEquals("Bearer " + token, outcome.headers.get(AUTHORIZATION));
      }
    }
  }

  @Test
  void rejectsMalformedTokens() {
    String tooLong = "x".repeat(WorkerCredentials.MAX_TOKEN_CHARS + 1);
    String[] bads = {
      "", "two words", "line\nbreak", "caf\u00e9", "a=b", "=", "semi;colon", tooLong
    };
    for (String bad : bads) {
      IllegalArgumentException error =
          assertThrows(IllegalArgumentException.class, () -> WorkerCredentials.bearerToken(bad));
      assertTrue(bad.length() < 3 || !error.getMessage().contains(bad), "the message repeats it");
      assertThrows(IllegalArgumentException.class, () -> WorkerCredentials.tls().token(bad), bad);
    }
    assertThrows(IllegalArgumentException.class, () -> WorkerCredentials.bearerToken(null));
  }

  @Test
  void takesATokenWithoutTls() {
    var credentials =
        CompositeChannelCredentials.create(
            InsecureChannelCredentials.create(), WorkerCredentials.bearerToken("secret"));
    LlamagridClient.connect("127.0.0.1:1", credentials).close();
  }

  @Test
  void doesNotShowTheToken() {
    assertFalse(WorkerCredentials.bearerToken("s3cret").toString().contains("s3cret"));
  }

  @Test
  void rejectsCertificatesThatAreNotPem() throws Exception {
    byte[] junk = "not a certificate".getBytes(StandardCharsets.US_ASCII);
    var credentials = WorkerCredentials.tls().clientCertificate(junk, junk).build();
    assertThrows(
        IllegalArgumentException.class,
        () -> LlamagridClient.connect("127.0.0.1:1", credentials).close());
  }
}
