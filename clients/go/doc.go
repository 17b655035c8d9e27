// Package nexuskv is the Go client of the nexuskv KV-cache memory tier (gRPC service
// nexuskv.v1.KvMemory, proto/nexuskv/v1/kv_memory.proto; the generated types are in nexuskvpb).
//
// An inference worker appends each finished turn's key/value tensors and, when a conversation
// resumes on any pod, fetches a cache fitted to a budget:
//
//	client, err := nexuskv.New("kv-tier.internal:50051", nexuskv.Options{})
//	if err != nil { ... }
//	defer client.Close()
//
//	spec := &nexuskvpb.ModelSpec{ModelId: "smollm2-135m", NumLayers: 30, NumKvHeads: 3,
//		NumQueryHeads: 9, HeadDim: 64, Dtype: nexuskvpb.DType_DTYPE_BFLOAT16}
//	ack, err := client.AppendTurn(ctx, &nexuskv.Turn{
//		SessionID: "chat-42", Turn: 0, Role: nexuskvpb.Role_ROLE_USER, Model: spec,
//		Layers: layers, // []nexuskv.LayerBytes: keys/values [H, T, D] in spec.Dtype per layer
//	})
//
//	header, err := client.GetCacheFunc(ctx, &nexuskvpb.GetCacheRequest{
//		SessionId: "chat-42", Method: nexuskvpb.Method_SONIC, Budget: nexuskv.KeepRatio(0.2),
//	}, func(h *nexuskvpb.CacheHeader, layer *nexuskv.CacheLayer) error {
//		return engine.Load(layer.Layer, layer.Keys, layer.Values, layer.Bias, layer.Positions)
//	})
//	// The next token goes at header.NextPosition.
//
// Deadlines: every call takes a context; one without a deadline gets Options.Timeout (30 s).
//
// Routing: every call about a session carries the metadata "x-nexuskv-session: <session_id>"
// (SessionHeader), which a gateway in front of several shards hashes on; ListSessions has none.
//
// Errors: every method returns *Error, which keeps the gRPC code and the server's message
// (status.FromError, status.Code work on it). Besides the server's codes (docs/api.md), the client
// itself answers InvalidArgument for a turn whose byte lengths do not fit its spec (before sending),
// ResourceExhausted for a layer over Options.MaxMessageBytes, Internal for an answer stream that
// breaks the protocol and DataLoss for answer bytes that do not match their header.
//
// Tensors stay raw little-endian bytes in the session dtype; Float16FromFloat32,
// BFloat16ToFloat32, EncodeFloat32s, DecodeFloat32s and friends convert to and from float32.
//
// A Client is safe for concurrent use by many goroutines; all calls share one gRPC channel.
package nexuskv
