package llamagrid_test

// Images against the live vision worker of LLAMAGRID_VISION_WORKER_ADDR: SmolLM2 with a test
// projector (seeded random weights, tests/mmproj_model.py) that turns a 56x56 image into 16
// tokens. The tests are skipped when the variable is unset; when it is set, LLAMAGRID_TEST_IMAGE
// must name a 56x56 PNG. The answers mean nothing: the tests check that the image reached the
// model, through the prompt's token count. Greedy decoding throughout.

import (
	"context"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/llamagrid/llamagrid/clients/go/llamagrid"
	pb "github.com/llamagrid/llamagrid/clients/go/llamagridv1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// imageTokens is how many tokens the test projector makes of a 56x56 image (4x4 patches of 14
// pixels).
const imageTokens = 16

const imageQuestion = "What is in this picture?"

// dialVision connects to the vision worker and reads the test image, or skips the test when
// there is no vision worker.
func dialVision(t *testing.T) (*llamagrid.Client, []byte) {
	t.Helper()
	addr := os.Getenv("LLAMAGRID_VISION_WORKER_ADDR")
	if addr == "" {
		t.Skip("LLAMAGRID_VISION_WORKER_ADDR is not set: no vision worker to test against")
	}
	path := os.Getenv("LLAMAGRID_TEST_IMAGE")
	if path == "" {
		t.Fatal("LLAMAGRID_VISION_WORKER_ADDR is set but LLAMAGRID_TEST_IMAGE is not")
	}
	png, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("cannot read LLAMAGRID_TEST_IMAGE: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	client, err := llamagrid.Dial(ctx, addr)
	if err != nil {
		t.Fatalf("cannot reach the vision worker at %s: %v", addr, err)
	}
	t.Cleanup(func() {
		client.Close()
		uncacheable(t)
	})
	return client, png
}

// greedyChat is a greedy chat request of up to 8 tokens.
func greedyChat(messages ...*pb.ChatMessage) *pb.GenerateRequest {
	return &pb.GenerateRequest{
		Input:    llamagrid.Chat(messages...),
		Sampling: &pb.SamplingParams{Temperature: proto.Float32(0), MaxTokens: proto.Uint32(8)},
	}
}

// runToEnd runs req and returns its token ids and its final message, or the error it failed with.
func runToEnd(t *testing.T, client *llamagrid.Client, req *pb.GenerateRequest) ([]int32, *pb.GenerateFinal, error) {
	t.Helper()
	var ids []int32
	var final *pb.GenerateFinal
	for resp, err := range client.Generate(callCtx(t), req) {
		if err != nil {
			return nil, nil, err
		}
		if chunk := resp.GetChunk(); chunk != nil {
			ids = append(ids, chunk.GetTokenIds()...)
		} else if f := resp.GetFinal(); f != nil {
			final = f
		}
	}
	if final == nil {
		t.Fatal("the stream ended without a final message")
	}
	if got := final.GetUsage().GetCompletionTokens(); int(got) != len(ids) {
		t.Errorf("usage.completion_tokens = %d, but %d token ids were streamed", got, len(ids))
	}
	return ids, final, nil
}

// TestImagePartAddsItsTokensToThePrompt sends a chat turn of a text part and an image part: the
// prompt is the same turn's without the image plus the image's 16 tokens, and the same request
// again generates the same tokens.
func TestImagePartAddsItsTokensToThePrompt(t *testing.T) {
	client, png := dialVision(t)
	info, err := client.GetModelInfo(callCtx(t), &pb.GetModelInfoRequest{})
	if err != nil {
		t.Fatalf("GetModelInfo: %v", err)
	}
	if !info.GetInfo().GetVision() || info.GetInfo().GetMediaMarker() == "" {
		t.Errorf("the vision worker reports vision %v, media marker %q",
			info.GetInfo().GetVision(), info.GetInfo().GetMediaMarker())
	}
	withImage := greedyChat(llamagrid.MessageParts("user",
		llamagrid.TextPart(imageQuestion), llamagrid.ImagePart(png, "image/png")))
	ids, final, err := runToEnd(t, client, withImage)
	if err != nil {
		t.Fatalf("Generate with an image: %v", err)
	}
	_, textOnly, err := runToEnd(t, client,
		greedyChat(llamagrid.MessageParts("user", llamagrid.TextPart(imageQuestion))))
	if err != nil {
		t.Fatalf("Generate without the image: %v", err)
	}
	got, without := final.GetUsage().GetPromptTokens(), textOnly.GetUsage().GetPromptTokens()
	if got != without+imageTokens {
		t.Errorf("prompt_tokens = %d with the image, %d without: want %d more", got, without, imageTokens)
	}
	if len(ids) == 0 {
		t.Error("nothing generated")
	}
	again, _, err := runToEnd(t, client, withImage)
	if err != nil {
		t.Fatalf("Generate with the image again: %v", err)
	}
	if !slices.Equal(again, ids) {
		t.Errorf("the same image and prompt gave %v, then %v", ids, again)
	}
	t.Logf("prompt_tokens %d with the image, %d without; tokens %v", got, without, ids)
}

// TestImageToAWorkerWithoutProjectorIsInvalidArgument sends the same turn to the plain worker
// (LLAMAGRID_WORKER_ADDR), which has no projector: INVALID_ARGUMENT, before anything is generated.
func TestImageToAWorkerWithoutProjectorIsInvalidArgument(t *testing.T) {
	_, png := dialVision(t)
	plain := dial(t)
	ids, final, err := runToEnd(t, plain, greedyChat(llamagrid.MessageParts("user",
		llamagrid.TextPart(imageQuestion), llamagrid.ImagePart(png, "image/png"))))
	if err == nil {
		t.Fatalf("generated %v (%s), want INVALID_ARGUMENT", ids, final.GetFinishReason())
	}
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("got %v, want INVALID_ARGUMENT", err)
	}
	t.Log(err)
}
