// nexuskv::client: the C++ client of the nexuskv KV-cache memory tier (service
// nexuskv.v1.KvMemory).
//
// An inference worker appends each finished turn's key/value tensors and, when a conversation
// resumes, fetches a cache fitted to a budget:
//
//   ClientOptions options;
//   options.target = "kv-tier.internal:50051";
//   NEXUSKV_ASSIGN_OR_RETURN(std::unique_ptr<Client> client, Client::Connect(options));
//
//   TurnTensors turn;
//   turn.session_id = "chat-42";
//   turn.turn = 0;
//   turn.role = v1::ROLE_USER;
//   turn.model = spec;                       // L, H, Hq, D, dtype
//   turn.layers = {{k0, v0, q0}, {k1, v1, q1}, ...};  // bytes in spec.dtype(), [H,T,D] / [Hq,P,D]
//   NEXUSKV_ASSIGN_OR_RETURN(v1::AppendSegmentResponse ack, client->AppendTurn(turn));
//
//   v1::GetCacheRequest request;
//   request.set_session_id("chat-42");
//   request.mutable_budget()->set_keep_ratio(0.2);
//   NEXUSKV_ASSIGN_OR_RETURN(Cache cache, client->GetCache(request));
//
// Errors: every method returns the server's gRPC status converted one to one (same code, same
// message) as an absl::Status, plus these client-side codes:
//   InvalidArgument   the request was refused before sending (shapes, sizes, empty ids).
//   ResourceExhausted one message would exceed ClientOptions::max_message_bytes.
//   Internal          the server broke the stream protocol (missing header, layers out of order,
//                     a page token that does not advance).
//   DataLoss          the server sent tensors whose byte lengths do not match the header.
//
// Security: against a server with TLS and bearer tokens, set both (see ClientOptions):
//
//   NEXUSKV_ASSIGN_OR_RETURN(options.credentials,
//                            TlsCredentialsFromFiles({.root_ca_file = "/etc/nexuskv/ca.pem"}));
//   options.bearer_token = token;
//
// Thread safety: a Client is safe for concurrent use from many threads without external
// synchronization. All calls share one gRPC channel; each call carries its own deadline.
#ifndef NEXUSKV_CLIENTS_CPP_CLIENT_H_
#define NEXUSKV_CLIENTS_CPP_CLIENT_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "nexuskv/v1/kv_memory.grpc.pb.h"
#include "proto/wire_dtype.h"
#include "tensor/dtype.h"

namespace nexuskv::client {

namespace v1 = ::nexuskv::v1;

struct ClientOptions {
  // gRPC target, for instance "localhost:50051" or "dns:///kv-tier:50051". Must not be empty.
  std::string target = "localhost:50051";
  // Deadline of every call, measured from its start (a whole stream counts as one call). > 0.
  absl::Duration timeout = absl::Seconds(30);
  // Largest message sent or received. One LayerChunk / CacheLayer must fit. > 0.
  int max_message_bytes = 64 << 20;
  // When true, calls wait (up to their deadline) for the channel to become ready instead of
  // failing fast with UNAVAILABLE while the server is unreachable.
  bool wait_for_ready = false;
  // Transport credentials; null means insecure (plaintext), as for a sidecar or a local tier.
  // TlsCredentialsFromFiles builds TLS and mutual-TLS credentials from PEM files.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  // Bearer token for servers started with --auth_tokens_file: every call carries the metadata
  // "authorization: Bearer <token>", and the server answers UNAUTHENTICATED for a missing or
  // unknown token. Empty: no authorization metadata. It is sent per call, so it works over
  // plaintext channels too (a loopback sidecar); anywhere else, pair it with TLS credentials, or
  // the token crosses the network in the clear. Printable ASCII without spaces (Connect refuses
  // anything else with InvalidArgument).
  std::string bearer_token;
  // Sharding (docs/scaling.md): every per-session call (AppendTurn, GetCache, GetSession,
  // DeleteSession) carries the metadata "x-nexuskv-session: <prefix><session_id>", the key a
  // gateway hashes to pick the session's shard (nginx `hash $http_x_nexuskv_session consistent`).
  // The server ignores the header. Empty prefix (the default): the header is the session id
  // alone. A platform whose tenants reuse session ids can set a per-tenant prefix such as
  // "tenant-a/" so that their sessions spread over the shards independently; every client of a
  // session must then use the same prefix, or its calls reach another shard (NOT_FOUND).
  // Printable ASCII (Connect refuses anything else with InvalidArgument). A session id with
  // characters a header cannot carry is sent without the header (the server refuses such ids).
  std::string session_header_prefix;
};

// The metadata key of ClientOptions::session_header_prefix: lower case, as gRPC sends it.
inline constexpr char kSessionHeader[] = "x-nexuskv-session";

// PEM files for a TLS channel, for TlsCredentialsFromFiles.
struct TlsFiles {
  // CA bundle the server's certificate must chain to. Empty: gRPC's default roots
  // ($GRPC_DEFAULT_SSL_ROOTS_FILE_PATH, else the roots gRPC ships).
  std::string root_ca_file;
  // Client certificate chain and its private key, presented to servers that require mutual TLS
  // (--tls_client_ca_file). Both or neither.
  std::string cert_chain_file;
  std::string private_key_file;
};

// TLS channel credentials for ClientOptions::credentials; with a client certificate and key, mutual
// TLS. The files are read once, here. The server's certificate must name the host of
// ClientOptions::target (a subjectAltName such as IP:127.0.0.1 or DNS:kv-tier.internal).
// InvalidArgument when only one of cert_chain_file and private_key_file is set or a file holds no
// PEM block; NotFound when a file cannot be read. A handshake the server refuses (or whose server
// certificate does not verify) is not detected here: calls then fail with UNAVAILABLE.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> TlsCredentialsFromFiles(
    const TlsFiles& files);

// One layer of a turn in the session dtype, little-endian, row-major. Views: the caller keeps the
// bytes alive for the duration of AppendTurn. std::string and byte spans convert through
// AsBytes().
struct LayerBytes {
  std::string_view keys;           // [H, T, D]
  std::string_view values;         // [H, T, D]
  std::string_view probe_queries;  // [Hq, P, D]; empty when the turn has no probes.
  // [H, T] float32 scores (SegmentHeader.has_token_scores), in every layer or in none.
  std::span<const float> token_scores;
};

// A turn ready to append. T (num_tokens) and P (num_probe_queries) are derived from the byte
// lengths and must be the same in every layer.
struct TurnTensors {
  std::string session_id;
  uint32_t turn = 0;
  uint64_t first_position = 0;
  v1::Role role = v1::ROLE_UNSPECIFIED;
  v1::ModelSpec model;             // dtype must be set; layers.size() == model.num_layers().
  std::vector<LayerBytes> layers;  // layers[l] is layer l.
  // The offsets in the turn of the probes' tokens (P, strictly ascending); empty: the last P.
  std::vector<uint32_t> probe_offsets;
};

// The same turn as float32 values; AppendTurn encodes each layer to model.dtype() while sending.
struct FloatLayer {
  std::span<const float> keys;           // [H, T, D]
  std::span<const float> values;         // [H, T, D]
  std::span<const float> probe_queries;  // [Hq, P, D]; empty when the turn has no probes.
  std::span<const float> token_scores;   // As in LayerBytes.
};
struct FloatTurnTensors {
  std::string session_id;
  uint32_t turn = 0;
  uint64_t first_position = 0;
  v1::Role role = v1::ROLE_UNSPECIFIED;
  v1::ModelSpec model;
  std::vector<FloatLayer> layers;
  std::vector<uint32_t> probe_offsets;  // As in TurnTensors.
};

// A GetCache answer: the header, then layers[l] for every layer l in 0..L-1 (layers[l].layer() ==
// l). Byte lengths were checked against the header: keys/values [H, N_l, D] in header.model()
// dtype, bias [H, N_l] float32 when header.has_bias() (else empty), positions [H, N_l] int64.
struct Cache {
  v1::CacheHeader header;
  std::vector<v1::CacheLayer> layers;
};

class Client {
 public:
  // Creates the channel. Channels connect lazily, so an unreachable server shows up as
  // UNAVAILABLE (or DEADLINE_EXCEEDED with wait_for_ready) on the first call, not here.
  // InvalidArgument for an empty target, a non-positive timeout or message size, or a bearer
  // token or session header prefix with characters other than printable ASCII.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const ClientOptions& options);

  // For tests and for callers that manage channels themselves. `channel` must not be null; of
  // `options`, only timeout, wait_for_ready, max_message_bytes (checked before sending),
  // bearer_token and session_header_prefix apply, taken as given (Connect is what validates them).
  Client(std::shared_ptr<grpc::Channel> channel, const ClientOptions& options);

  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Streams one turn (header, then layers 0..L-1) and returns the server's acknowledgement, sent
  // once the turn is durable. Retrying an identical turn is safe (already_stored is then true).
  // InvalidArgument before sending when the layer count or a byte length does not fit the spec.
  absl::StatusOr<v1::AppendSegmentResponse> AppendTurn(const TurnTensors& turn);
  absl::StatusOr<v1::AppendSegmentResponse> AppendTurn(const FloatTurnTensors& turn);

  // Fetches the whole answer into memory and checks its shape (see Cache).
  absl::StatusOr<Cache> GetCache(const v1::GetCacheRequest& request);

  // Session metadata with per-turn info. NotFound when the session does not exist.
  absl::StatusOr<v1::SessionInfo> GetSession(std::string_view session_id);

  // One page of sessions (SessionInfo.turns left empty by the server).
  absl::StatusOr<v1::ListSessionsResponse> ListSessions(const v1::ListSessionsRequest& request);

  // Every session whose id starts with `prefix`, following page tokens; each page is its own
  // call with its own deadline and asks for `page_size` sessions (0: the server's default).
  // Internal when the server repeats a page token.
  absl::StatusOr<std::vector<v1::SessionInfo>> ListAllSessions(std::string_view prefix = "",
                                                               uint32_t page_size = 0);

  // Deletes every turn and fit of a session. NotFound when it does not exist.
  absl::StatusOr<v1::DeleteSessionResponse> DeleteSession(std::string_view session_id);

  const ClientOptions& options() const { return options_; }

 private:
  // Produces the chunk of one layer, called for layers 0..L-1 in order while streaming.
  using LayerSource = std::function<absl::StatusOr<v1::LayerChunk>(uint32_t layer)>;
  absl::StatusOr<v1::AppendSegmentResponse> Append(const v1::SegmentHeader& header,
                                                   const LayerSource& source);
  // Deadline, wait_for_ready, bearer token and, for a non-empty session_id, the session header.
  void PrepareContext(grpc::ClientContext& context, std::string_view session_id = {}) const;

  const ClientOptions options_;
  const std::shared_ptr<grpc::Channel> channel_;
  const std::unique_ptr<v1::KvMemory::Stub> stub_;
};

// A byte view over any contiguous buffer of bytes (std::string, std::vector<uint8_t>,
// std::span<const std::byte>...), for LayerBytes.
template <typename T>
std::string_view AsBytes(std::span<const T> bytes) {
  static_assert(sizeof(T) == 1, "AsBytes takes spans of single bytes");
  return std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

// grpc::Status -> absl::Status, same code and message (gRPC's codes are absl's codes).
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace nexuskv::client

#endif  // NEXUSKV_CLIENTS_CPP_CLIENT_H_
