// Package llamagrid is a thin Go client for llamagrid workers: the llamagrid.v1.InferenceService
// and SessionService gRPC APIs with connection defaults that match the worker, a range-over-func
// iterator for streamed generation and errors that expose the worker's ErrorInfo reason.
//
// The request and response messages are the generated types of package llamagridv1.
package llamagrid

import (
	"context"
	"fmt"
	"io"
	"iter"

	pb "github.com/llamagrid/llamagrid/clients/go/llamagridv1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"
)

// Client calls one llamagrid worker. It is safe for concurrent use.
type Client struct {
	conn     *grpc.ClientConn
	rpc      pb.InferenceServiceClient
	sessions pb.SessionServiceClient
}

// Dial connects to the worker at target (such as "127.0.0.1:50051") and waits until the
// connection is ready or ctx ends. DefaultDialOptions apply first, then opts, which may override
// them: for TLS, grpc.WithTransportCredentials with credentials from TLSCredentials; for a
// worker's token, WithToken. Close the client when done.
func Dial(ctx context.Context, target string, opts ...grpc.DialOption) (*Client, error) {
	conn, err := grpc.NewClient(target, append(DefaultDialOptions(), opts...)...)
	if err != nil {
		return nil, fmt.Errorf("llamagrid: dial %s: %w", target, err)
	}
	for {
		state := conn.GetState()
		if state == connectivity.Ready {
			return New(conn), nil
		}
		if state == connectivity.Idle {
			conn.Connect()
		}
		if !conn.WaitForStateChange(ctx, state) {
			conn.Close()
			return nil, fmt.Errorf("llamagrid: dial %s: connection %s: %w", target, state, ctx.Err())
		}
	}
}

// New wraps an existing connection, for callers who build their own *grpc.ClientConn. Its
// Close closes conn.
func New(conn *grpc.ClientConn) *Client {
	return &Client{
		conn:     conn,
		rpc:      pb.NewInferenceServiceClient(conn),
		sessions: pb.NewSessionServiceClient(conn),
	}
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Conn returns the underlying connection, for instance to run health checks.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Generate streams a completion. The iterator yields every message of the stream: chunks of
// output, then exactly one final message (GetFinal() != nil) with the finish reason and usage.
// On failure it yields a nil response and an *Error, then stops; a stream that ends without a
// final message yields an INTERNAL error. Breaking out of the loop cancels the call; each range
// over the iterator makes a new call.
//
//	for resp, err := range client.Generate(ctx, req) {
//		if err != nil { return err }
//		fmt.Print(resp.GetChunk().GetText())
//	}
func (c *Client) Generate(ctx context.Context, req *pb.GenerateRequest, opts ...grpc.CallOption) iter.Seq2[*pb.GenerateResponse, error] {
	return func(yield func(*pb.GenerateResponse, error) bool) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stream, err := c.rpc.Generate(ctx, req, opts...)
		if err != nil {
			yield(nil, newError(err))
			return
		}
		final := false
		for {
			resp, err := stream.Recv()
			if err == io.EOF {
				if !final {
					yield(nil, errorFromStatus(status.New(codes.Internal,
						"the Generate stream ended without a final message")))
				}
				return
			}
			if err != nil {
				yield(nil, newError(err))
				return
			}
			final = final || resp.GetFinal() != nil
			if !yield(resp, nil) {
				return
			}
		}
	}
}

// Embed returns one embedding per input, in input order.
func (c *Client) Embed(ctx context.Context, req *pb.EmbedRequest, opts ...grpc.CallOption) (*pb.EmbedResponse, error) {
	resp, err := c.rpc.Embed(ctx, req, opts...)
	return resp, newError(err)
}

// Tokenize turns text into token ids.
func (c *Client) Tokenize(ctx context.Context, req *pb.TokenizeRequest, opts ...grpc.CallOption) (*pb.TokenizeResponse, error) {
	resp, err := c.rpc.Tokenize(ctx, req, opts...)
	return resp, newError(err)
}

// Detokenize turns token ids back into text.
func (c *Client) Detokenize(ctx context.Context, req *pb.DetokenizeRequest, opts ...grpc.CallOption) (*pb.DetokenizeResponse, error) {
	resp, err := c.rpc.Detokenize(ctx, req, opts...)
	return resp, newError(err)
}

// ApplyChatTemplate returns the prompt text req.Chat renders to with the model's chat template,
// followed by the opening of the assistant's turn, without generating anything: what a Generate
// call with the same messages would run on. The messages are checked as Generate checks them.
func (c *Client) ApplyChatTemplate(ctx context.Context, req *pb.ApplyChatTemplateRequest, opts ...grpc.CallOption) (string, error) {
	resp, err := c.rpc.ApplyChatTemplate(ctx, req, opts...)
	return resp.GetPrompt(), newError(err)
}

// GetModelInfo describes the model served under req.Model ("" for the worker's only model).
func (c *Client) GetModelInfo(ctx context.Context, req *pb.GetModelInfoRequest, opts ...grpc.CallOption) (*pb.GetModelInfoResponse, error) {
	resp, err := c.rpc.GetModelInfo(ctx, req, opts...)
	return resp, newError(err)
}

// ListModels describes every model the worker serves.
func (c *Client) ListModels(ctx context.Context, opts ...grpc.CallOption) ([]*pb.ModelInfo, error) {
	resp, err := c.rpc.ListModels(ctx, &pb.ListModelsRequest{}, opts...)
	return resp.GetModels(), newError(err)
}

// GetLoad reports the worker's work in progress and KV cache occupancy.
func (c *Client) GetLoad(ctx context.Context, opts ...grpc.CallOption) (*pb.GetLoadResponse, error) {
	resp, err := c.rpc.GetLoad(ctx, &pb.GetLoadRequest{}, opts...)
	return resp, newError(err)
}
