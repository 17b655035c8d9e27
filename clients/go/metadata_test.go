package nexuskv_test

import (
	"context"
	"sort"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	nexuskv "github.com/nexuskv/nexuskv/clients/go"
	pb "github.com/nexuskv/nexuskv/clients/go/nexuskvpb"
)

// recorder notes the outgoing metadata of every call the client makes, as it leaves for the real
// server.
type recorder struct {
	mu    sync.Mutex
	calls []string // "Method key=value ...", one per call.
}

func (r *recorder) note(ctx context.Context, method string) {
	md, _ := metadata.FromOutgoingContext(ctx)
	var pairs []string
	for k, vs := range md {
		for _, v := range vs {
			pairs = append(pairs, k+"="+v)
		}
	}
	sort.Strings(pairs)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, strings.TrimSpace(method[strings.LastIndex(method, "/")+1:]+" "+strings.Join(pairs, " ")))
}

func (r *recorder) dialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply interface{},
			cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			r.note(ctx, method)
			return invoker(ctx, method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn,
			method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			r.note(ctx, method)
			return streamer(ctx, desc, cc, method, opts...)
		}),
	}
}

// Every call about a session carries x-nexuskv-session (a gateway hashes on it); ListSessions,
// about none, carries no such header. The bearer token rides on every call.
func TestSessionHeaderOnEveryCall(t *testing.T) {
	s := plainServer(t)
	var r recorder
	c := newClient(t, s, nexuskv.Options{BearerToken: "t0k3n", DialOptions: r.dialOptions()})
	ctx := context.Background()
	id := sessionID(t)
	appendSession(t, c, id, spec(pb.DType_DTYPE_FLOAT32), []int{3})
	if _, err := c.AppendTurn(ctx, makeTurn(id, 1, spec(pb.DType_DTYPE_FLOAT32), 2, 1)); err != nil { // Looks up turn 0.
		t.Fatal(err)
	}
	if _, err := c.GetCache(ctx, &pb.GetCacheRequest{SessionId: id, Method: pb.Method_FULL}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ListSessions(ctx, &pb.ListSessionsRequest{Prefix: id}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DeleteSession(ctx, id); err != nil {
		t.Fatal(err)
	}
	auth := "authorization=Bearer t0k3n"
	session := "x-nexuskv-session=" + id
	want := []string{
		"AppendSegment " + auth + " " + session,
		"GetSession " + auth + " " + session,
		"AppendSegment " + auth + " " + session,
		"GetCache " + auth + " " + session,
		"ListSessions " + auth,
		"DeleteSession " + auth + " " + session,
	}
	if strings.Join(r.calls, "\n") != strings.Join(want, "\n") {
		t.Fatalf("calls:\n%s\nwant:\n%s", strings.Join(r.calls, "\n"), strings.Join(want, "\n"))
	}
}
