package llamagrid_test

// Session calls against the live worker of LLAMAGRID_WORKER_ADDR (see live_test.go).

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/llamagrid/llamagrid/clients/go/llamagrid"
	pb "github.com/llamagrid/llamagrid/clients/go/llamagridv1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// turn runs one greedy 8-token turn of a session and returns its final message, or the error
// the call failed with.
func turn(t *testing.T, client *llamagrid.Client, ref *pb.SessionRef, user string) (*pb.GenerateFinal, error) {
	t.Helper()
	req := &pb.GenerateRequest{
		Input:    llamagrid.Chat(llamagrid.Message("user", user)),
		Sampling: &pb.SamplingParams{Temperature: proto.Float32(0), MaxTokens: proto.Uint32(8)},
		Session:  ref,
	}
	var final *pb.GenerateFinal
	for resp, err := range client.Generate(callCtx(t), req) {
		if err != nil {
			return nil, err
		}
		if f := resp.GetFinal(); f != nil {
			final = f
		}
	}
	return final, nil
}

// commit runs a turn that must succeed and returns what it committed.
func commit(t *testing.T, client *llamagrid.Client, ref *pb.SessionRef, user string) *pb.SessionCommit {
	t.Helper()
	final, err := turn(t, client, ref, user)
	if err != nil {
		t.Fatalf("turn %q: %v", user, err)
	}
	if final.GetSession() == nil {
		t.Fatalf("turn %q: the final message has no session commit: %v", user, final)
	}
	return final.GetSession()
}

// wantError checks err's code and ErrorInfo reason.
func wantError(t *testing.T, what string, err error, code codes.Code, reason string) {
	t.Helper()
	if status.Code(err) != code || llamagrid.Reason(err) != reason {
		t.Fatalf("%s: got %v, want %s with reason %s", what, err, code, reason)
	}
	var e *llamagrid.Error
	if !errors.As(err, &e) {
		t.Fatalf("%s: the error is a %T, not a *llamagrid.Error", what, err)
	}
}

// closeAtEnd closes a session when the test ends, whatever state the test left it in.
func closeAtEnd(t *testing.T, client *llamagrid.Client, id string) {
	t.Cleanup(func() {
		// t.Context() is already cancelled when cleanups run.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		err := client.CloseSession(ctx, id)
		if err != nil && llamagrid.Reason(err) != llamagrid.ReasonSessionNotFound {
			t.Errorf("closing session %s: %v", id, err)
		}
	})
}

func getSession(t *testing.T, client *llamagrid.Client, id string) *pb.GetSessionResponse {
	t.Helper()
	resp, err := client.GetSession(callCtx(t), &pb.GetSessionRequest{SessionId: id, WithTranscript: true})
	if err != nil {
		t.Fatalf("GetSession(%s): %v", id, err)
	}
	return resp
}

// TestSessionLifecycle opens a session, runs two turns, reads it back, forks it, checks the
// expected_turns guard, rolls it back and closes it.
func TestSessionLifecycle(t *testing.T) {
	client := dial(t)
	opened, err := client.OpenSession(callCtx(t), &pb.OpenSessionRequest{})
	if err != nil {
		t.Fatalf("OpenSession: %v", err)
	}
	id := opened.GetSessionId()
	if id == "" || opened.GetLength() != 0 || len(opened.GetTurnEnds()) != 0 {
		t.Fatalf("a new session should have an id and no turns: %v", opened)
	}
	closeAtEnd(t, client, id)

	first := commit(t, client, llamagrid.Turn(id), "Name one color.")
	if first.GetTurns() != 1 || first.GetLength() == 0 || len(first.GetAppendedTokenIds()) != int(first.GetLength()) {
		t.Fatalf("first turn committed %v", first)
	}
	second := commit(t, client, llamagrid.Turn(id), "Name another one.")
	if second.GetTurns() != 2 || second.GetLength() <= first.GetLength() {
		t.Fatalf("second turn committed %v after %v", second, first)
	}
	if got, want := len(second.GetAppendedTokenIds()), int(second.GetLength()-first.GetLength()); got != want {
		t.Fatalf("the second turn appended %d token ids, want %d", got, want)
	}

	got := getSession(t, client, id)
	if got.GetSession().GetSessionId() != id || got.GetSession().GetLength() != second.GetLength() {
		t.Errorf("GetSession describes %v, want session %s of length %d", got.GetSession(), id, second.GetLength())
	}
	if ends := got.GetSession().GetTurnEnds(); !slices.Equal(ends, []uint32{first.GetLength(), second.GetLength()}) {
		t.Errorf("turn_ends = %v, want [%d %d]", ends, first.GetLength(), second.GetLength())
	}
	transcript := got.GetTranscript().GetTokenIds()
	if want := slices.Concat(first.GetAppendedTokenIds(), second.GetAppendedTokenIds()); !slices.Equal(transcript, want) {
		t.Errorf("the transcript (%d ids) is not the two turns' appended ids (%d)", len(transcript), len(want))
	}

	fork, err := client.ForkSession(callCtx(t), &pb.ForkSessionRequest{SessionId: id, Turns: 1})
	if err != nil {
		t.Fatalf("ForkSession: %v", err)
	}
	closeAtEnd(t, client, fork.GetSessionId())
	if fork.GetSessionId() == id || fork.GetLength() != first.GetLength() ||
		!slices.Equal(fork.GetTurnEnds(), []uint32{first.GetLength()}) {
		t.Errorf("a fork at turn 1 should be a new session with turn_ends [%d]: %v", first.GetLength(), fork)
	}
	if after := getSession(t, client, id).GetSession(); after.GetLength() != second.GetLength() {
		t.Errorf("forking changed the original session: %v", after)
	}

	// expected_turns 0 is sent as set (it is a proto3 optional): the session has 2 turns.
	_, err = turn(t, client, llamagrid.TurnAfter(id, 0), "This turn must not run.")
	wantError(t, "a turn expecting 0 turns", err, codes.Aborted, llamagrid.ReasonSessionLengthMismatch)
	third := commit(t, client, llamagrid.TurnAfter(id, 2), "And a third.")
	if third.GetTurns() != 3 || third.GetLength() <= second.GetLength() {
		t.Errorf("a turn expecting 2 turns committed %v", third)
	}

	_, err = client.RollbackSession(callCtx(t), &pb.RollbackSessionRequest{SessionId: id, Turns: 4})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("a rollback to 4 of 3 turns: got %v, want INVALID_ARGUMENT", err)
	}
	back, err := client.RollbackSession(callCtx(t), &pb.RollbackSessionRequest{SessionId: id, Turns: 0})
	if err != nil {
		t.Fatalf("RollbackSession: %v", err)
	}
	if back.GetLength() != 0 || len(back.GetTurnEnds()) != 0 {
		t.Errorf("after a rollback to 0 turns: %v", back)
	}
	if n := len(getSession(t, client, id).GetTranscript().GetTokenIds()); n != 0 {
		t.Errorf("after a rollback to 0 turns the transcript has %d ids", n)
	}

	if err := client.CloseSession(callCtx(t), id); err != nil {
		t.Fatalf("CloseSession: %v", err)
	}
	_, err = client.GetSession(callCtx(t), &pb.GetSessionRequest{SessionId: id})
	wantError(t, "GetSession after CloseSession", err, codes.NotFound, llamagrid.ReasonSessionNotFound)
	_, err = turn(t, client, llamagrid.Turn(id), "Hello?")
	wantError(t, "a turn on a closed session", err, codes.NotFound, llamagrid.ReasonSessionNotFound)
}

func TestSessionUnknownID(t *testing.T) {
	client := dial(t)
	_, err := client.GetSession(callCtx(t), &pb.GetSessionRequest{SessionId: "no-such-session"})
	wantError(t, "GetSession of an unknown id", err, codes.NotFound, llamagrid.ReasonSessionNotFound)
	_, err = client.ForkSession(callCtx(t), &pb.ForkSessionRequest{SessionId: "no-such-session"})
	wantError(t, "ForkSession of an unknown id", err, codes.NotFound, llamagrid.ReasonSessionNotFound)
}

// TestSessionBusyAndCancelledTurn starts a long turn, checks that a second turn is refused while
// it runs, cancels it and checks that it committed nothing.
func TestSessionBusyAndCancelledTurn(t *testing.T) {
	client := dial(t)
	opened, err := client.OpenSession(callCtx(t), &pb.OpenSessionRequest{})
	if err != nil {
		t.Fatalf("OpenSession: %v", err)
	}
	id := opened.GetSessionId()
	closeAtEnd(t, client, id)

	long := &pb.GenerateRequest{
		Input:    llamagrid.Chat(llamagrid.Message("user", "Count from one to one thousand.")),
		Sampling: &pb.SamplingParams{Temperature: proto.Float32(0), MaxTokens: proto.Uint32(2000), IgnoreEos: proto.Bool(true)},
		Session:  llamagrid.Turn(id),
	}
	for resp, err := range client.Generate(callCtx(t), long) {
		if err != nil {
			t.Fatalf("the long turn: %v", err)
		}
		if resp.GetFinal() != nil {
			t.Fatalf("the long turn finished: %v", resp.GetFinal())
		}
		// The turn is running: it has produced output.
		_, err = turn(t, client, llamagrid.Turn(id), "A second turn at the same time.")
		wantError(t, "a second turn while one runs", err, codes.Aborted, llamagrid.ReasonSessionBusy)
		break // cancels the long turn
	}

	// Wait for the worker to see the cancellation, then check that nothing was committed.
	var info *pb.SessionInfo
	for start := time.Now(); time.Since(start) < 10*time.Second; time.Sleep(50 * time.Millisecond) {
		info = getSession(t, client, id).GetSession()
		if !info.GetBusy() {
			break
		}
	}
	if info.GetBusy() || info.GetLength() != 0 || len(info.GetTurnEnds()) != 0 {
		t.Fatalf("after a cancelled turn the session should be idle and empty: %v", info)
	}
	if first := commit(t, client, llamagrid.Turn(id), "Name one color."); first.GetTurns() != 1 {
		t.Errorf("the turn after a cancelled one committed %v", first)
	}
}

// TestCancelTurn cancels a running turn through CancelTurn, from another call: the turn's stream
// ends with CANCELLED (TURN_CANCELLED), the session keeps no turn, and a second CancelTurn finds
// nothing to cancel.
func TestCancelTurn(t *testing.T) {
	client := dial(t)
	opened, err := client.OpenSession(callCtx(t), &pb.OpenSessionRequest{})
	if err != nil {
		t.Fatalf("OpenSession: %v", err)
	}
	id := opened.GetSessionId()
	closeAtEnd(t, client, id)

	long := &pb.GenerateRequest{
		Input:    llamagrid.Chat(llamagrid.Message("user", "Count from one to one thousand.")),
		Sampling: &pb.SamplingParams{Temperature: proto.Float32(0), MaxTokens: proto.Uint32(400), IgnoreEos: proto.Bool(true)},
		Session:  llamagrid.Turn(id),
	}
	started := make(chan struct{})
	ended := make(chan error, 1)
	ctx := callCtx(t)
	go func() {
		first := true
		for resp, err := range client.Generate(ctx, long) {
			if err != nil {
				ended <- err
				return
			}
			if resp.GetFinal() != nil {
				ended <- errors.New("the turn finished: " + resp.GetFinal().String())
				return
			}
			if first {
				first = false
				close(started)
			}
		}
		ended <- errors.New("the turn's stream ended without a final message or an error")
	}()
	select {
	case <-started:
	case err := <-ended:
		t.Fatalf("the long turn ended before its first chunk: %v", err)
	case <-time.After(2 * time.Minute):
		t.Fatal("the long turn sent no chunk within 2 minutes")
	}

	cancelled, err := client.CancelTurn(callCtx(t), id)
	if err != nil || !cancelled {
		t.Fatalf("CancelTurn of a running turn = %v, %v; want true", cancelled, err)
	}
	select {
	case err := <-ended:
		wantError(t, "the cancelled turn", err, codes.Canceled, llamagrid.ReasonTurnCancelled)
		t.Log(err)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("errors.Is(%v, context.Canceled) = false", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the cancelled turn's stream did not end within a minute")
	}

	var info *pb.SessionInfo
	for start := time.Now(); time.Since(start) < 10*time.Second; time.Sleep(50 * time.Millisecond) {
		info = getSession(t, client, id).GetSession()
		if !info.GetBusy() {
			break
		}
	}
	if info.GetBusy() || info.GetLength() != 0 || len(info.GetTurnEnds()) != 0 {
		t.Fatalf("after a cancelled turn the session should be idle with no turns: %v", info)
	}
	cancelled, err = client.CancelTurn(callCtx(t), id)
	if err != nil || cancelled {
		t.Fatalf("CancelTurn with no turn running = %v, %v; want false", cancelled, err)
	}
	if err := client.CloseSession(callCtx(t), id); err != nil {
		t.Fatalf("CloseSession: %v", err)
	}
	_, err = client.CancelTurn(callCtx(t), id)
	wantError(t, "CancelTurn of a closed session", err, codes.NotFound, llamagrid.ReasonSessionNotFound)
}
