package nexuskv

import (
	"context"
	"crypto/tls"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	pb "github.com/nexuskv/nexuskv/clients/go/nexuskvpb"
)

// SessionHeader is the metadata key every call about one session carries, with the session id as
// its value. A gateway in front of several shards (nginx "hash ... consistent", Envoy ring_hash)
// routes on it, so a session always reaches the shard that stores it. ListSessions sends none.
const SessionHeader = "x-nexuskv-session"

// Options configure a Client. The zero value is a plaintext client with 30 s deadlines.
type Options struct {
	// Timeout bounds every call whose context has no deadline of its own, measured from the call's
	// start (a whole stream is one call). 0: 30 s. A context deadline always wins.
	Timeout time.Duration
	// MaxMessageBytes is the largest message sent or received: one LayerChunk or CacheLayer must
	// fit. 0: 64 MiB, the server's default --max_message_bytes.
	MaxMessageBytes int
	// TLS, when set, makes the channel TLS; with Certificates, mutual TLS. TLSConfigFromFiles
	// builds one from PEM files. Nil: plaintext (a sidecar or a loopback tier).
	TLS *tls.Config
	// BearerToken, when set, is sent on every call as "authorization: Bearer <token>" for servers
	// started with --auth_tokens_file (the token names the tenant). It travels per call, so it
	// works over plaintext too; anywhere but loopback, pair it with TLS or it crosses the network
	// in the clear. Printable ASCII without spaces.
	BearerToken string
	// WaitForReady makes calls wait (up to their deadline) for the channel to connect instead of
	// failing fast with Unavailable while the server is unreachable.
	WaitForReady bool
	// DialOptions are appended to the client's own (interceptors, keepalive, a custom dialer).
	DialOptions []grpc.DialOption
}

const (
	defaultTimeout         = 30 * time.Second
	defaultMaxMessageBytes = 64 << 20
)

// Client is a connection to one nexuskv server (or a gateway in front of several). It owns one
// gRPC channel, reused by every call, and is safe for concurrent use by many goroutines.
type Client struct {
	conn    *grpc.ClientConn // Nil when the caller owns the connection (NewFromConn).
	stub    pb.KvMemoryClient
	options Options
}

// New opens a channel to target ("host:port", "dns:///kv-tier:50051"). Channels connect lazily,
// so an unreachable server shows up as Unavailable on the first call, not here. InvalidArgument
// for an empty target, negative sizes or timeouts, or a bearer token that is not printable ASCII
// without spaces.
func New(target string, options Options) (*Client, error) {
	if target == "" {
		return nil, newError("New", "", codes.InvalidArgument, "target is empty")
	}
	options, err := checkOptions(options)
	if err != nil {
		return nil, err
	}
	dial := []grpc.DialOption{
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(options.MaxMessageBytes),
			grpc.MaxCallSendMsgSize(options.MaxMessageBytes),
			grpc.WaitForReady(options.WaitForReady),
		),
	}
	if options.TLS != nil {
		dial = append(dial, grpc.WithTransportCredentials(credentials.NewTLS(options.TLS)))
	} else {
		dial = append(dial, grpc.WithInsecure())
	}
	dial = append(dial, options.DialOptions...)
	conn, err := grpc.Dial(target, dial...)
	if err != nil {
		return nil, newError("New", "", codes.InvalidArgument, "dial %s: %v", target, err)
	}
	return &Client{conn: conn, stub: pb.NewKvMemoryClient(conn), options: options}, nil
}

// NewFromConn wraps a connection the caller made and owns (Close leaves it open). Of options,
// Timeout, MaxMessageBytes (checked before sending) and BearerToken apply; TLS, WaitForReady and
// DialOptions are the connection's business.
func NewFromConn(conn grpc.ClientConnInterface, options Options) (*Client, error) {
	options, err := checkOptions(options)
	if err != nil {
		return nil, err
	}
	return &Client{stub: pb.NewKvMemoryClient(conn), options: options}, nil
}

func checkOptions(o Options) (Options, error) {
	if o.Timeout < 0 || o.MaxMessageBytes < 0 {
		return o, newError("New", "", codes.InvalidArgument,
			"Timeout (%v) and MaxMessageBytes (%d) must not be negative", o.Timeout, o.MaxMessageBytes)
	}
	if o.Timeout == 0 {
		o.Timeout = defaultTimeout
	}
	if o.MaxMessageBytes == 0 {
		o.MaxMessageBytes = defaultMaxMessageBytes
	}
	for _, c := range o.BearerToken {
		// HTTP/2 header values: visible ASCII. A space would also split "Bearer <token>" wrongly.
		if c <= ' ' || c > '~' {
			return o, newError("New", "", codes.InvalidArgument,
				"BearerToken must be printable ASCII without spaces")
		}
	}
	return o, nil
}

// Close closes the channel New opened; calls in flight fail with Canceled. A no-op for a client
// made by NewFromConn.
func (c *Client) Close() error {
	if c.conn == nil {
		return nil
	}
	return c.conn.Close()
}

// begin derives the context of one call: the caller's deadline, else Options.Timeout; the
// session header (when sessionID is not empty) and the bearer token as outgoing metadata. The
// server judges session ids; only one that cannot travel in a header (not printable ASCII) is
// refused here, with InvalidArgument.
func (c *Client) begin(ctx context.Context, rpc, sessionID string) (context.Context, context.CancelFunc, error) {
	for _, r := range sessionID {
		if r < ' ' || r > '~' {
			return nil, nil, newError(rpc, "", codes.InvalidArgument,
				"session_id %q: must be 1..128 characters of [A-Za-z0-9._:-]", sessionID)
		}
	}
	var cancel context.CancelFunc
	if _, ok := ctx.Deadline(); ok {
		ctx, cancel = context.WithCancel(ctx)
	} else {
		ctx, cancel = context.WithTimeout(ctx, c.options.Timeout)
	}
	var kv []string
	if sessionID != "" {
		kv = append(kv, SessionHeader, sessionID)
	}
	if c.options.BearerToken != "" {
		kv = append(kv, "authorization", "Bearer "+c.options.BearerToken)
	}
	if len(kv) > 0 {
		ctx = metadata.AppendToOutgoingContext(ctx, kv...)
	}
	return ctx, cancel, nil
}
