#include "clients/cpp/client.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "proto/wire_dtype.h"

namespace nexuskv::client {
namespace {

// Element counts of one layer, whatever the caller's representation.
struct LayerElements {
  uint64_t keys = 0;
  uint64_t values = 0;
  uint64_t probes = 0;
};

struct TurnShape {
  uint32_t num_tokens = 0;
  uint32_t num_probe_queries = 0;
};

absl::Status CheckSpec(const v1::ModelSpec& model) {
  if (model.num_layers() == 0 || model.num_kv_heads() == 0 || model.num_query_heads() == 0 ||
      model.head_dim() == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model spec needs num_layers, num_kv_heads, num_query_heads and head_dim > 0 "
                     "(got L=",
                     model.num_layers(), " H=", model.num_kv_heads(),
                     " Hq=", model.num_query_heads(), " D=", model.head_dim(), ")"));
  }
  return ToTensorDType(model.dtype()).status();
}

// Derives T and P from the element counts and checks that every layer agrees.
absl::StatusOr<TurnShape> DeriveShape(const v1::ModelSpec& model,
                                      const std::vector<LayerElements>& layers) {
  NEXUSKV_RETURN_IF_ERROR(CheckSpec(model));
  if (layers.size() != model.num_layers()) {
    return absl::InvalidArgumentError(
        absl::StrCat("turn has ", layers.size(),
                     " layers but the model spec says num_layers=", model.num_layers()));
  }
  const uint64_t kv_row = uint64_t{model.num_kv_heads()} * model.head_dim();
  const uint64_t q_row = uint64_t{model.num_query_heads()} * model.head_dim();
  TurnShape shape;
  for (size_t l = 0; l < layers.size(); ++l) {
    const LayerElements& e = layers[l];
    if (e.keys == 0 || e.keys % kv_row != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("layer ", l, ": keys hold ", e.keys,
                       " elements, not a positive multiple of H*D=", kv_row));
    }
    if (e.values != e.keys) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", l, ": values hold ", e.values,
                                                     " elements but keys hold ", e.keys));
    }
    if (e.probes % q_row != 0) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", l, ": probe_queries hold ", e.probes,
                                                     " elements, not a multiple of Hq*D=", q_row));
    }
    const uint64_t t = e.keys / kv_row;
    const uint64_t p = e.probes / q_row;
    if (t > UINT32_MAX || p > UINT32_MAX) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", l, ": too many tokens or probes"));
    }
    if (l == 0) {
      shape = {static_cast<uint32_t>(t), static_cast<uint32_t>(p)};
    } else if (t != shape.num_tokens || p != shape.num_probe_queries) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", l, " has T=", t, " tokens and P=", p,
                                                     " probes but layer 0 has T=", shape.num_tokens,
                                                     " and P=", shape.num_probe_queries));
    }
  }
  return shape;
}

template <typename Turn>
v1::SegmentHeader MakeHeader(const Turn& turn, const TurnShape& shape) {
  v1::SegmentHeader header;
  header.set_session_id(turn.session_id);
  header.set_turn(turn.turn);
  header.set_num_tokens(shape.num_tokens);
  header.set_first_position(turn.first_position);
  header.set_role(turn.role);
  *header.mutable_model() = turn.model;
  header.set_num_probe_queries(shape.num_probe_queries);
  header.mutable_probe_offsets()->Add(turn.probe_offsets.begin(), turn.probe_offsets.end());
  header.set_has_token_scores(!turn.layers.empty() && !turn.layers[0].token_scores.empty());
  return header;
}

// Token scores come in every layer or in none, [H, T] each.
template <typename Turn>
absl::Status CheckTokenScores(const Turn& turn, const TurnShape& shape) {
  const bool scored = !turn.layers.empty() && !turn.layers[0].token_scores.empty();
  const size_t want = scored ? size_t{turn.model.num_kv_heads()} * shape.num_tokens : 0;
  for (size_t l = 0; l < turn.layers.size(); ++l) {
    if (turn.layers[l].token_scores.size() != want) {
      return absl::InvalidArgumentError(
          absl::StrCat("layer ", l, ": token_scores hold ", turn.layers[l].token_scores.size(),
                       " values; send [H, T] = ", want, " in every layer, or none in any"));
    }
  }
  return absl::OkStatus();
}

void SetTokenScores(std::span<const float> scores, v1::LayerChunk& chunk) {
  chunk.set_token_scores(reinterpret_cast<const char*>(scores.data()),
                         scores.size() * sizeof(float));  // little-endian, as every tensor here
}

absl::Status CheckBytes(std::string_view bytes, size_t element_size, size_t layer,
                        const char* what) {
  if (bytes.size() % element_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, ": ", what, " hold ",
                                                   bytes.size(), " bytes, not a multiple of the ",
                                                   element_size, "-byte dtype"));
  }
  return absl::OkStatus();
}

// Checks a CacheHeader before any layer is accepted against it.
absl::Status CheckCacheHeader(const v1::CacheHeader& header) {
  const v1::ModelSpec& m = header.model();
  if (m.num_kv_heads() == 0 || m.head_dim() == 0) {
    return absl::InternalError("GetCache: header has num_kv_heads or head_dim 0");
  }
  if (!ToTensorDType(m.dtype()).ok()) {
    return absl::InternalError(
        absl::StrCat("GetCache: header has no valid output dtype (", m.dtype(), ")"));
  }
  if (header.entries_per_layer_size() != static_cast<int>(m.num_layers())) {
    return absl::InternalError(absl::StrCat("GetCache: header lists ",
                                            header.entries_per_layer_size(),
                                            " entries_per_layer for num_layers=", m.num_layers()));
  }
  return absl::OkStatus();
}

absl::Status CheckLength(const std::string& bytes, uint64_t expected, uint32_t layer,
                         const char* what, const std::string& shape) {
  if (bytes.size() == expected) return absl::OkStatus();
  return absl::DataLossError(absl::StrCat("GetCache: layer ", layer, " ", what, " has ",
                                          bytes.size(), " bytes, expected ", expected, " for ",
                                          shape));
}

// Checks the byte lengths of layer `l` against the header.
absl::Status CheckCacheLayer(const v1::CacheHeader& header, const v1::CacheLayer& layer) {
  const v1::ModelSpec& m = header.model();
  const uint32_t l = layer.layer();
  const uint64_t n = header.entries_per_layer(static_cast<int>(l));
  NEXUSKV_ASSIGN_OR_RETURN(const DType dtype, ToTensorDType(m.dtype()));
  NEXUSKV_ASSIGN_OR_RETURN(const uint64_t kv_bytes,
                           TensorBytes({m.num_kv_heads(), n, m.head_dim()}, dtype, "cache keys"));
  const std::string kv_shape =
      absl::StrCat("[H=", m.num_kv_heads(), ", N=", n, ", D=", m.head_dim(), "] ",
                   std::string(DTypeName(dtype)));
  const std::string hn_shape = absl::StrCat("[H=", m.num_kv_heads(), ", N=", n, "]");
  const uint64_t hn = uint64_t{m.num_kv_heads()} * n;
  NEXUSKV_RETURN_IF_ERROR(CheckLength(layer.keys(), kv_bytes, l, "keys", kv_shape));
  NEXUSKV_RETURN_IF_ERROR(CheckLength(layer.values(), kv_bytes, l, "values", kv_shape));
  NEXUSKV_RETURN_IF_ERROR(CheckLength(layer.bias(), header.has_bias() ? hn * 4 : 0, l, "bias",
                                      header.has_bias() ? hn_shape + " float32" : "no bias"));
  return CheckLength(layer.positions(), hn * 8, l, "positions", hn_shape + " int64");
}

absl::Status CheckBearerToken(std::string_view token) {
  for (const char c : token) {
    // HTTP/2 header values: visible ASCII. A space would also split "Bearer <token>" wrongly.
    if (c < '!' || c > '~') {
      return absl::InvalidArgumentError(
          "the bearer token must be printable ASCII without spaces (ClientOptions.bearer_token)");
    }
  }
  return absl::OkStatus();
}

// gRPC refuses metadata values outside printable ASCII (space included).
bool IsHeaderValue(std::string_view value) {
  for (const char c : value) {
    if (c < ' ' || c > '~') return false;
  }
  return true;
}

// The contents of a PEM file; `what` names it in errors.
absl::StatusOr<std::string> ReadPemFile(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("cannot read the ", what, " file ", path, ": ", std::strerror(errno)));
  }
  std::string pem((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return absl::NotFoundError(absl::StrCat("cannot read the ", what, " file ", path));
  if (pem.find("-----BEGIN ") == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("the ", what, " file ", path, " holds no PEM block (-----BEGIN ...)"));
  }
  return pem;
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> TlsCredentialsFromFiles(
    const TlsFiles& files) {
  if (files.cert_chain_file.empty() != files.private_key_file.empty()) {
    return absl::InvalidArgumentError(
        "a client certificate needs its private key: set both cert_chain_file and "
        "private_key_file, or neither");
  }
  grpc::SslCredentialsOptions ssl;
  if (!files.root_ca_file.empty()) {
    NEXUSKV_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadPemFile(files.root_ca_file, "root CA"));
  }
  if (!files.cert_chain_file.empty()) {
    NEXUSKV_ASSIGN_OR_RETURN(ssl.pem_cert_chain,
                             ReadPemFile(files.cert_chain_file, "client certificate"));
    NEXUSKV_ASSIGN_OR_RETURN(ssl.pem_private_key,
                             ReadPemFile(files.private_key_file, "client private key"));
  }
  return grpc::SslCredentials(ssl);
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const ClientOptions& options) {
  if (options.target.empty()) return absl::InvalidArgumentError("ClientOptions.target is empty");
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ClientOptions.timeout must be positive");
  }
  if (options.max_message_bytes <= 0) {
    return absl::InvalidArgumentError("ClientOptions.max_message_bytes must be positive");
  }
  NEXUSKV_RETURN_IF_ERROR(CheckBearerToken(options.bearer_token));
  if (!IsHeaderValue(options.session_header_prefix)) {
    return absl::InvalidArgumentError(
        "ClientOptions.session_header_prefix must be printable ASCII (it goes into the "
        "x-nexuskv-session metadata)");
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  std::shared_ptr<grpc::ChannelCredentials> credentials =
      options.credentials ? options.credentials : grpc::InsecureChannelCredentials();
  return std::make_unique<Client>(grpc::CreateCustomChannel(options.target, credentials, args),
                                  options);
}

Client::Client(std::shared_ptr<grpc::Channel> channel, const ClientOptions& options)
    : options_(options), channel_(std::move(channel)), stub_(v1::KvMemory::NewStub(channel_)) {}

void Client::PrepareContext(grpc::ClientContext& context, std::string_view session_id) const {
  context.set_deadline(absl::ToChronoTime(absl::Now() + options_.timeout));
  context.set_wait_for_ready(options_.wait_for_ready);
  if (!options_.bearer_token.empty()) {
    context.AddMetadata("authorization", absl::StrCat("Bearer ", options_.bearer_token));
  }
  // Without the header a gateway cannot route the call to the session's shard; an id it cannot
  // carry is one the server refuses (INVALID_ARGUMENT) on whichever shard the call reaches.
  if (!session_id.empty() && IsHeaderValue(session_id)) {
    context.AddMetadata(kSessionHeader, options_.session_header_prefix + std::string(session_id));
  }
}

absl::StatusOr<v1::AppendSegmentResponse> Client::AppendTurn(const TurnTensors& turn) {
  NEXUSKV_RETURN_IF_ERROR(CheckSpec(turn.model));
  const size_t es = DTypeSize(*ToTensorDType(turn.model.dtype()));
  std::vector<LayerElements> elements;
  for (size_t l = 0; l < turn.layers.size(); ++l) {
    const LayerBytes& b = turn.layers[l];
    NEXUSKV_RETURN_IF_ERROR(CheckBytes(b.keys, es, l, "keys"));
    NEXUSKV_RETURN_IF_ERROR(CheckBytes(b.values, es, l, "values"));
    NEXUSKV_RETURN_IF_ERROR(CheckBytes(b.probe_queries, es, l, "probe_queries"));
    elements.push_back({b.keys.size() / es, b.values.size() / es, b.probe_queries.size() / es});
  }
  NEXUSKV_ASSIGN_OR_RETURN(const TurnShape shape, DeriveShape(turn.model, elements));
  NEXUSKV_RETURN_IF_ERROR(CheckTokenScores(turn, shape));
  return Append(MakeHeader(turn, shape), [&turn](uint32_t l) -> absl::StatusOr<v1::LayerChunk> {
    const LayerBytes& b = turn.layers[l];
    v1::LayerChunk chunk;
    chunk.set_layer(l);
    chunk.set_keys(b.keys.data(), b.keys.size());
    chunk.set_values(b.values.data(), b.values.size());
    chunk.set_probe_queries(b.probe_queries.data(), b.probe_queries.size());
    SetTokenScores(b.token_scores, chunk);
    return chunk;
  });
}

absl::StatusOr<v1::AppendSegmentResponse> Client::AppendTurn(const FloatTurnTensors& turn) {
  NEXUSKV_RETURN_IF_ERROR(CheckSpec(turn.model));
  std::vector<LayerElements> elements;
  for (const FloatLayer& f : turn.layers) {
    elements.push_back({f.keys.size(), f.values.size(), f.probe_queries.size()});
  }
  NEXUSKV_ASSIGN_OR_RETURN(const TurnShape shape, DeriveShape(turn.model, elements));
  NEXUSKV_RETURN_IF_ERROR(CheckTokenScores(turn, shape));
  const DType dtype = *ToTensorDType(turn.model.dtype());
  return Append(MakeHeader(turn, shape),
                [&turn, dtype](uint32_t l) -> absl::StatusOr<v1::LayerChunk> {
                  const FloatLayer& f = turn.layers[l];
                  v1::LayerChunk chunk;
                  chunk.set_layer(l);
                  AppendEncoded(f.keys, dtype, chunk.mutable_keys());
                  AppendEncoded(f.values, dtype, chunk.mutable_values());
                  AppendEncoded(f.probe_queries, dtype, chunk.mutable_probe_queries());
                  SetTokenScores(f.token_scores, chunk);
                  return chunk;
                });
}

absl::StatusOr<v1::AppendSegmentResponse> Client::Append(const v1::SegmentHeader& header,
                                                         const LayerSource& source) {
  grpc::ClientContext context;
  PrepareContext(context, header.session_id());
  v1::AppendSegmentResponse response;
  std::unique_ptr<grpc::ClientWriter<v1::AppendSegmentRequest>> writer =
      stub_->AppendSegment(&context, &response);
  v1::AppendSegmentRequest request;
  *request.mutable_header() = header;
  // A false Write means the stream is broken (typically the server already refused it): stop
  // sending and let Finish report the server's status.
  bool open = writer->Write(request);
  for (uint32_t l = 0; open && l < header.model().num_layers(); ++l) {
    absl::StatusOr<v1::LayerChunk> chunk = source(l);
    absl::Status local = chunk.status();
    if (local.ok()) {
      *request.mutable_layer() = *std::move(chunk);
      const size_t size = request.ByteSizeLong();
      if (size > static_cast<size_t>(options_.max_message_bytes)) {
        local = absl::ResourceExhaustedError(
            absl::StrCat("layer ", l, " of turn ", header.turn(), " is ", size,
                         " bytes on the wire, over the client's max_message_bytes=",
                         options_.max_message_bytes));
      }
    }
    if (!local.ok()) {
      // Cancelling makes the server drop the partial segment: a refused stream stores nothing.
      context.TryCancel();
      writer->Finish().IgnoreError();
      return local;
    }
    open = writer->Write(request);
  }
  if (open) writer->WritesDone();
  NEXUSKV_RETURN_IF_ERROR(FromGrpcStatus(writer->Finish()));
  return response;
}

absl::StatusOr<Cache> Client::GetCache(const v1::GetCacheRequest& request) {
  grpc::ClientContext context;
  PrepareContext(context, request.session_id());
  std::unique_ptr<grpc::ClientReader<v1::GetCacheResponse>> reader =
      stub_->GetCache(&context, request);
  Cache cache;
  bool have_header = false;
  absl::Status protocol;
  v1::GetCacheResponse message;
  while (protocol.ok() && reader->Read(&message)) {
    if (message.has_header()) {
      if (have_header) {
        protocol = absl::InternalError("GetCache: server sent a second CacheHeader");
      } else {
        cache.header = std::move(*message.mutable_header());
        have_header = true;
        protocol = CheckCacheHeader(cache.header);
        cache.layers.reserve(cache.header.model().num_layers());
      }
    } else if (message.has_layer()) {
      const size_t expected = cache.layers.size();
      if (!have_header) {
        protocol = absl::InternalError("GetCache: server sent a CacheLayer before the CacheHeader");
      } else if (expected >= cache.header.model().num_layers()) {
        protocol = absl::InternalError(absl::StrCat("GetCache: server sent more than num_layers=",
                                                    cache.header.model().num_layers(), " layers"));
      } else if (message.layer().layer() != expected) {
        protocol =
            absl::InternalError(absl::StrCat("GetCache: expected layer ", expected,
                                             ", server sent layer ", message.layer().layer()));
      } else {
        protocol = CheckCacheLayer(cache.header, message.layer());
        cache.layers.push_back(std::move(*message.mutable_layer()));
      }
    } else {
      protocol = absl::InternalError("GetCache: server sent an empty GetCacheResponse");
    }
  }
  if (!protocol.ok()) {
    context.TryCancel();
    reader->Finish().IgnoreError();
    return protocol;
  }
  NEXUSKV_RETURN_IF_ERROR(FromGrpcStatus(reader->Finish()));
  if (!have_header) return absl::InternalError("GetCache: stream ended without a CacheHeader");
  if (cache.layers.size() != cache.header.model().num_layers()) {
    return absl::InternalError(absl::StrCat("GetCache: stream ended after ", cache.layers.size(),
                                            " of ", cache.header.model().num_layers(), " layers"));
  }
  return cache;
}

absl::StatusOr<v1::SessionInfo> Client::GetSession(std::string_view session_id) {
  grpc::ClientContext context;
  PrepareContext(context, session_id);
  v1::GetSessionRequest request;
  request.set_session_id(std::string(session_id));
  v1::SessionInfo response;
  NEXUSKV_RETURN_IF_ERROR(FromGrpcStatus(stub_->GetSession(&context, request, &response)));
  return response;
}

absl::StatusOr<v1::ListSessionsResponse> Client::ListSessions(
    const v1::ListSessionsRequest& request) {
  grpc::ClientContext context;
  PrepareContext(context);
  v1::ListSessionsResponse response;
  NEXUSKV_RETURN_IF_ERROR(FromGrpcStatus(stub_->ListSessions(&context, request, &response)));
  return response;
}

absl::StatusOr<std::vector<v1::SessionInfo>> Client::ListAllSessions(std::string_view prefix,
                                                                     uint32_t page_size) {
  std::vector<v1::SessionInfo> sessions;
  std::set<std::string> seen_tokens;
  v1::ListSessionsRequest request;
  request.set_prefix(std::string(prefix));
  request.set_page_size(page_size);
  while (true) {
    NEXUSKV_ASSIGN_OR_RETURN(v1::ListSessionsResponse page, ListSessions(request));
    for (v1::SessionInfo& s : *page.mutable_sessions()) sessions.push_back(std::move(s));
    if (page.next_page_token().empty()) return sessions;
    if (!seen_tokens.insert(page.next_page_token()).second) {
      return absl::InternalError(absl::StrCat("ListSessions: server repeated page token \"",
                                              page.next_page_token(), "\""));
    }
    request.set_page_token(page.next_page_token());
  }
}

absl::StatusOr<v1::DeleteSessionResponse> Client::DeleteSession(std::string_view session_id) {
  grpc::ClientContext context;
  PrepareContext(context, session_id);
  v1::DeleteSessionRequest request;
  request.set_session_id(std::string(session_id));
  v1::DeleteSessionResponse response;
  NEXUSKV_RETURN_IF_ERROR(FromGrpcStatus(stub_->DeleteSession(&context, request, &response)));
  return response;
}

}  // namespace nexuskv::client
