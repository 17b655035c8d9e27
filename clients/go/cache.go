package nexuskv

import (
	"context"
	"fmt"
	"io"

	"google.golang.org/grpc/codes"

	pb "github.com/nexuskv/nexuskv/clients/go/nexuskvpb"
)

// KeepRatio, MaxTokens and MaxBytes build the budget of a GetCacheRequest (exactly one is set):
//
//	req := &nexuskvpb.GetCacheRequest{SessionId: "chat-42", Budget: nexuskv.KeepRatio(0.2)}
//
// KeepRatio is kept entries / original tokens of the compressed turns, in (0, 1] ("80%
// compression" is 0.2); turns kept raw by keep_recent_turns come on top.
func KeepRatio(ratio float64) *pb.Budget {
	return &pb.Budget{Limit: &pb.Budget_KeepRatio{KeepRatio: ratio}}
}

// MaxTokens is at most n entries per kv head in every layer, raw turns included.
func MaxTokens(n uint64) *pb.Budget {
	return &pb.Budget{Limit: &pb.Budget_MaxTokens{MaxTokens: n}}
}

// MaxBytes is at most n bytes of keys + values (+ bias) in the whole answer, in the output dtype.
func MaxBytes(n uint64) *pb.Budget {
	return &pb.Budget{Limit: &pb.Budget_MaxBytes{MaxBytes: n}}
}

// CacheLayer is one layer of a GetCache answer, checked against its header. H is
// Model.NumKvHeads, D Model.HeadDim and N Entries; keys and values are in the header's Model.Dtype
// (the output dtype).
type CacheLayer struct {
	Layer   uint32
	Entries int    // N, entries per kv head in this layer.
	Keys    []byte // [H, N, D], little-endian; shares the received message's memory.
	Values  []byte // [H, N, D], likewise.
	// Bias is [H, N] float32 log-weights (attention is softmax(q.k/sqrt(D) + b)); nil unless the
	// header's HasBias. -Inf marks a padding entry (position -1, zero keys and values).
	Bias      []float32
	Positions []int64 // [H, N] absolute token positions, ascending within each head.
}

// Cache is a whole GetCache answer: Layers[l] is layer l, for every layer of Header.Model.
type Cache struct {
	Header *pb.CacheHeader
	Layers []CacheLayer
}

// GetCacheFunc fetches a session's cache fitted to req.Budget and hands it over one layer at a
// time, in layer order, as the server streams it: fn gets the answer's header (the same one every
// call) and one checked layer, whose bytes it may keep; the client keeps nothing, so an answer is
// never held twice. An error from fn cancels the stream and is returned as it is. On success it
// returns the header.
//
// Server errors (see Error): NotFound for a session that does not exist; InvalidArgument for a
// budget or turn range out of range; FailedPrecondition for methods that need raw KV the server
// dropped; Unimplemented for a method this server lacks. Client-side: Internal when the stream
// breaks the protocol (no header, layers out of order); DataLoss when a layer's byte lengths do
// not match the header.
func (c *Client) GetCacheFunc(ctx context.Context, req *pb.GetCacheRequest,
	fn func(header *pb.CacheHeader, layer *CacheLayer) error) (*pb.CacheHeader, error) {
	const rpc = "GetCache"
	if req == nil || fn == nil {
		return nil, newError(rpc, "", codes.InvalidArgument, "GetCacheFunc needs a request and a callback")
	}
	id := req.GetSessionId()
	ctx, cancel, err := c.begin(ctx, rpc, id)
	if err != nil {
		return nil, err
	}
	defer cancel() // Also ends the stream early when fn fails.
	stream, err := c.stub.GetCache(ctx, req)
	if err != nil {
		return nil, wrapError(rpc, id, err)
	}
	var header *pb.CacheHeader
	next := uint32(0)
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, wrapError(rpc, id, err)
		}
		switch p := msg.Payload.(type) {
		case *pb.GetCacheResponse_Header:
			if header != nil {
				return nil, newError(rpc, id, codes.Internal, "malformed answer: a second header")
			}
			header = p.Header
			if m := header.GetModel(); m == nil || ItemSize(m.Dtype) == 0 ||
				uint32(len(header.EntriesPerLayer)) != m.NumLayers {
				return nil, newError(rpc, id, codes.Internal,
					"malformed answer: header with %d entries_per_layer for model %v",
					len(header.EntriesPerLayer), m)
			}
		case *pb.GetCacheResponse_Layer:
			if header == nil {
				return nil, newError(rpc, id, codes.Internal, "malformed answer: a layer before the header")
			}
			if p.Layer.Layer != next || next >= header.Model.NumLayers {
				return nil, newError(rpc, id, codes.Internal,
					"malformed answer: layer %d where layer %d was expected", p.Layer.Layer, next)
			}
			layer, err := checkLayer(header, p.Layer)
			if err != nil {
				return nil, newError(rpc, id, codes.DataLoss, "layer %d: %v", next, err)
			}
			if err := fn(header, layer); err != nil {
				return nil, err
			}
			next++
		default:
			return nil, newError(rpc, id, codes.Internal, "malformed answer: an empty message")
		}
	}
	if header == nil {
		return nil, newError(rpc, id, codes.Internal, "malformed answer: no header")
	}
	if next != header.Model.NumLayers {
		return nil, newError(rpc, id, codes.Internal,
			"malformed answer: %d layers of %d", next, header.Model.NumLayers)
	}
	return header, nil
}

// GetCache is GetCacheFunc collecting every layer: the whole answer in memory at once.
func (c *Client) GetCache(ctx context.Context, req *pb.GetCacheRequest) (*Cache, error) {
	cache := &Cache{}
	header, err := c.GetCacheFunc(ctx, req, func(header *pb.CacheHeader, layer *CacheLayer) error {
		if cache.Layers == nil {
			cache.Layers = make([]CacheLayer, 0, header.Model.NumLayers)
		}
		cache.Layers = append(cache.Layers, *layer)
		return nil
	})
	if err != nil {
		return nil, err
	}
	cache.Header = header
	return cache, nil
}

// checkLayer checks a layer's byte lengths against the header and decodes its bias and positions.
func checkLayer(h *pb.CacheHeader, l *pb.CacheLayer) (*CacheLayer, error) {
	m := h.Model
	n := int(h.EntriesPerLayer[l.Layer])
	cells := int(m.NumKvHeads) * n
	kv := cells * int(m.HeadDim) * ItemSize(m.Dtype)
	bias := 0
	if h.HasBias {
		bias = 4 * cells
	}
	for _, c := range []struct {
		what       string
		have, want int
	}{
		{"keys", len(l.Keys), kv},
		{"values", len(l.Values), kv},
		{"bias", len(l.Bias), bias},
		{"positions", len(l.Positions), 8 * cells},
	} {
		if c.have != c.want {
			return nil, fmt.Errorf("%d bytes of %s, want %d for %d entries of %d kv heads",
				c.have, c.what, c.want, n, m.NumKvHeads)
		}
	}
	out := &CacheLayer{
		Layer:     l.Layer,
		Entries:   n,
		Keys:      l.Keys,
		Values:    l.Values,
		Positions: int64sLE(l.Positions),
	}
	if h.HasBias {
		out.Bias = float32sLE(l.Bias)
	}
	return out, nil
}
