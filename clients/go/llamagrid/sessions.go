package llamagrid

import (
	"context"

	pb "github.com/llamagrid/llamagrid/clients/go/llamagridv1"
	"google.golang.org/grpc"
)

// OpenSession creates a session and describes it. req.Model "" means the worker's only model,
// req.TtlS 0 the worker's default TTL; req.Transcript, when set, is the history to start from.
func (c *Client) OpenSession(ctx context.Context, req *pb.OpenSessionRequest, opts ...grpc.CallOption) (*pb.SessionInfo, error) {
	resp, err := c.sessions.OpenSession(ctx, req, opts...)
	return resp.GetSession(), newError(err)
}

// GetSession describes a session and, with req.WithTranscript, returns its transcript too.
// An unknown, closed or reaped session fails with NOT_FOUND, reason ReasonSessionNotFound, and
// an expired one with ReasonSessionExpired.
func (c *Client) GetSession(ctx context.Context, req *pb.GetSessionRequest, opts ...grpc.CallOption) (*pb.GetSessionResponse, error) {
	resp, err := c.sessions.GetSession(ctx, req, opts...)
	return resp, newError(err)
}

// ForkSession creates a new session holding the first req.Turns turns of req.SessionId, which
// stays as it was, and describes the new one. More turns than the session has fails with
// INVALID_ARGUMENT.
func (c *Client) ForkSession(ctx context.Context, req *pb.ForkSessionRequest, opts ...grpc.CallOption) (*pb.SessionInfo, error) {
	resp, err := c.sessions.ForkSession(ctx, req, opts...)
	return resp.GetSession(), newError(err)
}

// RollbackSession keeps the first req.Turns turns of a session, drops the later ones and
// describes the session after it. More turns than the session has fails with INVALID_ARGUMENT.
func (c *Client) RollbackSession(ctx context.Context, req *pb.RollbackSessionRequest, opts ...grpc.CallOption) (*pb.SessionInfo, error) {
	resp, err := c.sessions.RollbackSession(ctx, req, opts...)
	return resp.GetSession(), newError(err)
}

// CloseSession deletes a session; a turn running on it is cancelled.
func (c *Client) CloseSession(ctx context.Context, sessionID string, opts ...grpc.CallOption) error {
	_, err := c.sessions.CloseSession(ctx, &pb.CloseSessionRequest{SessionId: sessionID}, opts...)
	return newError(err)
}

// CancelTurn cancels the turn running on a session, from any caller, and reports whether one
// was running. The turn's stream ends with CANCELLED, reason ReasonTurnCancelled (errors.Is
// with context.Canceled is true for it too; the reason tells it from the caller's own
// cancellation), and the turn commits nothing. An unknown, closed or reaped session fails with
// NOT_FOUND, reason ReasonSessionNotFound.
func (c *Client) CancelTurn(ctx context.Context, sessionID string, opts ...grpc.CallOption) (bool, error) {
	resp, err := c.sessions.CancelTurn(ctx, &pb.CancelTurnRequest{SessionId: sessionID}, opts...)
	return resp.GetCancelled(), newError(err)
}

// Turn makes a GenerateRequest the next turn of a session, for the request's Session field. A
// session is a conversation the worker keeps: the exact token ids of its committed turns. The
// request's input (chat messages, prompt or tokens) is then only the new turn, and the final
// message reports what the turn committed in GetFinal().GetSession(). A cancelled or failed turn
// commits nothing. A second turn while one runs fails with ABORTED, reason ReasonSessionBusy.
func Turn(sessionID string) *pb.SessionRef {
	return &pb.SessionRef{SessionId: sessionID}
}

// TurnAfter is Turn for a turn that runs only if the session has exactly expectedTurns
// committed turns; otherwise the call fails with ABORTED, reason ReasonSessionLengthMismatch.
// Use it to retry a turn whose outcome was not seen without committing it twice.
func TurnAfter(sessionID string, expectedTurns uint32) *pb.SessionRef {
	return &pb.SessionRef{SessionId: sessionID, ExpectedTurns: &expectedTurns}
}
