package llamagrid

import (
	"context"

	pb "github.com/llamagrid/llamagrid/clients/go/llamagridv1"
	"google.golang.org/grpc"
)

// ListLoraAdapters lists the LoRA adapters the worker loaded at start (--lora, --lora-scaled), in
// id order, with the scales that requests giving none of their own run with. It is empty when
// the worker loaded none. req.Model "" means the worker's only model.
func (c *Client) ListLoraAdapters(ctx context.Context, req *pb.ListLoraAdaptersRequest, opts ...grpc.CallOption) ([]*pb.LoraAdapter, error) {
	resp, err := c.rpc.ListLoraAdapters(ctx, req, opts...)
	return resp.GetAdapters(), newError(err)
}

// SetLoraAdapters sets the scales of the LoRA adapters for the requests admitted from now on
// (running ones keep theirs): each adapter in req.Adapters gets its scale, every other one 0. It
// returns every adapter with its new scale. An unknown or repeated id, or a scale that is not
// finite or beyond -10..10, fails with INVALID_ARGUMENT (reason ReasonInvalidValue) and changes
// nothing; so does any id on a worker without adapters.
func (c *Client) SetLoraAdapters(ctx context.Context, req *pb.SetLoraAdaptersRequest, opts ...grpc.CallOption) ([]*pb.LoraAdapter, error) {
	resp, err := c.rpc.SetLoraAdapters(ctx, req, opts...)
	return resp.GetAdapters(), newError(err)
}
