package llamagrid

import (
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
)

// Connection defaults shared with the Python worker. Both ends must agree on them: the worker
// accepts keepalive pings no closer than 10 s apart, so a client that pings more often would
// be sent GOAWAY "too_many_pings".
const (
	// MaxMessageBytes is the largest message sent or accepted: 64 MiB, enough for a batch of a
	// thousand 4096-wide float embeddings (gRPC's default receive limit is 4 MiB).
	MaxMessageBytes = 64 << 20
	// KeepaliveTime is how long a connection may be idle before the client pings the worker.
	KeepaliveTime = 30 * time.Second
	// KeepaliveTimeout is how long to wait for a ping's answer before the connection is
	// considered dead.
	KeepaliveTimeout = 10 * time.Second
	// MaxReconnectBackoff caps the wait between reconnection attempts, so that a restarted
	// worker is found quickly (gRPC's default grows to two minutes).
	MaxReconnectBackoff = 5 * time.Second
)

// DefaultDialOptions returns the options Dial applies before the caller's own: plaintext
// transport, keepalive (30 s time, 10 s timeout, also without active calls), 64 MiB send and
// receive limits and a 5 s maximum reconnection backoff.
func DefaultDialOptions() []grpc.DialOption {
	retry := backoff.DefaultConfig
	retry.MaxDelay = MaxReconnectBackoff
	return []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                KeepaliveTime,
			Timeout:             KeepaliveTimeout,
			PermitWithoutStream: true,
		}),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(MaxMessageBytes),
			grpc.MaxCallSendMsgSize(MaxMessageBytes),
		),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           retry,
			MinConnectTimeout: 20 * time.Second,
		}),
	}
}
