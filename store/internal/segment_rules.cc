#include "store/internal/segment_rules.h"

#include <xxhash.h>

#include <algorithm>
#include <memory>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/text_format.h"
#include "google/protobuf/util/message_differencer.h"
#include "store/internal/absl_compat.h"

namespace nexuskv::store::internal {
namespace {

struct Xxh3StateDeleter {
  void operator()(XXH3_state_t* state) const { XXH3_freeState(state); }
};

void Update(XXH3_state_t* state, std::string_view bytes) {
  XXH3_64bits_update(state, bytes.data(), bytes.size());
}

template <typename T>
void AddIfDifferent(std::string_view name, const T& incoming, const T& stored,
                    std::vector<std::string>* out) {
  if (incoming != stored) out->push_back(absl::StrCat(Sv(name), " ", incoming, " vs ", stored));
}

}  // namespace

std::vector<uint64_t> ComputeLayerDigests(const std::vector<LayerTensors>& layers) {
  std::unique_ptr<XXH3_state_t, Xxh3StateDeleter> state(XXH3_createState());
  std::vector<uint64_t> digests;
  digests.reserve(layers.size());
  for (const LayerTensors& layer : layers) {
    XXH3_64bits_reset(state.get());
    Update(state.get(), layer.keys);
    Update(state.get(), layer.values);
    Update(state.get(), layer.probe_queries);
    Update(state.get(), layer.token_scores);  // empty without scores: the digest is as before
    digests.push_back(XXH3_64bits_digest(state.get()));
  }
  return digests;
}

uint64_t RawBytes(const std::vector<LayerTensors>& layers) {
  uint64_t total = 0;
  for (const LayerTensors& layer : layers) {
    total += layer.keys.size() + layer.values.size() + layer.probe_queries.size() +
             layer.token_scores.size();
  }
  return total;
}

std::string DescribeSpecDifference(const nexuskv::v1::ModelSpec& incoming,
                                   const nexuskv::v1::ModelSpec& stored) {
  if (google::protobuf::util::MessageDifferencer::Equals(incoming, stored)) return "";
  // Reflection keeps this right when ModelSpec gains fields.
  std::vector<std::string> diffs;
  const google::protobuf::Descriptor* descriptor = incoming.GetDescriptor();
  for (int i = 0; i < descriptor->field_count(); ++i) {
    const google::protobuf::FieldDescriptor* field = descriptor->field(i);
    if (field->is_repeated()) continue;
    std::string a, b;
    google::protobuf::TextFormat::PrintFieldValueToString(incoming, field, -1, &a);
    google::protobuf::TextFormat::PrintFieldValueToString(stored, field, -1, &b);
    if (a != b) diffs.push_back(absl::StrCat(field->name(), " ", a, " vs ", b));
  }
  if (diffs.empty()) return "fields this server does not know differ";
  return absl::StrJoin(diffs, ", ");
}

std::string DescribeSegmentDifference(const SegmentRecord& incoming, const SegmentRecord& stored) {
  std::vector<std::string> diffs;
  AddIfDifferent("num_tokens", incoming.num_tokens(), stored.num_tokens(), &diffs);
  AddIfDifferent("first_position", incoming.first_position(), stored.first_position(), &diffs);
  if (incoming.role() != stored.role()) {
    diffs.push_back(absl::StrCat("role ", nexuskv::v1::Role_Name(incoming.role()), " vs ",
                                 nexuskv::v1::Role_Name(stored.role())));
  }
  AddIfDifferent("num_probe_queries", incoming.num_probe_queries(), stored.num_probe_queries(),
                 &diffs);
  AddIfDifferent("raw_bytes", incoming.raw_bytes(), stored.raw_bytes(), &diffs);
  if (!std::equal(incoming.nexus_offsets().begin(), incoming.nexus_offsets().end(),
                  stored.nexus_offsets().begin(), stored.nexus_offsets().end())) {
    diffs.push_back("nexus_offsets");
  }
  if (!std::equal(incoming.probe_offsets().begin(), incoming.probe_offsets().end(),
                  stored.probe_offsets().begin(), stored.probe_offsets().end())) {
    diffs.push_back("probe_offsets");
  }
  AddIfDifferent("has_token_scores", incoming.has_token_scores(), stored.has_token_scores(),
                 &diffs);
  if (incoming.layer_digests_size() != stored.layer_digests_size()) {
    AddIfDifferent("num_layers", incoming.layer_digests_size(), stored.layer_digests_size(),
                   &diffs);
  } else {
    for (int i = 0; i < incoming.layer_digests_size(); ++i) {
      if (incoming.layer_digests(i) != stored.layer_digests(i)) {
        diffs.push_back(absl::StrCat("the tensor bytes of layer ", i));
        break;
      }
    }
  }
  return absl::StrJoin(diffs, ", ");
}

}  // namespace nexuskv::store::internal
