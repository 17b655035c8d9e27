// nexuskv_ingest_bench: AppendSegment over loopback beside its two anchors, in one run.
//
//   build/bin/nexuskv_ingest_bench                       # both shapes, 256 and 1024 tokens
//   build/bin/nexuskv_ingest_bench --shapes=smollm2 --tokens=512 --bytes_per_case_mib=256
//
// For each model shape (float16) and turn length it appends the same turns, one stream at a time
// from one client, through:
//   nexuskv   the real nexuskv-server (started by the integration-test harness, fresh data dir,
//             --sync_writes as given, --precompute_fits=false so background fits do not share
//             the CPU with ingest) through the C++ client's AppendTurn;
//   rocksdb   (anchor a) RocksDB alone: per turn one WriteBatch holding each layer's keys and
//             values, written with the store's column family options (blob files from 4 KiB, 64
//             MiB LRU block cache) and WriteOptions::sync = --sync_writes;
//   grpc      (anchor b) a bare client-streaming AppendSegment with the same messages (built
//             before the clock starts) to an in-process service that parses and drops them;
//   grpc+client  the C++ client's AppendTurn to that same dropping service (the client's own
//             cost, for the breakdown; not an anchor).
// MB/s is tensor payload bytes (keys + values, 10^6 bytes) over wall time, after one warm-up turn
// that is not counted. Ratios are nexuskv over min(rocksdb, grpc).
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "clients/cpp/client.h"
#include "grpcpp/grpcpp.h"
#include "nexuskv/v1/kv_memory.grpc.pb.h"
#include "rocksdb/cache.h"
#include "rocksdb/db.h"
#include "rocksdb/options.h"
#include "rocksdb/table.h"
#include "rocksdb/write_batch.h"
#include "tensor/dtype.h"
#include "tests/integration/server_process.h"

ABSL_FLAG(std::string, shapes, "smollm2,llama3-8b", "Model shapes: smollm2, llama3-8b.");
ABSL_FLAG(std::string, tokens, "256,1024", "Tokens per turn, comma-separated.");
ABSL_FLAG(double, bytes_per_case_mib, 384,
          "Payload each path ingests per case (shape x tokens), MiB; at least 2 turns.");
ABSL_FLAG(bool, sync_writes, true, "fsync the WAL per turn (server flag and the RocksDB anchor).");
ABSL_FLAG(std::string, server_flags, "",
          "Extra comma-separated flags for the nexuskv-server this tool starts.");
ABSL_FLAG(std::string, server_bin, "", "The server binary to start; empty: the build's own.");

namespace nexuskv::bench {
namespace {

namespace v1 = ::nexuskv::v1;

struct Shape {
  std::string name;
  uint32_t layers, kv_heads, query_heads, head_dim;
};

absl::StatusOr<Shape> ShapeNamed(std::string_view name) {
  if (name == "smollm2") return Shape{"SmolLM2-135M", 30, 3, 9, 64};
  if (name == "llama3-8b") return Shape{"Llama-3-8B", 32, 8, 32, 128};
  return absl::InvalidArgumentError(absl::StrCat("unknown shape ", std::string(name)));
}

v1::ModelSpec Spec(const Shape& shape) {
  v1::ModelSpec spec;
  spec.set_model_id(shape.name);
  spec.set_num_layers(shape.layers);
  spec.set_num_kv_heads(shape.kv_heads);
  spec.set_num_query_heads(shape.query_heads);
  spec.set_head_dim(shape.head_dim);
  spec.set_dtype(v1::DTYPE_FLOAT16);
  return spec;
}

// One case's turns: per turn and layer, keys and values as float16 bytes, sliced from one random
// pool (every path sends exactly these bytes).
struct Turns {
  Shape shape;
  uint32_t tokens = 0;
  size_t tensor_bytes = 0;  // One keys (or values) tensor.
  int count = 0;            // Turns, the first one a warm-up.
  std::string pool;
  std::vector<std::vector<std::pair<std::string_view, std::string_view>>> kv;  // [turn][layer]

  uint64_t PayloadPerTurn() const { return uint64_t{2} * tensor_bytes * shape.layers; }
};

Turns MakeTurns(const Shape& shape, uint32_t tokens, double mib) {
  Turns t;
  t.shape = shape;
  t.tokens = tokens;
  t.tensor_bytes = size_t{shape.kv_heads} * tokens * shape.head_dim * 2;
  t.count = 1 + std::max<int>(2, static_cast<int>(mib * (1 << 20) / t.PayloadPerTurn()));
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(std::max<size_t>(t.tensor_bytes * 4, 8 << 20) / 2);
  for (float& x : v) x = normal(rng);
  t.pool = EncodeFromFloat(v, DType::kFloat16);
  std::mt19937_64 pick(11);
  const auto slice = [&] {
    const size_t offset = (pick() % ((t.pool.size() - t.tensor_bytes) / 2)) * 2;
    return std::string_view(t.pool).substr(offset, t.tensor_bytes);
  };
  t.kv.resize(t.count);
  for (auto& layers : t.kv) {
    for (uint32_t l = 0; l < shape.layers; ++l) layers.push_back({slice(), slice()});
  }
  return t;
}

client::TurnTensors ClientTurn(const Turns& t, const std::string& session, int turn) {
  client::TurnTensors out;
  out.session_id = session;
  out.turn = turn;
  out.first_position = uint64_t{t.tokens} * turn;
  out.role = turn % 2 == 0 ? v1::ROLE_USER : v1::ROLE_ASSISTANT;
  out.model = Spec(t.shape);
  for (const auto& [k, v] : t.kv[turn]) out.layers.push_back({k, v, {}});
  return out;
}

// Runs turn(i) for every turn, the first untimed; MB/s of the timed ones.
absl::StatusOr<double> Measure(const Turns& t, const std::function<absl::Status(int)>& turn) {
  if (absl::Status s = turn(0); !s.ok()) return s;
  const absl::Time start = absl::Now();
  for (int i = 1; i < t.count; ++i) {
    if (absl::Status s = turn(i); !s.ok()) return s;
  }
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  return static_cast<double>(t.PayloadPerTurn()) * (t.count - 1) / seconds / 1e6;
}

std::unique_ptr<client::Client> MakeClient(const std::string& target) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  client::ClientOptions options;
  options.target = target;
  options.timeout = absl::Seconds(120);
  return std::make_unique<client::Client>(
      grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args), options);
}

absl::StatusOr<double> RunNexuskv(const Turns& t, const std::string& case_id) {
  testing::ServerProcessOptions options;
  if (!absl::GetFlag(FLAGS_server_bin).empty()) options.binary = absl::GetFlag(FLAGS_server_bin);
  options.extra_flags = {absl::StrCat("--sync_writes=", absl::GetFlag(FLAGS_sync_writes)),
                         "--precompute_fits=false", "--log_level=warning"};
  for (const std::string& f : std::vector<std::string>(
           absl::StrSplit(absl::GetFlag(FLAGS_server_flags), ',', absl::SkipEmpty()))) {
    options.extra_flags.emplace_back(f);
  }
  auto server = testing::ServerProcess::Start(options);
  if (!server.ok()) return server.status();
  auto client = MakeClient((*server)->address());
  return Measure(
      t, [&](int i) { return client->AppendTurn(ClientTurn(t, "ingest-" + case_id, i)).status(); });
}

// The store's column family options (store/internal/rocksdb_store.cc), blobs for the tensors.
absl::StatusOr<double> RunRocksDb(const Turns& t, const std::string& case_id) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() /
                                    absl::StrCat("nexuskv_ingest_rocksdb_", getpid(), "_", case_id);
  std::filesystem::remove_all(dir);
  rocksdb::BlockBasedTableOptions table;
  table.block_cache = rocksdb::NewLRUCache(64 << 20);
  rocksdb::ColumnFamilyOptions records;
  records.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  rocksdb::ColumnFamilyOptions blobs = records;
  blobs.enable_blob_files = true;
  blobs.min_blob_size = 4096;
  blobs.enable_blob_garbage_collection = true;
  rocksdb::DBOptions db_options;
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  const rocksdb::Status opened = rocksdb::DB::Open(
      db_options, dir.string(), {{rocksdb::kDefaultColumnFamilyName, records}, {"segments", blobs}},
      &handles, &raw);
  if (!opened.ok()) return absl::InternalError(opened.ToString());
  std::unique_ptr<rocksdb::DB> db(raw);
  rocksdb::WriteOptions write_options;
  write_options.sync = absl::GetFlag(FLAGS_sync_writes);
  auto result = Measure(t, [&](int i) {
    rocksdb::WriteBatch batch;
    for (uint32_t l = 0; l < t.shape.layers; ++l) {
      const auto& [k, v] = t.kv[i][l];
      batch.Put(handles[1], absl::StrCat("s/", i, "/", l, "/k"),
                rocksdb::Slice(k.data(), k.size()));
      batch.Put(handles[1], absl::StrCat("s/", i, "/", l, "/v"),
                rocksdb::Slice(v.data(), v.size()));
    }
    const rocksdb::Status s = db->Write(write_options, &batch);
    return s.ok() ? absl::OkStatus() : absl::InternalError(s.ToString());
  });
  for (rocksdb::ColumnFamilyHandle* h : handles) db->DestroyColumnFamilyHandle(h);
  db.reset();
  std::filesystem::remove_all(dir);
  return result;
}

// Parses every AppendSegment message and drops it; answers OK with an empty response.
class DroppingService final : public v1::KvMemory::CallbackService {
  grpc::ServerReadReactor<v1::AppendSegmentRequest>* AppendSegment(
      grpc::CallbackServerContext*, v1::AppendSegmentResponse*) override {
    class Reactor final : public grpc::ServerReadReactor<v1::AppendSegmentRequest> {
     public:
      Reactor() { StartRead(&request_); }
      void OnReadDone(bool ok) override {
        if (ok) {
          StartRead(&request_);
        } else {
          Finish(grpc::Status::OK);
        }
      }
      void OnDone() override { delete this; }

     private:
      v1::AppendSegmentRequest request_;
    };
    return new Reactor();
  }
};

struct DroppingServer {
  DroppingService service;
  std::unique_ptr<grpc::Server> server;
  std::string address;
};

absl::StatusOr<std::unique_ptr<DroppingServer>> StartDroppingServer() {
  auto s = std::make_unique<DroppingServer>();
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(64 << 20);
  builder.SetMaxSendMessageSize(64 << 20);
  builder.RegisterService(&s->service);
  s->server = builder.BuildAndStart();
  if (!s->server || port == 0) return absl::InternalError("the dropping gRPC server did not start");
  s->address = absl::StrCat("127.0.0.1:", port);
  return s;
}

absl::StatusOr<double> RunBareGrpc(const Turns& t, const std::string& target) {
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(64 << 20);
  auto stub = v1::KvMemory::NewStub(
      grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args));
  // Every message built before the clock starts: the call only carries bytes.
  std::vector<std::vector<v1::AppendSegmentRequest>> messages(t.count);
  for (int i = 0; i < t.count; ++i) {
    v1::SegmentHeader* h = messages[i].emplace_back().mutable_header();
    h->set_session_id("ingest");
    h->set_turn(i);
    h->set_num_tokens(t.tokens);
    *h->mutable_model() = Spec(t.shape);
    for (uint32_t l = 0; l < t.shape.layers; ++l) {
      v1::LayerChunk* c = messages[i].emplace_back().mutable_layer();
      c->set_layer(l);
      c->set_keys(std::string(t.kv[i][l].first));
      c->set_values(std::string(t.kv[i][l].second));
    }
  }
  return Measure(t, [&](int i) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
    v1::AppendSegmentResponse response;
    auto writer = stub->AppendSegment(&context, &response);
    for (const v1::AppendSegmentRequest& m : messages[i]) {
      if (!writer->Write(m)) break;
    }
    writer->WritesDone();
    const grpc::Status s = writer->Finish();
    return s.ok() ? absl::OkStatus() : absl::InternalError(s.error_message());
  });
}

int Main() {
  std::vector<Shape> shapes;
  for (const std::string& name : std::vector<std::string>(
           absl::StrSplit(absl::GetFlag(FLAGS_shapes), ',', absl::SkipEmpty()))) {
    auto shape = ShapeNamed(name);
    if (!shape.ok()) {
      std::cerr << shape.status() << "\n";
      return 2;
    }
    shapes.push_back(*shape);
  }
  std::vector<uint32_t> token_counts;
  for (const std::string& s : std::vector<std::string>(
           absl::StrSplit(absl::GetFlag(FLAGS_tokens), ',', absl::SkipEmpty()))) {
    uint32_t n = 0;
    if (!absl::SimpleAtoi(s, &n) || n == 0) {
      std::cerr << "bad --tokens entry " << s << "\n";
      return 2;
    }
    token_counts.push_back(n);
  }
  auto dropping = StartDroppingServer();
  if (!dropping.ok()) {
    std::cerr << dropping.status() << "\n";
    return 1;
  }
  std::cout << absl::StrFormat("sync_writes=%v; MB/s of keys+values payload, one stream\n",
                               absl::GetFlag(FLAGS_sync_writes));
  std::cout << absl::StrFormat("%-13s %6s %9s %6s | %8s %8s %8s %12s | %11s\n", "shape", "tokens",
                               "MB/turn", "turns", "nexuskv", "rocksdb", "grpc", "grpc+client",
                               "ratio/min");
  for (const Shape& shape : shapes) {
    for (uint32_t tokens : token_counts) {
      const Turns t = MakeTurns(shape, tokens, absl::GetFlag(FLAGS_bytes_per_case_mib));
      const std::string id = absl::StrCat(shape.layers, "x", shape.kv_heads, "x", tokens);
      auto nexuskv = RunNexuskv(t, id);
      auto rocksdb = RunRocksDb(t, id);
      auto grpc = RunBareGrpc(t, (*dropping)->address);
      auto client = MakeClient((*dropping)->address);
      auto with_client = Measure(
          t, [&](int i) { return client->AppendTurn(ClientTurn(t, "ingest", i)).status(); });
      for (const auto* r : {&nexuskv, &rocksdb, &grpc, &with_client}) {
        if (!r->ok()) {
          std::cerr << shape.name << " " << tokens << ": " << r->status() << "\n";
          return 1;
        }
      }
      std::cout << absl::StrFormat("%-13s %6d %9.2f %6d | %8.1f %8.1f %8.1f %12.1f | %11.2f\n",
                                   shape.name, tokens, t.PayloadPerTurn() / 1e6, t.count - 1,
                                   *nexuskv, *rocksdb, *grpc, *with_client,
                                   *nexuskv / std::min(*rocksdb, *grpc));
    }
  }
  (*dropping)->server->Shutdown();
  return 0;
}

}  // namespace
}  // namespace nexuskv::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "nexuskv_ingest_bench [--shapes=smollm2,llama3-8b] [--tokens=N,...]");
  absl::ParseCommandLine(argc, argv);
  return nexuskv::bench::Main();
}
