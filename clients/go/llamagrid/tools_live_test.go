package llamagrid_test

// Tool calls against the live worker of LLAMAGRID_WORKER_ADDR (see live_test.go). SmolLM2 is not
// trained to call tools: a tool_choice naming a function makes the worker hold its output to a
// grammar built from the tool's schema, so even SmolLM2 makes a valid call, which the worker
// parses into GenerateFinal.ToolCalls. Greedy decoding throughout.

import (
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/llamagrid/llamagrid/clients/go/llamagrid"
	pb "github.com/llamagrid/llamagrid/clients/go/llamagridv1"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
)

var (
	weatherTool = func() *pb.Tool {
		tool := llamagrid.Tool("get_weather", "Get the current weather in a city.", `{
			"type": "object",
			"properties": {
				"city": {"type": "string", "maxLength": 24},
				"unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
			},
			"required": ["city", "unit"],
			"additionalProperties": false
		}`)
		tool.Strict = true
		return tool
	}()
	timeTool = llamagrid.Tool("get_time", "Get the current time in a time zone.",
		`{"type": "object", "properties": {"zone": {"type": "string"}}}`)
	weatherQuestion = llamagrid.Message("user", "What is the weather like in Paris?")
)

// toolStream is what one Generate stream carried.
type toolStream struct {
	text   strings.Builder
	tokens int
	deltas []*pb.ToolCallDelta
	final  *pb.GenerateFinal
}

// streamedCall joins the deltas of call index: the id and name of its first delta (later ones
// must carry neither) and its argument fragments in order. It also returns how many deltas
// there were.
func (s *toolStream) streamedCall(t *testing.T, index uint32) (*pb.ToolCall, int) {
	t.Helper()
	call := &pb.ToolCall{}
	var arguments strings.Builder
	deltas := 0
	for _, d := range s.deltas {
		if d.GetIndex() != index {
			continue
		}
		if deltas == 0 {
			call.Id, call.Name = d.GetId(), d.GetName()
		} else if d.GetId() != "" || d.GetName() != "" {
			t.Errorf("delta %d of call %d carries an id or a name: %v", deltas, index, d)
		}
		arguments.WriteString(d.GetArguments())
		deltas++
	}
	call.Arguments = arguments.String()
	return call, deltas
}

// generateTools runs req to the end and collects its stream, or returns the error it failed with.
func generateTools(
	t *testing.T, client *llamagrid.Client, req *pb.GenerateRequest,
) (*toolStream, error) {
	t.Helper()
	s := &toolStream{}
	for resp, err := range client.Generate(callCtx(t), req) {
		if err != nil {
			return nil, err
		}
		if s.final != nil {
			t.Fatalf("message after the final one: %v", resp)
		}
		if chunk := resp.GetChunk(); chunk != nil {
			s.text.WriteString(chunk.GetText())
			s.tokens += len(chunk.GetTokenIds())
			s.deltas = append(s.deltas, chunk.GetToolCalls()...)
		} else if final := resp.GetFinal(); final != nil {
			s.final = final
		}
	}
	if s.final == nil {
		t.Fatal("the stream ended without a final message")
	}
	if got := s.final.GetUsage().GetCompletionTokens(); int(got) != s.tokens {
		t.Errorf("usage.completion_tokens = %d, but %d token ids were streamed", got, s.tokens)
	}
	return s, nil
}

// TestToolCallThenResult makes SmolLM2 call get_weather (tool_choice names it), checks the call
// as the final message and the streamed deltas carry it, then sends the call and its result
// back and checks that the model answers in text.
func TestToolCallThenResult(t *testing.T) {
	client := dial(t)
	tools := []*pb.Tool{weatherTool, timeTool}
	first, err := generateTools(t, client, &pb.GenerateRequest{
		Input:      llamagrid.Chat(weatherQuestion),
		Tools:      tools,
		ToolChoice: llamagrid.ToolChoiceFunction("get_weather"),
		Sampling:   &pb.SamplingParams{Temperature: proto.Float32(0), MaxTokens: proto.Uint32(64)},
	})
	if err != nil {
		t.Fatalf("Generate: %v", err)
	}
	final := first.final
	if final.GetFinishReason() != pb.FinishReason_FINISH_REASON_TOOL_CALLS {
		t.Fatalf("finish_reason = %s, want FINISH_REASON_TOOL_CALLS (text %q)",
			final.GetFinishReason(), first.text.String())
	}
	if len(final.GetToolCalls()) != 1 {
		t.Fatalf("got %d tool calls, want 1: %v", len(final.GetToolCalls()), final.GetToolCalls())
	}
	call := final.GetToolCalls()[0]
	if call.GetName() != "get_weather" {
		t.Errorf("called %q, want get_weather", call.GetName())
	}
	if call.GetId() == "" {
		t.Error("the call has no id")
	}
	var arguments map[string]any
	if err := json.Unmarshal([]byte(call.GetArguments()), &arguments); err != nil {
		t.Fatalf("arguments %q are not a JSON object: %v", call.GetArguments(), err)
	}
	if city, ok := arguments["city"].(string); !ok || city == "" || len([]rune(city)) > 24 {
		t.Errorf("city = %#v, want a string of 1 to 24 characters", arguments["city"])
	}
	if unit, ok := arguments["unit"].(string); !ok || (unit != "celsius" && unit != "fahrenheit") {
		t.Errorf("unit = %#v, want celsius or fahrenheit", arguments["unit"])
	}
	if len(arguments) != 2 {
		t.Errorf("arguments %s have other keys than city and unit", call.GetArguments())
	}
	// The chunks carried the same call in parts, and no markup in their text.
	if indexes := callIndexes(first.deltas); !slices.Equal(indexes, []uint32{0}) {
		t.Errorf("the deltas are of calls %v, want [0]", indexes)
	}
	// The fragments join to the same JSON value; the final message's text is the parsed
	// arguments written out again (compact), the fragments are the model's own text.
	streamed, deltas := first.streamedCall(t, 0)
	if streamed.GetId() != call.GetId() || streamed.GetName() != call.GetName() {
		t.Errorf("the deltas carry id %q, name %q; the final message %q, %q",
			streamed.GetId(), streamed.GetName(), call.GetId(), call.GetName())
	}
	var streamedArguments map[string]any
	if err := json.Unmarshal([]byte(streamed.GetArguments()), &streamedArguments); err != nil {
		t.Errorf("the %d deltas' fragments join to %q, not a JSON object: %v",
			deltas, streamed.GetArguments(), err)
	} else if !reflect.DeepEqual(streamedArguments, arguments) {
		t.Errorf("the deltas' arguments are %s, the final message's %s",
			streamed.GetArguments(), call.GetArguments())
	}
	if text := first.text.String(); strings.TrimSpace(text) != "" {
		t.Errorf("the chunks' text is %q, want none (the call is not text)", text)
	}
	t.Logf("tools: %s, %s; tool_choice: get_weather", tools[0].GetName(), tools[1].GetName())
	t.Logf("call: id=%s name=%s arguments=%s (%s, %d deltas)",
		call.GetId(), call.GetName(), call.GetArguments(), final.GetFinishReason(), deltas)

	// Second turn: the call and its result; tool_choice none, so the model answers in text.
	second, err := generateTools(t, client, &pb.GenerateRequest{
		Input: llamagrid.Chat(
			weatherQuestion,
			llamagrid.ToolCallMessage(call),
			llamagrid.ToolResult(call.GetId(), `{"temperature": 18, "unit": "celsius"}`),
		),
		Tools:      tools,
		ToolChoice: llamagrid.ToolChoiceMode(pb.ToolChoiceMode_TOOL_CHOICE_MODE_NONE),
		Sampling:   &pb.SamplingParams{Temperature: proto.Float32(0), MaxTokens: proto.Uint32(32)},
	})
	if err != nil {
		t.Fatalf("second turn: %v", err)
	}
	switch reason := second.final.GetFinishReason(); reason {
	case pb.FinishReason_FINISH_REASON_EOS, pb.FinishReason_FINISH_REASON_STOP_STRING,
		pb.FinishReason_FINISH_REASON_LENGTH:
	default:
		t.Errorf("second turn: finish_reason = %s, want EOS, STOP_STRING or LENGTH", reason)
	}
	if len(second.final.GetToolCalls()) != 0 || len(second.deltas) != 0 {
		t.Errorf("second turn: tool calls %v, deltas %v, want none",
			second.final.GetToolCalls(), second.deltas)
	}
	answer := second.text.String()
	if strings.TrimSpace(answer) == "" {
		t.Error("second turn: no text")
	}
	// The prompt holds the call and its result too: more than the question alone (the first
	// turn's prompt is no baseline: SmolLM2's template reads no tools, so the worker described
	// them there, and tool_choice none describes none).
	alone, err := generateTools(t, client, &pb.GenerateRequest{
		Input:    llamagrid.Chat(weatherQuestion),
		Sampling: &pb.SamplingParams{Temperature: proto.Float32(0), MaxTokens: proto.Uint32(1)},
	})
	if err != nil {
		t.Fatalf("the question alone: %v", err)
	}
	if got, before := second.final.GetUsage().GetPromptTokens(), alone.final.GetUsage().GetPromptTokens(); got <= before {
		t.Errorf("second turn: %d prompt tokens, not more than the question's own %d", got, before)
	}
	t.Logf("second turn (%s): %q", second.final.GetFinishReason(), answer)
}

// callIndexes lists the call indexes of deltas, each once, in order of appearance.
func callIndexes(deltas []*pb.ToolCallDelta) []uint32 {
	var indexes []uint32
	for _, d := range deltas {
		if !slices.Contains(indexes, d.GetIndex()) {
			indexes = append(indexes, d.GetIndex())
		}
	}
	return indexes
}

// TestToolChoiceOfUnknownFunction names a function that is not among the tools: INVALID_ARGUMENT
// on the tool_choice field, before anything is generated.
func TestToolChoiceOfUnknownFunction(t *testing.T) {
	client := dial(t)
	stream, err := generateTools(t, client, &pb.GenerateRequest{
		Input:      llamagrid.Chat(weatherQuestion),
		Tools:      []*pb.Tool{weatherTool, timeTool},
		ToolChoice: llamagrid.ToolChoiceFunction("get_stock_price"),
		Sampling:   &pb.SamplingParams{Temperature: proto.Float32(0), MaxTokens: proto.Uint32(16)},
	})
	if err == nil {
		t.Fatalf("generated %q (%s), want INVALID_ARGUMENT",
			stream.text.String(), stream.final.GetFinishReason())
	}
	wantError(t, "tool_choice get_stock_price", err, codes.InvalidArgument, llamagrid.ReasonInvalidValue)
	var e *llamagrid.Error
	if errors.As(err, &e) && e.Param() != "tool_choice" {
		t.Errorf("param = %q, want tool_choice", e.Param())
	}
	t.Log(err)
}
