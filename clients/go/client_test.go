package nexuskv_test

// The client against a real nexuskv-server process (server_test.go).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	nexuskv "github.com/nexuskv/nexuskv/clients/go"
	"github.com/nexuskv/nexuskv/clients/go/internal/synthetic"
	pb "github.com/nexuskv/nexuskv/clients/go/nexuskvpb"
)

const (
	numLayers  = 3
	numKvHeads = 2
	numQHeads  = 4
	headDim    = 8
)

func spec(dtype pb.DType) *pb.ModelSpec {
	return &pb.ModelSpec{ModelId: "go-test", NumLayers: numLayers, NumKvHeads: numKvHeads,
		NumQueryHeads: numQHeads, HeadDim: headDim, Dtype: dtype}
}

var sessionCount int64

// sessionID is a fresh session id per call, named after the test.
func sessionID(t *testing.T) string {
	name := strings.NewReplacer("/", ".", "_", "-", "#", "-").Replace(t.Name())
	if len(name) > 80 {
		name = name[:80]
	}
	return fmt.Sprintf("go-%s-%d", name, atomic.AddInt64(&sessionCount, 1))
}

var roles = []pb.Role{pb.Role_ROLE_SYSTEM, pb.Role_ROLE_USER, pb.Role_ROLE_ASSISTANT}

func makeTurn(id string, turn uint32, m *pb.ModelSpec, tokens int, seed int64) *nexuskv.Turn {
	probes := 4
	if tokens < probes {
		probes = tokens
	}
	return &nexuskv.Turn{
		SessionID: id,
		Turn:      turn,
		Role:      roles[int(turn)%len(roles)],
		Model:     m,
		Layers:    synthetic.Layers(m, seed, turn, tokens, probes),
	}
}

// appendSession appends one turn per length and returns them.
func appendSession(t *testing.T, c *nexuskv.Client, id string, m *pb.ModelSpec, lengths []int) []*nexuskv.Turn {
	t.Helper()
	var turns []*nexuskv.Turn
	position := uint64(0)
	for i, n := range lengths {
		turn := makeTurn(id, uint32(i), m, n, 7)
		turn.FirstPosition = position
		ack, err := c.AppendTurn(context.Background(), turn)
		if err != nil {
			t.Fatalf("append turn %d: %v", i, err)
		}
		position += uint64(n)
		if ack.Turn != uint32(i) || ack.NumTurns != uint32(i+1) || ack.AlreadyStored || ack.NextPosition != position {
			t.Fatalf("append turn %d: ack %v", i, ack)
		}
		turns = append(turns, turn)
	}
	return turns
}

// wantFull is layer l of a FULL answer over turns: per kv head, every turn's tokens in order.
func wantFull(turns []*nexuskv.Turn, l int, keys bool) []byte {
	m := turns[0].Model
	var out []byte
	for h := 0; h < int(m.NumKvHeads); h++ {
		for _, turn := range turns {
			data := turn.Layers[l].Values
			if keys {
				data = turn.Layers[l].Keys
			}
			perHead := len(data) / int(m.NumKvHeads)
			out = append(out, data[h*perHead:(h+1)*perHead]...)
		}
	}
	return out
}

func code(err error) codes.Code { return status.Code(err) }

func TestFullReturnsExactlyTheBytesSent(t *testing.T) {
	s := plainServer(t)
	c := newClient(t, s, nexuskv.Options{})
	for _, dtype := range []pb.DType{pb.DType_DTYPE_FLOAT32, pb.DType_DTYPE_FLOAT16, pb.DType_DTYPE_BFLOAT16} {
		t.Run(dtype.String(), func(t *testing.T) {
			id := sessionID(t)
			turns := appendSession(t, c, id, spec(dtype), []int{5, 7, 3})
			cache, err := c.GetCache(context.Background(), &pb.GetCacheRequest{SessionId: id, Method: pb.Method_FULL})
			if err != nil {
				t.Fatal(err)
			}
			h := cache.Header
			if h.Method != pb.Method_FULL || h.OriginalTokens != 15 || h.NextPosition != 15 ||
				h.Model.Dtype != dtype || h.Model.NumQueryHeads != numQHeads || h.HasBias {
				t.Fatalf("header %v", h)
			}
			if len(h.Turns) != 3 || !h.Turns[0].Raw || !h.Turns[2].Raw {
				t.Fatalf("turn allocation %v", h.Turns)
			}
			if len(cache.Layers) != numLayers {
				t.Fatalf("%d layers", len(cache.Layers))
			}
			for l, layer := range cache.Layers {
				if layer.Entries != 15 || h.EntriesPerLayer[l] != 15 || layer.Bias != nil {
					t.Fatalf("layer %d: %d entries, bias %v", l, layer.Entries, layer.Bias)
				}
				if !bytes.Equal(layer.Keys, wantFull(turns, l, true)) || !bytes.Equal(layer.Values, wantFull(turns, l, false)) {
					t.Fatalf("layer %d: keys or values differ from the bytes appended", l)
				}
				for i, p := range layer.Positions {
					if p != int64(i%15) {
						t.Fatalf("layer %d: positions %v", l, layer.Positions)
					}
				}
			}
			// A float32 answer of a 16-bit session widens every value exactly.
			wide, err := c.GetCache(context.Background(), &pb.GetCacheRequest{SessionId: id,
				Method: pb.Method_FULL, OutputDtype: pb.DType_DTYPE_FLOAT32})
			if err != nil {
				t.Fatal(err)
			}
			got, _ := nexuskv.DecodeFloat32s(pb.DType_DTYPE_FLOAT32, wide.Layers[1].Values)
			want, _ := nexuskv.DecodeFloat32s(dtype, wantFull(turns, 1, false))
			for i := range want {
				if got[i] != want[i] {
					t.Fatalf("float32 answer, value %d: %g, want %g", i, got[i], want[i])
				}
			}
		})
	}
}

// Every method, under each kind of budget, answers within it.
func TestBudgetsOfEveryMethod(t *testing.T) {
	s := plainServer(t)
	c := newClient(t, s, nexuskv.Options{})
	lengths := []int{16, 24, 32, 8}
	const total, compressible, rawTail = 80, 72, 8 // The last turn stays raw (KeepRecentTurns 1).
	id := sessionID(t)
	appendSession(t, c, id, spec(pb.DType_DTYPE_FLOAT16), lengths)
	methods := []pb.Method{pb.Method_FULL, pb.Method_SONIC, pb.Method_H2O, pb.Method_STREAMING_LLM, pb.Method_SNAPKV}
	budgets := []struct {
		name   string
		budget *pb.Budget
		// entries is the most entries per kv head a layer may have; 0: checked by bytes.
		entries int
	}{
		{"keep_ratio 0.5", nexuskv.KeepRatio(0.5), compressible/2 + rawTail},
		{"keep_ratio 0.2", nexuskv.KeepRatio(0.2), int(math.Floor(0.2*compressible+1e-9)) + rawTail},
		{"max_tokens 30", nexuskv.MaxTokens(30), 30},
		{"max_bytes", nexuskv.MaxBytes(20 * numLayers * numKvHeads * (2*headDim*2 + 4)), 0},
	}
	for _, method := range methods {
		for _, b := range budgets {
			t.Run(method.String()+"/"+b.name, func(t *testing.T) {
				req := &pb.GetCacheRequest{SessionId: id, Method: method, Budget: b.budget, KeepRecentTurns: 1}
				cache, err := c.GetCache(context.Background(), req)
				if err != nil {
					t.Fatal(err)
				}
				h := cache.Header
				if h.Method != method || h.NextPosition != total || h.OriginalTokens != total || len(h.Turns) != 4 || !h.Turns[3].Raw {
					t.Fatalf("header %v", h)
				}
				bytesPerEntry := 2 * headDim * 2
				if h.HasBias {
					bytesPerEntry += 4
				}
				answerBytes := 0
				for l, layer := range cache.Layers {
					n := layer.Entries
					answerBytes += numKvHeads * n * bytesPerEntry
					switch {
					case method == pb.Method_FULL:
						if n != total {
							t.Errorf("layer %d: FULL has %d entries, not every token", l, n)
						}
					case b.entries > 0 && (n > b.entries || n <= rawTail):
						t.Errorf("layer %d: %d entries per kv head, budget %d (raw turn: %d)", l, n, b.entries, rawTail)
					}
					checkPositions(t, l, layer, method != pb.Method_SONIC, total-rawTail, total)
				}
				if uint64(answerBytes) != h.CacheBytes {
					t.Errorf("header says %d bytes, layers hold %d", h.CacheBytes, answerBytes)
				}
				if max := b.budget.GetMaxBytes(); max > 0 && method != pb.Method_FULL && uint64(answerBytes) > max {
					t.Errorf("%d bytes over max_bytes %d", answerBytes, max)
				}
			})
		}
	}
}

// checkPositions: within each kv head, real entries (padding is -1) ascend, strictly where
// they are stored tokens (SONIC's Nexus tokens may share a position), and the raw last turn sits
// at its own positions [rawFrom, end).
func checkPositions(t *testing.T, l int, layer nexuskv.CacheLayer, strict bool, rawFrom, end int) {
	t.Helper()
	n := layer.Entries
	for h := 0; h < numKvHeads; h++ {
		row := layer.Positions[h*n : (h+1)*n]
		last := int64(-1)
		for _, p := range row {
			if p == -1 {
				continue
			}
			if p < last || strict && p == last || p >= int64(end) {
				t.Fatalf("layer %d head %d: positions %v", l, h, row)
			}
			last = p
		}
		for i := 0; i < end-rawFrom; i++ {
			if row[n-(end-rawFrom)+i] != int64(rawFrom+i) {
				t.Fatalf("layer %d head %d: the raw turn is not at the end: %v", l, h, row)
			}
		}
	}
}

func TestGetCacheFuncStreamsLayersAndStopsOnError(t *testing.T) {
	s := plainServer(t)
	c := newClient(t, s, nexuskv.Options{})
	id := sessionID(t)
	appendSession(t, c, id, spec(pb.DType_DTYPE_FLOAT32), []int{6})
	var seen []uint32
	header, err := c.GetCacheFunc(context.Background(), &pb.GetCacheRequest{SessionId: id, Method: pb.Method_FULL},
		func(h *pb.CacheHeader, layer *nexuskv.CacheLayer) error {
			if h.NextPosition != 6 {
				t.Errorf("header %v", h)
			}
			seen = append(seen, layer.Layer)
			return nil
		})
	if err != nil || header.NextPosition != 6 || fmt.Sprint(seen) != "[0 1 2]" {
		t.Fatalf("header %v, layers %v, err %v", header, seen, err)
	}
	stop := errors.New("engine full")
	calls := 0
	_, err = c.GetCacheFunc(context.Background(), &pb.GetCacheRequest{SessionId: id, Method: pb.Method_FULL},
		func(*pb.CacheHeader, *nexuskv.CacheLayer) error {
			calls++
			if calls == 2 {
				return stop
			}
			return nil
		})
	if err != stop || calls != 2 {
		t.Fatalf("callback error: got %v after %d calls", err, calls)
	}
}

func TestSessionsListAndDelete(t *testing.T) {
	s := plainServer(t)
	c := newClient(t, s, nexuskv.Options{})
	ctx := context.Background()
	prefix := sessionID(t)
	for i := 0; i < 5; i++ {
		appendSession(t, c, fmt.Sprintf("%s-%d", prefix, i), spec(pb.DType_DTYPE_FLOAT32), []int{4, 4})
	}
	id := prefix + "-0"
	info, err := c.GetSession(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if info.NumTurns != 2 || info.TotalTokens != 8 || info.NextPosition != 8 || info.Model.ModelId != "go-test" ||
		len(info.Turns) != 2 || info.Turns[1].FirstPosition != 4 || info.Turns[1].Role != pb.Role_ROLE_USER {
		t.Fatalf("session %v", info)
	}
	page, err := c.ListSessions(ctx, &pb.ListSessionsRequest{Prefix: prefix + "-", PageSize: 2})
	if err != nil || len(page.Sessions) != 2 || page.NextPageToken == "" || page.Sessions[0].SessionId != id {
		t.Fatalf("first page %v, %v", page, err)
	}
	all, err := c.ListAllSessions(ctx, prefix+"-", 2)
	if err != nil || len(all) != 5 {
		t.Fatalf("ListAllSessions: %d sessions, %v", len(all), err)
	}
	for i, info := range all {
		if info.SessionId != fmt.Sprintf("%s-%d", prefix, i) || info.NumTurns != 2 {
			t.Fatalf("session %d: %v", i, info)
		}
	}
	deleted, err := c.DeleteSession(ctx, id)
	if err != nil || deleted.DeletedTurns != 2 || deleted.FreedBytes == 0 {
		t.Fatalf("delete: %v, %v", deleted, err)
	}
	if _, err := c.GetSession(ctx, id); code(err) != codes.NotFound {
		t.Fatalf("GetSession after delete: %v", err)
	}
	if all, _ := c.ListAllSessions(ctx, prefix+"-", 0); len(all) != 4 {
		t.Fatalf("%d sessions listed after a delete", len(all))
	}
}

func TestLaterTurnFindsItsPositionAndRetriesAreNoops(t *testing.T) {
	s := plainServer(t)
	c := newClient(t, s, nexuskv.Options{})
	ctx := context.Background()
	id := sessionID(t)
	m := spec(pb.DType_DTYPE_BFLOAT16)
	if _, err := c.AppendTurn(ctx, makeTurn(id, 0, m, 5, 1)); err != nil {
		t.Fatal(err)
	}
	// FirstPosition 0 on turn 1: the client asks where turn 0 ends.
	second := makeTurn(id, 1, m, 3, 1)
	ack, err := c.AppendTurn(ctx, second)
	if err != nil || ack.NextPosition != 8 {
		t.Fatalf("turn 1: %v, %v", ack, err)
	}
	again, err := c.AppendTurn(ctx, second)
	if err != nil || !again.AlreadyStored || again.NumTurns != 2 {
		t.Fatalf("retry: %v, %v", again, err)
	}
	// Turn 3 after turn 1 would leave a gap: found by the client looking up turn 2.
	if _, err := c.AppendTurn(ctx, makeTurn(id, 3, m, 3, 1)); code(err) != codes.FailedPrecondition {
		t.Fatalf("gap: %v", err)
	}
}

// Bad input is refused with the code the contract names, the server's message kept, and nothing
// stored.
func TestBadInputIsRefusedWithTheRightCode(t *testing.T) {
	s := plainServer(t)
	c := newClient(t, s, nexuskv.Options{})
	ctx := context.Background()
	id := sessionID(t)
	m := spec(pb.DType_DTYPE_FLOAT32)

	expect := func(what string, err error, want codes.Code, rpc string) {
		t.Helper()
		st, ok := status.FromError(err)
		if !ok || st.Code() != want || st.Message() == "" {
			t.Errorf("%s: got %v (status %v), want %v", what, err, st, want)
			return
		}
		var e *nexuskv.Error
		if !errors.As(err, &e) || e.RPC != rpc || !strings.Contains(err.Error(), st.Message()) {
			t.Errorf("%s: %#v does not name the call %s and carry the message %q", what, err, rpc, st.Message())
		}
	}

	// NOT_FOUND for every per-session call on a session that does not exist.
	_, err := c.GetCache(ctx, &pb.GetCacheRequest{SessionId: id, Method: pb.Method_FULL})
	expect("GetCache of a missing session", err, codes.NotFound, "GetCache")
	_, err = c.GetSession(ctx, id)
	expect("GetSession of a missing session", err, codes.NotFound, "GetSession")
	_, err = c.DeleteSession(ctx, id)
	expect("DeleteSession of a missing session", err, codes.NotFound, "DeleteSession")

	// INVALID_ARGUMENT: a bad shape, checked by the client before sending...
	short := makeTurn(id, 0, m, 4, 2)
	short.Layers[1].Keys = short.Layers[1].Keys[:len(short.Layers[1].Keys)-4]
	_, err = c.AppendTurn(ctx, short)
	expect("keys one element short", err, codes.InvalidArgument, "AppendSegment")
	missing := makeTurn(id, 0, m, 4, 2)
	missing.Layers = missing.Layers[:2]
	_, err = c.AppendTurn(ctx, missing)
	expect("a layer missing", err, codes.InvalidArgument, "AppendSegment")
	// ...and by the server: a GQA shape (Hq not a multiple of H), a NaN, a bad session id.
	gqa := spec(pb.DType_DTYPE_FLOAT32)
	gqa.NumQueryHeads = 3
	_, err = c.AppendTurn(ctx, makeTurn(id, 0, gqa, 4, 2))
	expect("num_query_heads 3 over 2 kv heads", err, codes.InvalidArgument, "AppendSegment")
	nan := makeTurn(id, 0, m, 4, 2)
	values, _ := nexuskv.DecodeFloat32s(m.Dtype, nan.Layers[2].Values)
	values[5] = float32(math.NaN())
	nan.Layers[2].Values, _ = nexuskv.EncodeFloat32s(m.Dtype, values)
	_, err = c.AppendTurn(ctx, nan)
	expect("a NaN value", err, codes.InvalidArgument, "AppendSegment")
	_, err = c.AppendTurn(ctx, makeTurn("bad id!", 0, m, 4, 2))
	expect("a bad session id", err, codes.InvalidArgument, "AppendSegment")
	if _, err := c.GetSession(ctx, id); code(err) != codes.NotFound {
		t.Fatalf("a refused turn was stored: %v", err)
	}

	first := makeTurn(id, 0, m, 4, 2)
	if _, err := c.AppendTurn(ctx, first); err != nil {
		t.Fatal(err)
	}
	// ALREADY_EXISTS: a stored turn sent again with different bytes.
	changed := makeTurn(id, 0, m, 4, 2)
	changed.Layers[0].Keys = append([]byte(nil), changed.Layers[0].Keys...)
	changed.Layers[0].Keys[3] ^= 0x40
	_, err = c.AppendTurn(ctx, changed)
	expect("a stored turn with other bytes", err, codes.AlreadyExists, "AppendSegment")
	// FAILED_PRECONDITION: a gap in turns, a gap in positions, another model spec.
	gap := makeTurn(id, 2, m, 4, 2)
	gap.FirstPosition = 4
	_, err = c.AppendTurn(ctx, gap)
	expect("turn 2 after turn 0", err, codes.FailedPrecondition, "AppendSegment")
	jump := makeTurn(id, 1, m, 4, 2)
	jump.FirstPosition = 9
	_, err = c.AppendTurn(ctx, jump)
	expect("first_position 9 after a turn ending at 4", err, codes.FailedPrecondition, "AppendSegment")
	_, err = c.AppendTurn(ctx, makeTurn(id, 1, spec(pb.DType_DTYPE_FLOAT16), 4, 2))
	expect("a float16 turn in a float32 session", err, codes.FailedPrecondition, "AppendSegment")
	// INVALID_ARGUMENT for budgets and turn ranges out of range.
	_, err = c.GetCache(ctx, &pb.GetCacheRequest{SessionId: id, Method: pb.Method_H2O, Budget: nexuskv.KeepRatio(1.5)})
	expect("keep_ratio 1.5", err, codes.InvalidArgument, "GetCache")
	_, err = c.GetCache(ctx, &pb.GetCacheRequest{SessionId: id, Method: pb.Method_SONIC})
	expect("no budget", err, codes.InvalidArgument, "GetCache")
	last := uint32(5)
	_, err = c.GetCache(ctx, &pb.GetCacheRequest{SessionId: id, Method: pb.Method_FULL, LastTurn: &last})
	expect("last_turn past the session", err, codes.InvalidArgument, "GetCache")

	if info, err := c.GetSession(ctx, id); err != nil || info.NumTurns != 1 {
		t.Fatalf("refused requests changed the session: %v, %v", info, err)
	}
}

func TestDeadlines(t *testing.T) {
	s := plainServer(t)
	c := newClient(t, s, nexuskv.Options{})
	id := sessionID(t)
	appendSession(t, c, id, spec(pb.DType_DTYPE_FLOAT32), []int{4})
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	if _, err := c.GetSession(ctx, id); code(err) != codes.DeadlineExceeded {
		t.Fatalf("expired context: %v", err)
	}
	// Without a context deadline, Options.Timeout bounds the call.
	quick := newClient(t, s, nexuskv.Options{Timeout: time.Nanosecond})
	if _, err := quick.GetCache(context.Background(), &pb.GetCacheRequest{SessionId: id, Method: pb.Method_FULL}); code(err) != codes.DeadlineExceeded {
		t.Fatalf("1 ns Options.Timeout: %v", err)
	}
	// A context deadline wins over Options.Timeout.
	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := quick.GetSession(ctx, id); err != nil {
		t.Fatalf("context deadline of 20 s: %v", err)
	}
}

func TestClientSideLimits(t *testing.T) {
	s := plainServer(t)
	if _, err := nexuskv.New(s.target, nexuskv.Options{BearerToken: "two words"}); code(err) != codes.InvalidArgument {
		t.Fatalf("a token with a space: %v", err)
	}
	if _, err := nexuskv.New("", nexuskv.Options{}); code(err) != codes.InvalidArgument {
		t.Fatalf("an empty target: %v", err)
	}
	small := newClient(t, s, nexuskv.Options{MaxMessageBytes: 1024})
	id := sessionID(t)
	_, err := small.AppendTurn(context.Background(), makeTurn(id, 0, spec(pb.DType_DTYPE_FLOAT32), 64, 1))
	if code(err) != codes.ResourceExhausted {
		t.Fatalf("a layer over MaxMessageBytes: %v", err)
	}
	if _, err := small.GetSession(context.Background(), id); code(err) != codes.NotFound {
		t.Fatalf("the refused turn reached the server: %v", err)
	}
}

// One client, many goroutines: each appends and reads back its own session.
func TestConcurrentUse(t *testing.T) {
	s := plainServer(t)
	c := newClient(t, s, nexuskv.Options{})
	prefix := sessionID(t)
	errs := make(chan error, 8)
	for g := 0; g < 8; g++ {
		go func(g int) {
			id := fmt.Sprintf("%s-%d", prefix, g)
			m := spec(pb.DType_DTYPE_FLOAT16)
			turn := makeTurn(id, 0, m, 5+g, int64(g))
			if _, err := c.AppendTurn(context.Background(), turn); err != nil {
				errs <- err
				return
			}
			cache, err := c.GetCache(context.Background(), &pb.GetCacheRequest{SessionId: id, Method: pb.Method_FULL})
			if err == nil && !bytes.Equal(cache.Layers[2].Keys, wantFull([]*nexuskv.Turn{turn}, 2, true)) {
				err = fmt.Errorf("session %s: keys differ", id)
			}
			errs <- err
		}(g)
	}
	for g := 0; g < 8; g++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

// A bias-free SONIC answer (for engines that cannot add a per-key bias) sends no bias.
func TestBiasFreeAnswer(t *testing.T) {
	s := plainServer(t)
	c := newClient(t, s, nexuskv.Options{})
	id := sessionID(t)
	appendSession(t, c, id, spec(pb.DType_DTYPE_FLOAT32), []int{20, 12})
	for _, mode := range []pb.BiasMode{pb.BiasMode_BIAS_MODE_UNSPECIFIED, pb.BiasMode_BIAS_MODE_NONE} {
		cache, err := c.GetCache(context.Background(), &pb.GetCacheRequest{SessionId: id,
			Method: pb.Method_SONIC, Budget: nexuskv.KeepRatio(0.25), BiasMode: mode})
		if err != nil {
			t.Fatal(err)
		}
		withBias := mode == pb.BiasMode_BIAS_MODE_UNSPECIFIED
		if cache.Header.HasBias != withBias || (cache.Layers[0].Bias != nil) != withBias {
			t.Fatalf("%v: has_bias %v, bias %v", mode, cache.Header.HasBias, cache.Layers[0].Bias)
		}
		if withBias && len(cache.Layers[0].Bias) != numKvHeads*cache.Layers[0].Entries {
			t.Fatalf("%d bias values for %d entries", len(cache.Layers[0].Bias), cache.Layers[0].Entries)
		}
	}
}
