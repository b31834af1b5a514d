package llamagrid

import (
	"context"

	pb "github.com/llamagrid/llamagrid/clients/go/llamagridv1"
	"google.golang.org/grpc"
)

// GetSlots describes every slot of the worker, in id order: whether it runs a request, which one,
// and the tokens its KV cells hold. A slot is a sequence of the KV cache that runs one request at
// a time; GetLoad reports how many there are.
func (c *Client) GetSlots(ctx context.Context, req *pb.GetSlotsRequest, opts ...grpc.CallOption) ([]*pb.SlotState, error) {
	resp, err := c.rpc.GetSlots(ctx, req, opts...)
	return resp.GetSlots(), newError(err)
}

// SaveSlot writes the cached tokens of idle slot req.Id and their KV state to req.Filename, a
// plain file name inside the worker's --slot-save-path directory.
//
// The slot calls (SaveSlot, RestoreSlot, EraseSlot) fail with FAILED_PRECONDITION, reason
// ReasonSlotFilesOff, on a worker started without --slot-save-path; with ABORTED, reason
// ReasonSlotBusy, when the slot runs a request; and with INVALID_ARGUMENT for a slot id that
// does not exist or a file name that is not plain.
func (c *Client) SaveSlot(ctx context.Context, req *pb.SaveSlotRequest, opts ...grpc.CallOption) (*pb.SaveSlotResponse, error) {
	resp, err := c.rpc.SaveSlot(ctx, req, opts...)
	return resp, newError(err)
}

// RestoreSlot loads a file written by SaveSlot into idle slot req.Id, so that the next request
// starting with its tokens reuses them. A file made for another model or other context settings
// is refused with INVALID_ARGUMENT. See SaveSlot for the other errors.
func (c *Client) RestoreSlot(ctx context.Context, req *pb.RestoreSlotRequest, opts ...grpc.CallOption) (*pb.RestoreSlotResponse, error) {
	resp, err := c.rpc.RestoreSlot(ctx, req, opts...)
	return resp, newError(err)
}

// EraseSlot drops the cached tokens of idle slot req.Id and reports how many it held. See
// SaveSlot for the errors.
func (c *Client) EraseSlot(ctx context.Context, req *pb.EraseSlotRequest, opts ...grpc.CallOption) (*pb.EraseSlotResponse, error) {
	resp, err := c.rpc.EraseSlot(ctx, req, opts...)
	return resp, newError(err)
}
