// Package synthetic makes deterministic key/value tensors for the example and the tests: a
// stand-in for what an engine caches, reproducible from (seed, turn) in any process, so one
// process can append a session and another can check every byte it gets back.
package synthetic

import (
	"math/rand"

	nexuskv "github.com/nexuskv/nexuskv/clients/go"
	pb "github.com/nexuskv/nexuskv/clients/go/nexuskvpb"
)

// SmolLM2 is the shape of SmolLM2-135M's KV cache: 30 layers, 3 kv heads, 9 query heads, head
// dimension 64, bfloat16.
func SmolLM2() *pb.ModelSpec {
	return &pb.ModelSpec{ModelId: "smollm2-135m-synthetic", NumLayers: 30, NumKvHeads: 3,
		NumQueryHeads: 9, HeadDim: 64, Dtype: pb.DType_DTYPE_BFLOAT16}
}

// Layers are T tokens and P probe queries (P <= T) of every layer of spec, as bytes in spec.Dtype:
// standard normal values, so every element is finite and exact in any dtype once encoded. The
// same (spec, seed, turn, tokens, probes) always gives the same bytes.
func Layers(spec *pb.ModelSpec, seed int64, turn uint32, tokens, probes int) []nexuskv.LayerBytes {
	rng := rand.New(rand.NewSource(seed*1_000_003 + int64(turn)))
	tensor := func(rows, cols int) []byte {
		v := make([]float32, rows*cols*int(spec.HeadDim))
		for i := range v {
			v[i] = float32(rng.NormFloat64())
		}
		b, err := nexuskv.EncodeFloat32s(spec.Dtype, v)
		if err != nil {
			panic(err) // A spec without a dtype is a bug in the caller.
		}
		return b
	}
	layers := make([]nexuskv.LayerBytes, spec.NumLayers)
	for l := range layers {
		layers[l] = nexuskv.LayerBytes{
			Keys:         tensor(int(spec.NumKvHeads), tokens),
			Values:       tensor(int(spec.NumKvHeads), tokens),
			ProbeQueries: tensor(int(spec.NumQueryHeads), probes),
		}
	}
	return layers
}

// SpreadOffsets are n offsets spread evenly over a turn of T tokens, first and last included (n
// <= T): where probe queries fit SONIC best (docs/experiments/sonic-allocation.md, "Probe placement").
func SpreadOffsets(tokens, n int) []uint32 {
	if n == 0 {
		return nil
	}
	if n == 1 {
		return []uint32{uint32(tokens - 1)}
	}
	out := make([]uint32, n)
	for i := range out {
		out[i] = uint32(i * (tokens - 1) / (n - 1))
	}
	return out
}
