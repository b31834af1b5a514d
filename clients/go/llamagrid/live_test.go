package llamagrid_test

// These tests run against a live worker whose address is in LLAMAGRID_WORKER_ADDR, for example:
//
//	LLAMAGRID_WORKER_ADDR=127.0.0.1:50051 go test -count=1 ./...
//
// They fail (they do not skip) when the variable is unset.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/llamagrid/llamagrid/clients/go/llamagrid"
	pb "github.com/llamagrid/llamagrid/clients/go/llamagridv1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// uncacheable keeps a run against a live worker out of go test's result cache, which would
// otherwise replay a pass (and skip writing LLAMAGRID_PARITY_OUT) whenever the address is
// unchanged, even with no worker there any more. cmd/go does not cache a run whose tests opened
// a file of the module modified less than two seconds before the run ended, so the test opens a
// stamp file (gitignored) dated a minute ahead. `go test -count=1` has the same effect.
func uncacheable(t *testing.T) {
	const stamp = ".live-test.stamp"
	soon := time.Now().Add(time.Minute)
	if os.WriteFile(stamp, nil, 0o644) != nil || os.Chtimes(stamp, soon, soon) != nil {
		t.Log("cannot write " + stamp + "; this result may be cached: use go test -count=1")
		return
	}
	if f, err := os.Open(stamp); err == nil {
		f.Close()
	}
}

// dial connects to the worker named by LLAMAGRID_WORKER_ADDR and closes the client after the test.
func dial(t *testing.T) *llamagrid.Client {
	t.Helper()
	addr := os.Getenv("LLAMAGRID_WORKER_ADDR")
	if addr == "" {
		t.Fatal("LLAMAGRID_WORKER_ADDR is not set: these tests need a running llamagrid worker " +
			"(for example `python -m llamagrid.worker --port 50051`, then LLAMAGRID_WORKER_ADDR=127.0.0.1:50051)")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	client, err := llamagrid.Dial(ctx, addr)
	if err != nil {
		t.Fatalf("cannot reach the worker at %s: %v", addr, err)
	}
	t.Cleanup(func() {
		client.Close()
		uncacheable(t)
	})
	return client
}

// callCtx bounds one call. The limit is generous: the worker may share a few busy cores.
func callCtx(t *testing.T) context.Context {
	return timeoutCtx(t, 2*time.Minute)
}

func timeoutCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestGenerateChatStream is also the parity request: its token ids go to LLAMAGRID_PARITY_OUT.
func TestGenerateChatStream(t *testing.T) {
	client := dial(t)
	req := &pb.GenerateRequest{
		Input: llamagrid.Chat(
			llamagrid.Message("system", "You are a terse assistant."),
			llamagrid.Message("user", "Name three primary colors."),
		),
		Sampling: &pb.SamplingParams{
			Temperature: proto.Float32(0),
			Seed:        proto.Uint64(42),
			MaxTokens:   proto.Uint32(24),
		},
	}
	var (
		text      strings.Builder
		tokenIDs  = []int32{}
		textParts int
		finals    []*pb.GenerateFinal
	)
	for resp, err := range client.Generate(callCtx(t), req) {
		if err != nil {
			t.Fatalf("Generate: %v", err)
		}
		if len(finals) > 0 {
			t.Fatalf("message after the final one: %v", resp)
		}
		if chunk := resp.GetChunk(); chunk != nil {
			if chunk.GetText() != "" {
				textParts++
			}
			text.WriteString(chunk.GetText())
			tokenIDs = append(tokenIDs, chunk.GetTokenIds()...)
		} else if final := resp.GetFinal(); final != nil {
			finals = append(finals, final)
		}
	}
	if textParts == 0 {
		t.Fatal("no chunk carried text")
	}
	if len(finals) != 1 {
		t.Fatalf("got %d final messages, want 1", len(finals))
	}
	final := finals[0]
	if final.GetFinishReason() == pb.FinishReason_FINISH_REASON_UNSPECIFIED {
		t.Error("final message has no finish reason")
	}
	if final.GetUsage() == nil {
		t.Fatal("final message has no usage")
	}
	if got := final.GetUsage().GetCompletionTokens(); int(got) != len(tokenIDs) {
		t.Errorf("usage.completion_tokens = %d, but %d token ids were streamed", got, len(tokenIDs))
	}
	t.Logf("%q (%s, %d tokens)", text.String(), final.GetFinishReason(), len(tokenIDs))

	if path := os.Getenv("LLAMAGRID_PARITY_OUT"); path != "" {
		data, err := json.Marshal(map[string][]int32{"token_ids": tokenIDs})
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatalf("writing LLAMAGRID_PARITY_OUT: %v", err)
		}
	}
}

func TestEmbedNormalizedBatch(t *testing.T) {
	client := dial(t)
	resp, err := client.Embed(callCtx(t), &pb.EmbedRequest{
		Inputs:    llamagrid.Texts("The sky is blue.", "Grass is green.", "gRPC streams messages."),
		Normalize: true,
	})
	if err != nil {
		t.Fatalf("Embed: %v", err)
	}
	checkUnitVectors(t, resp, 3)
}

// TestLargeMessages round-trips about 5 MiB of text, above gRPC's default 4 MiB receive limit,
// relying on the 64 MiB limits of DefaultDialOptions (and of the worker).
func TestLargeMessages(t *testing.T) {
	client := dial(t)
	text := strings.Repeat("the quick brown fox jumps over the lazy dog. ", 5<<20/45+1)
	tok, err := client.Tokenize(callCtx(t), &pb.TokenizeRequest{Text: text})
	if err != nil {
		t.Fatalf("Tokenize of %d bytes: %v", len(text), err)
	}
	req := &pb.DetokenizeRequest{TokenIds: tok.GetTokenIds()}
	detok, err := client.Detokenize(callCtx(t), req)
	if err != nil {
		t.Fatalf("Detokenize of %d tokens: %v", len(tok.GetTokenIds()), err)
	}
	if detok.GetText() != text {
		t.Fatalf("round trip of %d bytes changed the text", len(text))
	}
	// The same response under gRPC's default limit is refused, so the limit above mattered.
	_, err = client.Detokenize(callCtx(t), req, grpc.MaxCallRecvMsgSize(4<<20))
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("with a 4 MiB receive limit: got %v, want RESOURCE_EXHAUSTED", err)
	}
}

// TestEmbedLargeBatch embeds 300 inputs of about 50 tokens each. It takes minutes on a small
// CPU, so it runs only when LLAMAGRID_SLOW_TESTS=1.
func TestEmbedLargeBatch(t *testing.T) {
	if os.Getenv("LLAMAGRID_SLOW_TESTS") != "1" {
		t.Skip("set LLAMAGRID_SLOW_TESTS=1 to embed a batch of 300 inputs")
	}
	client := dial(t)
	const n = 300
	texts := make([]string, n)
	for i := range texts {
		texts[i] = fmt.Sprintf("Input %d: %s", i, strings.Repeat("the quick brown fox jumps over the lazy dog ", 5))
	}
	resp, err := client.Embed(timeoutCtx(t, 10*time.Minute), &pb.EmbedRequest{Inputs: llamagrid.Texts(texts...), Normalize: true})
	if err != nil {
		t.Fatalf("Embed: %v", err)
	}
	checkUnitVectors(t, resp, n)
	if tokens := resp.GetTotalTokens(); tokens < 40*n {
		t.Errorf("total_tokens = %d, want at least %d", tokens, 40*n)
	}
}

func checkUnitVectors(t *testing.T, resp *pb.EmbedResponse, want int) {
	t.Helper()
	embeddings := resp.GetEmbeddings()
	if len(embeddings) != want {
		t.Fatalf("got %d embeddings, want %d", len(embeddings), want)
	}
	width := len(embeddings[0].GetValues())
	if width == 0 {
		t.Fatal("empty embedding vector")
	}
	for i, e := range embeddings {
		if len(e.GetValues()) != width {
			t.Fatalf("embedding %d has %d values, embedding 0 has %d", i, len(e.GetValues()), width)
		}
		var sum float64
		for _, v := range e.GetValues() {
			sum += float64(v) * float64(v)
		}
		if norm := math.Sqrt(sum); math.Abs(norm-1) > 1e-3 {
			t.Errorf("embedding %d has norm %f, want 1", i, norm)
		}
	}
}

func TestTokenizeRoundTrip(t *testing.T) {
	client := dial(t)
	const text = "Hello, llamagrid!"
	tok, err := client.Tokenize(callCtx(t), &pb.TokenizeRequest{Text: text, AddSpecial: false})
	if err != nil {
		t.Fatalf("Tokenize: %v", err)
	}
	if len(tok.GetTokenIds()) == 0 {
		t.Fatal("no token ids")
	}
	detok, err := client.Detokenize(callCtx(t), &pb.DetokenizeRequest{TokenIds: tok.GetTokenIds()})
	if err != nil {
		t.Fatalf("Detokenize: %v", err)
	}
	if detok.GetText() != text {
		t.Errorf("round trip gave %q, want %q", detok.GetText(), text)
	}
}

// TestDeadlineStopsGeneration lets a deadline expire mid-generation, then checks through
// GetLoad that the worker stopped working on the request.
func TestDeadlineStopsGeneration(t *testing.T) {
	client := dial(t)
	ctx, cancel := context.WithTimeout(t.Context(), 1500*time.Millisecond)
	defer cancel()
	req := &pb.GenerateRequest{
		Input: llamagrid.Prompt("Write a very long story about a lighthouse keeper."),
		Sampling: &pb.SamplingParams{
			MaxTokens:   proto.Uint32(2000),
			IgnoreEos:   proto.Bool(true),
			Temperature: proto.Float32(0),
		},
	}
	var gotErr error
	chunks := 0
	for resp, err := range client.Generate(ctx, req) {
		if err != nil {
			gotErr = err
			break
		}
		if resp.GetFinal() != nil {
			t.Fatalf("generation finished before the deadline: %v", resp.GetFinal())
		}
		chunks++
	}
	if status.Code(gotErr) != codes.DeadlineExceeded {
		t.Fatalf("got %v, want DEADLINE_EXCEEDED", gotErr)
	}
	if !errors.Is(gotErr, context.DeadlineExceeded) {
		t.Errorf("errors.Is(%v, context.DeadlineExceeded) = false", gotErr)
	}
	t.Logf("deadline hit after %d chunks", chunks)

	var load *pb.GetLoadResponse
	for start := time.Now(); time.Since(start) < 5*time.Second; time.Sleep(100 * time.Millisecond) {
		var err error
		load, err = client.GetLoad(callCtx(t))
		if err != nil {
			t.Fatalf("GetLoad: %v", err)
		}
		if load.GetActiveRequests() == 0 {
			return
		}
	}
	t.Fatalf("the worker still has %d active requests 5 s after the deadline", load.GetActiveRequests())
}

func TestInvalidArgument(t *testing.T) {
	client := dial(t)
	req := &pb.GenerateRequest{
		Input:    llamagrid.Prompt("Hello"),
		Sampling: &pb.SamplingParams{Temperature: proto.Float32(-1), MaxTokens: proto.Uint32(4)},
	}
	var gotErr error
	for _, err := range client.Generate(callCtx(t), req) {
		if err != nil {
			gotErr = err
		}
	}
	st, ok := status.FromError(gotErr)
	if !ok || st.Code() != codes.InvalidArgument {
		t.Fatalf("got %v, want INVALID_ARGUMENT", gotErr)
	}
	if msg := st.Message(); msg == "" || !strings.Contains(msg, "temperature") {
		t.Errorf("message %q does not mention temperature", msg)
	}
	if reason := llamagrid.Reason(gotErr); reason != llamagrid.ReasonInvalidValue {
		t.Errorf("reason = %q, want %q", reason, llamagrid.ReasonInvalidValue)
	}
	var e *llamagrid.Error
	if errors.As(gotErr, &e) && e.Param() != "temperature" {
		t.Errorf("param = %q, want temperature", e.Param())
	}
	t.Log(gotErr)
}

func TestListModels(t *testing.T) {
	client := dial(t)
	models, err := client.ListModels(callCtx(t))
	if err != nil {
		t.Fatalf("ListModels: %v", err)
	}
	if len(models) != 1 {
		t.Fatalf("got %d models, want 1", len(models))
	}
	if alias := models[0].GetAlias(); alias != "smollm2" {
		t.Errorf("alias = %q, want smollm2", alias)
	}
}
