package llamagrid_test

// These tests run against a live worker that serves TLS, requires client certificates signed by
// a CA (mTLS) and a token on every call. They are skipped when LLAMAGRID_TLS_WORKER_ADDR is unset;
// when it is set, the other variables must be too:
//
//	LLAMAGRID_TLS_WORKER_ADDR    host:port of the worker
//	LLAMAGRID_TLS_CA             PEM file of the CA that signed the worker's and the client's certificates
//	LLAMAGRID_TLS_CLIENT_CERT    PEM client certificate signed by that CA, and its key
//	LLAMAGRID_TLS_CLIENT_KEY
//	LLAMAGRID_TLS_STRANGER_CERT  PEM client certificate signed by another CA, and its key
//	LLAMAGRID_TLS_STRANGER_KEY
//	LLAMAGRID_TLS_TOKEN          the worker's token

import (
	"os"
	"testing"
	"time"

	"github.com/llamagrid/llamagrid/clients/go/llamagrid"
	pb "github.com/llamagrid/llamagrid/clients/go/llamagridv1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

type tlsWorker struct {
	addr, ca, cert, key, strangerCert, strangerKey, token string
}

// tlsEnv reads the TLS worker's settings, skipping the test when there is no TLS worker.
func tlsEnv(t *testing.T) tlsWorker {
	t.Helper()
	w := tlsWorker{addr: os.Getenv("LLAMAGRID_TLS_WORKER_ADDR")}
	if w.addr == "" {
		t.Skip("LLAMAGRID_TLS_WORKER_ADDR is not set: no TLS worker to test against")
	}
	for name, field := range map[string]*string{
		"LLAMAGRID_TLS_CA":            &w.ca,
		"LLAMAGRID_TLS_CLIENT_CERT":   &w.cert,
		"LLAMAGRID_TLS_CLIENT_KEY":    &w.key,
		"LLAMAGRID_TLS_STRANGER_CERT": &w.strangerCert,
		"LLAMAGRID_TLS_STRANGER_KEY":  &w.strangerKey,
		"LLAMAGRID_TLS_TOKEN":         &w.token,
	} {
		if *field = os.Getenv(name); *field == "" {
			t.Fatalf("LLAMAGRID_TLS_WORKER_ADDR is set but %s is not", name)
		}
	}
	t.Cleanup(func() { uncacheable(t) })
	return w
}

// connectTLS makes a client with these TLS settings and options, without waiting for the
// connection: the first call makes it, and fails if the handshake does.
func connectTLS(t *testing.T, addr string, cfg llamagrid.TLSConfig, opts ...grpc.DialOption) *llamagrid.Client {
	t.Helper()
	creds, err := llamagrid.TLSCredentials(cfg)
	if err != nil {
		t.Fatalf("TLSCredentials: %v", err)
	}
	opts = append(append(llamagrid.DefaultDialOptions(), grpc.WithTransportCredentials(creds)), opts...)
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatalf("grpc.NewClient: %v", err)
	}
	client := llamagrid.New(conn)
	t.Cleanup(func() { client.Close() })
	return client
}

func tokenize(t *testing.T, client *llamagrid.Client, opts ...grpc.CallOption) (*pb.TokenizeResponse, error) {
	return client.Tokenize(callCtx(t), &pb.TokenizeRequest{Text: "Hello over TLS!"}, opts...)
}

// TestTLSMutualWithToken connects with Dial, the CA, the client certificate and the token, all
// from files, and runs a Tokenize/Detokenize round trip and a short greedy generation.
func TestTLSMutualWithToken(t *testing.T) {
	w := tlsEnv(t)
	creds, err := llamagrid.TLSCredentials(llamagrid.TLSConfig{
		CAFile: w.ca, CertFile: w.cert, KeyFile: w.key,
	})
	if err != nil {
		t.Fatalf("TLSCredentials: %v", err)
	}
	client, err := llamagrid.Dial(timeoutCtx(t, 30*time.Second), w.addr,
		grpc.WithTransportCredentials(creds), llamagrid.WithToken(w.token))
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer client.Close()

	tok, err := tokenize(t, client)
	if err != nil {
		t.Fatalf("Tokenize: %v", err)
	}
	detok, err := client.Detokenize(callCtx(t), &pb.DetokenizeRequest{TokenIds: tok.GetTokenIds()})
	if err != nil {
		t.Fatalf("Detokenize: %v", err)
	}
	if detok.GetText() != "Hello over TLS!" {
		t.Errorf("round trip gave %q", detok.GetText())
	}

	req := &pb.GenerateRequest{
		Input:    llamagrid.Chat(llamagrid.Message("user", "Name a primary color.")),
		Sampling: &pb.SamplingParams{Temperature: proto.Float32(0), MaxTokens: proto.Uint32(4)},
	}
	var final *pb.GenerateFinal
	for resp, err := range client.Generate(callCtx(t), req) {
		if err != nil {
			t.Fatalf("Generate: %v", err)
		}
		if f := resp.GetFinal(); f != nil {
			final = f
		}
	}
	if final == nil || final.GetUsage().GetCompletionTokens() == 0 {
		t.Fatalf("no final message with generated tokens: %v", final)
	}
}

// TestTLSTokenIsRequired connects with PEM bytes (CA, client certificate and key) and no token:
// the handshake succeeds, and the worker answers every call with UNAUTHENTICATED, also when a
// wrong token is sent.
func TestTLSTokenIsRequired(t *testing.T) {
	w := tlsEnv(t)
	var cfg llamagrid.TLSConfig
	for path, field := range map[string]*[]byte{w.ca: &cfg.CAPEM, w.cert: &cfg.CertPEM, w.key: &cfg.KeyPEM} {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		*field = data
	}
	client := connectTLS(t, w.addr, cfg)

	_, err := tokenize(t, client)
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("without a token: got %v, want UNAUTHENTICATED", err)
	}
	_, err = tokenize(t, client, grpc.PerRPCCredentials(llamagrid.TokenCredentials(w.token+"x")))
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("with a wrong token: got %v, want UNAUTHENTICATED", err)
	}
	// The same connection with the right token on the call: the failures above were the token's.
	if _, err := tokenize(t, client, grpc.PerRPCCredentials(llamagrid.TokenCredentials(w.token))); err != nil {
		t.Fatalf("with the token on the call: %v", err)
	}
}

// requireRefused checks that a call over a connection with these TLS settings fails with
// UNAVAILABLE: the TLS handshake did not complete, so no call reached the worker.
func requireRefused(t *testing.T, w tlsWorker, cfg llamagrid.TLSConfig) {
	t.Helper()
	client := connectTLS(t, w.addr, cfg, llamagrid.WithToken(w.token))
	_, err := tokenize(t, client)
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("got %v, want UNAVAILABLE (a refused TLS handshake)", err)
	}
	t.Log(err)
}

// TestTLSStrangerCertificateIsRefused presents a client certificate that another CA signed.
func TestTLSStrangerCertificateIsRefused(t *testing.T) {
	w := tlsEnv(t)
	requireRefused(t, w, llamagrid.TLSConfig{CAFile: w.ca, CertFile: w.strangerCert, KeyFile: w.strangerKey})
}

// TestTLSMissingClientCertificateIsRefused presents no client certificate to a worker that
// requires one.
func TestTLSMissingClientCertificateIsRefused(t *testing.T) {
	w := tlsEnv(t)
	requireRefused(t, w, llamagrid.TLSConfig{CAFile: w.ca})
}

// TestTLSUntrustedWorkerIsRefused trusts only the system's roots, which did not sign the
// worker's certificate: the client refuses the worker.
func TestTLSUntrustedWorkerIsRefused(t *testing.T) {
	w := tlsEnv(t)
	requireRefused(t, w, llamagrid.TLSConfig{CertFile: w.cert, KeyFile: w.key})
}
