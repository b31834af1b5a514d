package llamagrid

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of every llamagrid error.
const ErrorDomain = "llamagrid.dev"

// The ErrorInfo reasons a worker reports.
const (
	// ReasonContextLengthExceeded: the prompt plus the requested completion does not fit the
	// context.
	ReasonContextLengthExceeded = "CONTEXT_LENGTH_EXCEEDED"
	// ReasonModelNotFound: the request names a model this worker does not serve.
	ReasonModelNotFound = "MODEL_NOT_FOUND"
	// ReasonInvalidValue: a field has a value out of range or of the wrong form.
	ReasonInvalidValue = "INVALID_VALUE"
	// ReasonUnsupported: the request asks for something this worker cannot do.
	ReasonUnsupported = "UNSUPPORTED_PARAMETER"
	// ReasonQueueFull: the worker's queue is full (RESOURCE_EXHAUSTED, with a retry delay).
	ReasonQueueFull = "QUEUE_FULL"
	// ReasonQueueTimeout: the request waited in the queue longer than its queue timeout.
	ReasonQueueTimeout = "QUEUE_TIMEOUT"
	// ReasonNotReady: the worker is shutting down or still loading its model.
	ReasonNotReady = "NOT_READY"
	// ReasonSessionNotFound: the session is unknown, closed or reaped (NOT_FOUND).
	ReasonSessionNotFound = "SESSION_NOT_FOUND"
	// ReasonSessionExpired: the session was not used for its TTL (NOT_FOUND).
	ReasonSessionExpired = "SESSION_EXPIRED"
	// ReasonSessionBusy: a turn is already running on the session (ABORTED).
	ReasonSessionBusy = "SESSION_BUSY"
	// ReasonSessionLengthMismatch: the session does not have the turns the request expected
	// (ABORTED; see TurnAfter).
	ReasonSessionLengthMismatch = "SESSION_LENGTH_MISMATCH"
	// ReasonSessionLimit: the worker holds its maximum number of sessions (RESOURCE_EXHAUSTED).
	ReasonSessionLimit = "SESSION_LIMIT"
	// ReasonTurnCancelled: the session's turn was cancelled through CancelTurn (CANCELLED).
	ReasonTurnCancelled = "TURN_CANCELLED"
	// ReasonSlotBusy: the slot runs a request; saving, restoring or erasing it needs it idle
	// (ABORTED).
	ReasonSlotBusy = "SLOT_BUSY"
	// ReasonSlotFilesOff: slot files are off, the worker has no --slot-save-path
	// (FAILED_PRECONDITION).
	ReasonSlotFilesOff = "SLOT_FILES_OFF"
)

// Error is the error every Client method returns when a call fails. It carries the call's
// gRPC status, so status.FromError and status.Code work on it, together with the
// google.rpc.ErrorInfo and google.rpc.RetryInfo details the worker attached.
//
// errors.Is(err, context.DeadlineExceeded) and errors.Is(err, context.Canceled) report true
// for the matching status codes.
type Error struct {
	status *status.Status
	info   *errdetails.ErrorInfo
	retry  *errdetails.RetryInfo
}

// newError turns an error returned by gRPC into an *Error (nil stays nil).
func newError(err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	st, ok := status.FromError(err)
	if !ok {
		st = status.New(codes.Unknown, err.Error())
	}
	return errorFromStatus(st)
}

func errorFromStatus(st *status.Status) *Error {
	e := &Error{status: st}
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			if e.info == nil {
				e.info = d
			}
		case *errdetails.RetryInfo:
			e.retry = d
		}
	}
	return e
}

// Error formats the code, message and, when present, the reason and offending field.
func (e *Error) Error() string {
	msg := fmt.Sprintf("llamagrid: %s: %s", e.Code(), e.Message())
	if r := e.Reason(); r != "" {
		msg += " (" + r
		if p := e.Param(); p != "" {
			msg += ", param " + p
		}
		msg += ")"
	}
	return msg
}

// GRPCStatus returns the call's status, including its details.
func (e *Error) GRPCStatus() *status.Status { return e.status }

// Code returns the gRPC status code.
func (e *Error) Code() codes.Code { return e.status.Code() }

// Message returns the worker's human-readable description of the failure.
func (e *Error) Message() string { return e.status.Message() }

// Info returns the ErrorInfo detail, or nil when the status has none.
func (e *Error) Info() *errdetails.ErrorInfo { return e.info }

// Reason returns the ErrorInfo reason (one of the Reason constants), or "".
func (e *Error) Reason() string { return e.info.GetReason() }

// Param returns the request field the error is about, when the worker named one.
func (e *Error) Param() string { return e.info.GetMetadata()["param"] }

// RetryDelay returns how long the worker asks the caller to wait before retrying, and whether
// it said so (it does for RESOURCE_EXHAUSTED).
func (e *Error) RetryDelay() (time.Duration, bool) {
	if e.retry == nil || e.retry.GetRetryDelay() == nil {
		return 0, false
	}
	return e.retry.GetRetryDelay().AsDuration(), true
}

// Is makes errors.Is match context.DeadlineExceeded and context.Canceled.
func (e *Error) Is(target error) bool {
	switch target {
	case context.DeadlineExceeded:
		return e.Code() == codes.DeadlineExceeded
	case context.Canceled:
		return e.Code() == codes.Canceled
	}
	return false
}

// Reason returns the ErrorInfo reason carried by err, which may be an *Error or any error with
// a gRPC status, or "" when there is none.
func Reason(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Reason()
	}
	st, ok := status.FromError(err)
	if !ok {
		return ""
	}
	return errorFromStatus(st).Reason()
}
