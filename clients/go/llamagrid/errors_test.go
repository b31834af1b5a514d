package llamagrid

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// TestErrorDetails checks the parsing of ErrorInfo and RetryInfo without a worker.
func TestErrorDetails(t *testing.T) {
	st, err := status.New(codes.ResourceExhausted, "the queue is full").WithDetails(
		&errdetails.ErrorInfo{Reason: ReasonQueueFull, Domain: ErrorDomain, Metadata: map[string]string{"param": "model"}},
		&errdetails.RetryInfo{RetryDelay: durationpb.New(1500 * time.Millisecond)},
	)
	if err != nil {
		t.Fatal(err)
	}
	raw := st.Err()
	if got := Reason(raw); got != ReasonQueueFull {
		t.Errorf("Reason(grpc error) = %q", got)
	}
	wrapped := newError(raw)
	var e *Error
	if !errors.As(wrapped, &e) {
		t.Fatalf("newError returned %T", wrapped)
	}
	if e.Code() != codes.ResourceExhausted || e.Reason() != ReasonQueueFull || e.Param() != "model" {
		t.Errorf("got code %s reason %q param %q", e.Code(), e.Reason(), e.Param())
	}
	if d, ok := e.RetryDelay(); !ok || d != 1500*time.Millisecond {
		t.Errorf("RetryDelay() = %v, %v", d, ok)
	}
	if s, ok := status.FromError(wrapped); !ok || s.Code() != codes.ResourceExhausted || len(s.Details()) != 2 {
		t.Errorf("status.FromError lost the status: %v %v", s, ok)
	}
	if got := Reason(wrapped); got != ReasonQueueFull {
		t.Errorf("Reason(*Error) = %q", got)
	}
	want := "llamagrid: ResourceExhausted: the queue is full (QUEUE_FULL, param model)"
	if e.Error() != want {
		t.Errorf("Error() = %q, want %q", e.Error(), want)
	}
	if newError(nil) != nil || Reason(nil) != "" || Reason(errors.New("plain")) != "" {
		t.Error("nil or plain errors mishandled")
	}
	deadline := newError(status.Error(codes.DeadlineExceeded, "deadline"))
	if !errors.Is(deadline, context.DeadlineExceeded) || errors.Is(deadline, context.Canceled) {
		t.Error("errors.Is does not map DEADLINE_EXCEEDED to context.DeadlineExceeded")
	}
}
