package nexuskv

import (
	"context"
	"io"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/nexuskv/nexuskv/clients/go/nexuskvpb"
)

// LayerBytes is one layer of a turn: little-endian row-major bytes in the session dtype
// (Model.Dtype), as the engine caches them. The client only reads them, and keeps no reference
// after AppendTurn returns.
type LayerBytes struct {
	Keys         []byte // [H, T, D], keys after rotary embedding.
	Values       []byte // [H, T, D]
	ProbeQueries []byte // [Hq, P, D] queries of P of the turn's tokens; empty: none.
	// TokenScores, [H, T] float32, finite and >= 0: how much later text reads each token (see
	// LayerChunk.token_scores in the proto). In every layer or in none.
	TokenScores []float32
}

// Turn is one finished conversation turn (a segment) ready to append. T (tokens) and P (probe
// queries) are derived from the byte lengths and must be the same in every layer.
type Turn struct {
	SessionID string
	Turn      uint32 // 0 for the session's first turn, then 1, 2, ... with no gaps.
	// FirstPosition is the absolute position of the turn's first token. For turn 0 it is usually
	// 0; for a later turn 0 means "right after turn-1": AppendTurn asks the server (GetSession,
	// one more call) and fails with FailedPrecondition when turn-1 is not stored.
	FirstPosition uint64
	Role          pb.Role
	// Model is the session's model spec: NumLayers == len(Layers); Dtype is the dtype of every
	// byte slice above. Fixed by turn 0; every later turn must carry an identical spec.
	Model  *pb.ModelSpec
	Layers []LayerBytes // Layers[l] is layer l.
	// ProbeOffsets are the offsets in the turn of the probes' tokens (P, strictly ascending);
	// empty: the turn's last P tokens.
	ProbeOffsets []uint32
	// NexusOffsets are the offsets of tokens that already are Nexus tokens (a SONIC-fine-tuned
	// model wrote them); empty for ordinary turns.
	NexusOffsets []uint32
	// TTLSeconds is the session's time to live from this append; 0 keeps its current expiry.
	TTLSeconds uint32
}

// AppendTurn streams one turn (a SegmentHeader, then layers 0..L-1) and returns the server's
// acknowledgement, sent once the turn is durable. Retrying an identical turn is safe
// (AlreadyStored is then true), so a caller may retry Unavailable.
//
// Errors (see Error): InvalidArgument before sending when the layer count or a byte length does
// not fit the spec, or from the server for bad ids, shapes, dtypes and non-finite values;
// ResourceExhausted before sending when one layer exceeds Options.MaxMessageBytes, or from the
// server for its size limits and quotas; AlreadyExists when a different payload is stored for
// this turn; FailedPrecondition for a turn out of order, a position gap or a model spec that
// differs from the session's. A refused turn stores nothing.
func (c *Client) AppendTurn(ctx context.Context, turn *Turn) (*pb.AppendSegmentResponse, error) {
	const rpc = "AppendSegment"
	header, err := segmentHeader(turn, c.options.MaxMessageBytes)
	if err != nil {
		return nil, err
	}
	if turn.Turn > 0 && turn.FirstPosition == 0 {
		if header.FirstPosition, err = c.endOfTurn(ctx, turn.SessionID, turn.Turn-1); err != nil {
			return nil, err
		}
	}

	ctx, cancel, err := c.begin(ctx, rpc, turn.SessionID)
	if err != nil {
		return nil, err
	}
	defer cancel()
	stream, err := c.stub.AppendSegment(ctx)
	if err != nil {
		return nil, wrapError(rpc, turn.SessionID, err)
	}
	send := func(m *pb.AppendSegmentRequest) error {
		err := stream.Send(m)
		if err == io.EOF { // The server ended the stream early: its status says why.
			_, err = stream.CloseAndRecv()
		}
		return err
	}
	if err := send(&pb.AppendSegmentRequest{Payload: &pb.AppendSegmentRequest_Header{Header: header}}); err != nil {
		return nil, wrapError(rpc, turn.SessionID, err)
	}
	for l, layer := range turn.Layers {
		chunk := &pb.LayerChunk{
			Layer:        uint32(l),
			Keys:         layer.Keys,
			Values:       layer.Values,
			ProbeQueries: layer.ProbeQueries,
		}
		if len(layer.TokenScores) > 0 {
			scores, _ := EncodeFloat32s(pb.DType_DTYPE_FLOAT32, layer.TokenScores)
			chunk.TokenScores = scores
		}
		if err := send(&pb.AppendSegmentRequest{Payload: &pb.AppendSegmentRequest_Layer{Layer: chunk}}); err != nil {
			return nil, wrapError(rpc, turn.SessionID, err)
		}
	}
	ack, err := stream.CloseAndRecv()
	if err != nil {
		return nil, wrapError(rpc, turn.SessionID, err)
	}
	return ack, nil
}

// endOfTurn is the position after a stored turn: where the next turn starts. FailedPrecondition
// when the turn is not stored (appending after it would leave a gap).
func (c *Client) endOfTurn(ctx context.Context, sessionID string, turn uint32) (uint64, error) {
	gap := func(have uint32) error {
		return newError("AppendSegment", sessionID, codes.FailedPrecondition,
			"session %s has %d turns; turn %d would leave a gap", sessionID, have, turn+1)
	}
	info, err := c.GetSession(ctx, sessionID)
	if status.Code(err) == codes.NotFound {
		return 0, gap(0)
	} else if err != nil {
		return 0, err
	}
	for _, t := range info.Turns {
		if t.Turn == turn {
			return t.FirstPosition + uint64(t.NumTokens), nil
		}
	}
	return 0, gap(info.NumTurns)
}

// segmentHeader checks a turn against its spec and builds its header: the checks the server
// would make on sizes, made before any byte is sent.
func segmentHeader(turn *Turn, maxMessageBytes int) (*pb.SegmentHeader, error) {
	const rpc = "AppendSegment"
	bad := func(format string, args ...interface{}) error {
		return newError(rpc, turn.SessionID, codes.InvalidArgument, format, args...)
	}
	m := turn.Model
	if m == nil {
		return nil, bad("Model is nil")
	}
	size := ItemSize(m.Dtype)
	if size == 0 {
		return nil, bad("Model.Dtype %v: use DTYPE_FLOAT32, DTYPE_FLOAT16 or DTYPE_BFLOAT16", m.Dtype)
	}
	if m.NumKvHeads == 0 || m.HeadDim == 0 || m.NumQueryHeads == 0 {
		return nil, bad("Model needs NumKvHeads, NumQueryHeads and HeadDim > 0 (got %d, %d, %d)",
			m.NumKvHeads, m.NumQueryHeads, m.HeadDim)
	}
	if len(turn.Layers) == 0 || uint32(len(turn.Layers)) != m.NumLayers {
		return nil, bad("%d layers for Model.NumLayers = %d", len(turn.Layers), m.NumLayers)
	}
	row := uint64(m.NumKvHeads) * uint64(m.HeadDim) * uint64(size) // Bytes of one token, all heads.
	queryRow := uint64(m.NumQueryHeads) * uint64(m.HeadDim) * uint64(size)
	first := turn.Layers[0]
	if uint64(len(first.Keys))%row != 0 || len(first.Keys) == 0 {
		return nil, bad("layer 0: %d key bytes are not [H=%d, T, D=%d] of %v for any T >= 1",
			len(first.Keys), m.NumKvHeads, m.HeadDim, m.Dtype)
	}
	tokens := uint64(len(first.Keys)) / row
	if uint64(len(first.ProbeQueries))%queryRow != 0 {
		return nil, bad("layer 0: %d probe query bytes are not [Hq=%d, P, D=%d] of %v for any P",
			len(first.ProbeQueries), m.NumQueryHeads, m.HeadDim, m.Dtype)
	}
	probes := uint64(len(first.ProbeQueries)) / queryRow
	hasScores := len(first.TokenScores) > 0
	for l, layer := range turn.Layers {
		if uint64(len(layer.Keys)) != tokens*row || uint64(len(layer.Values)) != tokens*row {
			return nil, bad("layer %d: %d key and %d value bytes, want %d each ([H=%d, T=%d, D=%d] of %v, T from layer 0)",
				l, len(layer.Keys), len(layer.Values), tokens*row, m.NumKvHeads, tokens, m.HeadDim, m.Dtype)
		}
		if uint64(len(layer.ProbeQueries)) != probes*queryRow {
			return nil, bad("layer %d: %d probe query bytes, want %d ([Hq=%d, P=%d, D=%d], P from layer 0)",
				l, len(layer.ProbeQueries), probes*queryRow, m.NumQueryHeads, probes, m.HeadDim)
		}
		if (len(layer.TokenScores) > 0) != hasScores ||
			hasScores && uint64(len(layer.TokenScores)) != tokens*uint64(m.NumKvHeads) {
			return nil, bad("layer %d: %d token scores; every layer needs [H=%d, T=%d] or none",
				l, len(layer.TokenScores), m.NumKvHeads, tokens)
		}
		// The chunk's own bytes plus a little for its framing must fit one message.
		chunkBytes := 2*tokens*row + probes*queryRow + uint64(4*len(layer.TokenScores)) + 64
		if chunkBytes > uint64(maxMessageBytes) {
			return nil, newError(rpc, turn.SessionID, codes.ResourceExhausted,
				"layer %d needs a %d-byte message, over Options.MaxMessageBytes = %d: send shorter turns or raise the limit (and the server's --max_message_bytes)",
				l, chunkBytes, maxMessageBytes)
		}
	}
	if len(turn.ProbeOffsets) > 0 && uint64(len(turn.ProbeOffsets)) != probes {
		return nil, bad("%d ProbeOffsets for %d probe queries", len(turn.ProbeOffsets), probes)
	}
	if tokens > 1<<32-1 || probes > 1<<32-1 {
		return nil, bad("%d tokens or %d probes do not fit the header", tokens, probes)
	}
	return &pb.SegmentHeader{
		SessionId:       turn.SessionID,
		Turn:            turn.Turn,
		NumTokens:       uint32(tokens),
		FirstPosition:   turn.FirstPosition,
		Role:            turn.Role,
		Model:           proto.Clone(m).(*pb.ModelSpec),
		NumProbeQueries: uint32(probes),
		TtlSeconds:      turn.TTLSeconds,
		NexusOffsets:    turn.NexusOffsets,
		ProbeOffsets:    turn.ProbeOffsets,
		HasTokenScores:  hasScores,
	}, nil
}
