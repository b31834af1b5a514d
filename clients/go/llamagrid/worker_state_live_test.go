package llamagrid_test

// The chat template, LoRA adapter and slot calls against the live worker of
// LLAMAGRID_WORKER_ADDR (see live_test.go): SmolLM2 with no adapters and no --slot-save-path.

import (
	"errors"
	"strings"
	"testing"

	"github.com/llamagrid/llamagrid/clients/go/llamagrid"
	pb "github.com/llamagrid/llamagrid/clients/go/llamagridv1"
	"google.golang.org/grpc/codes"
)

func TestApplyChatTemplate(t *testing.T) {
	client := dial(t)
	const text = "What is the capital of France?"
	prompt, err := client.ApplyChatTemplate(callCtx(t), &pb.ApplyChatTemplateRequest{
		Chat: &pb.ChatConversation{Messages: []*pb.ChatMessage{llamagrid.Message("user", text)}},
	})
	if err != nil {
		t.Fatalf("ApplyChatTemplate: %v", err)
	}
	// SmolLM2's template is ChatML; the prompt ends with the opening of the assistant's turn.
	if !strings.Contains(prompt, text) || !strings.Contains(prompt, "<|im_start|>") {
		t.Errorf("the prompt %q does not hold the message and <|im_start|>", prompt)
	}
	if !strings.HasSuffix(strings.TrimRight(prompt, "\n"), "<|im_start|>assistant") {
		t.Errorf("the prompt %q does not end with the opening of the assistant's turn", prompt)
	}

	_, err = client.ApplyChatTemplate(callCtx(t), &pb.ApplyChatTemplateRequest{Chat: &pb.ChatConversation{}})
	wantError(t, "ApplyChatTemplate of no messages", err, codes.InvalidArgument, llamagrid.ReasonInvalidValue)
}

func TestLoraAdaptersOfAWorkerWithoutAny(t *testing.T) {
	client := dial(t)
	adapters, err := client.ListLoraAdapters(callCtx(t), &pb.ListLoraAdaptersRequest{})
	if err != nil {
		t.Fatalf("ListLoraAdapters: %v", err)
	}
	if len(adapters) != 0 {
		t.Fatalf("a worker without adapters lists %v", adapters)
	}
	// Setting no scales is allowed, and leaves no adapters.
	adapters, err = client.SetLoraAdapters(callCtx(t), &pb.SetLoraAdaptersRequest{})
	if err != nil || len(adapters) != 0 {
		t.Fatalf("SetLoraAdapters of no scales = %v, %v; want no adapters", adapters, err)
	}
	_, err = client.SetLoraAdapters(callCtx(t), &pb.SetLoraAdaptersRequest{
		Adapters: []*pb.LoraScale{{Id: 0, Scale: 1}},
	})
	wantError(t, "SetLoraAdapters of adapter 0", err, codes.InvalidArgument, llamagrid.ReasonInvalidValue)
	var e *llamagrid.Error
	if errors.As(err, &e) && e.Param() != "adapters" {
		t.Errorf("param = %q, want adapters", e.Param())
	}
}

func TestSlots(t *testing.T) {
	client := dial(t)
	load, err := client.GetLoad(callCtx(t))
	if err != nil {
		t.Fatalf("GetLoad: %v", err)
	}
	slots, err := client.GetSlots(callCtx(t), &pb.GetSlotsRequest{})
	if err != nil {
		t.Fatalf("GetSlots: %v", err)
	}
	if len(slots) == 0 || len(slots) != int(load.GetSlots()) {
		t.Fatalf("GetSlots lists %d slots, GetLoad reports %d", len(slots), load.GetSlots())
	}
	for i, slot := range slots {
		if slot.GetId() != uint32(i) || slot.GetNCtx() == 0 {
			t.Errorf("slot %d: %v", i, slot)
		}
	}

	// Slot files are off without --slot-save-path.
	_, err = client.SaveSlot(callCtx(t), &pb.SaveSlotRequest{Id: 0, Filename: "go-client.bin"})
	wantError(t, "SaveSlot", err, codes.FailedPrecondition, llamagrid.ReasonSlotFilesOff)
	_, err = client.RestoreSlot(callCtx(t), &pb.RestoreSlotRequest{Id: 0, Filename: "go-client.bin"})
	wantError(t, "RestoreSlot", err, codes.FailedPrecondition, llamagrid.ReasonSlotFilesOff)
	_, err = client.EraseSlot(callCtx(t), &pb.EraseSlotRequest{Id: 0})
	wantError(t, "EraseSlot", err, codes.FailedPrecondition, llamagrid.ReasonSlotFilesOff)
}
