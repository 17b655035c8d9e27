#include "compressor/internal/sonic_ladder.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace nexuskv::compressor::internal {
namespace {

constexpr char kLadderMagic[2] = {'N', 'S'};
constexpr char kSummaryMagic[2] = {'N', 'Y'};

void PutU32(uint32_t v, std::string* out) {
  for (int b = 0; b < 4; ++b) out->push_back(static_cast<char>((v >> (8 * b)) & 0xff));
}

void PutF32(float v, std::string* out) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  PutU32(bits, out);
}

uint32_t GetU32(std::string_view s, size_t at) {
  uint32_t v = 0;
  for (int b = 0; b < 4; ++b) v |= uint32_t{static_cast<unsigned char>(s[at + b])} << (8 * b);
  return v;
}

float GetF32(std::string_view s, size_t at) {
  const uint32_t bits = GetU32(s, at);
  float v;
  std::memcpy(&v, &bits, 4);
  return v;
}

uint8_t WireDType(DType dtype) {
  return dtype == DType::kFloat32 ? 1 : dtype == DType::kFloat16 ? 2 : 3;
}

absl::Status BadLadder(const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("fit is not a SONIC ladder: ", why));
}

// Bytes of one head's block in a rung of m entries.
size_t HeadBlockBytes(size_t m, size_t d, DType dtype, size_t t, size_t width) {
  return m * 4 + m * 4 + 2 * m * d * DTypeSize(dtype) + t * width;
}

int AssignmentWidth(std::span<const int> rungs) {
  for (int m : rungs) {
    if (m >= 0xFFFF) return 4;
  }
  return 2;
}

}  // namespace

std::string EncodeSonicLadder(const SonicLadder& ladder) {
  const size_t h_count = static_cast<size_t>(ladder.num_kv_heads);
  std::string out;
  out.push_back(kLadderMagic[0]);
  out.push_back(kLadderMagic[1]);
  out.push_back(static_cast<char>(kSonicLadderVersion));
  out.push_back(static_cast<char>(WireDType(ladder.dtype)));
  PutU32(static_cast<uint32_t>(ladder.num_kv_heads), &out);
  PutU32(static_cast<uint32_t>(ladder.num_tokens), &out);
  PutU32(static_cast<uint32_t>(ladder.head_dim), &out);
  PutU32(static_cast<uint32_t>(ladder.rungs.size()), &out);
  PutU32(ladder.num_nexus, &out);
  PutU32(ladder.probe_rows, &out);
  const int width = AssignmentWidth(ladder.rungs);
  PutU32((ladder.proxy ? kSonicFlagProxy : 0) | (width == 4 ? kSonicFlagWideAssignment : 0), &out);
  for (int m : ladder.rungs) PutU32(static_cast<uint32_t>(m), &out);
  for (const SonicRungError& e : ladder.errors) {
    PutF32(e.output_error, &out);
    PutF32(e.log_mass_error, &out);
  }
  for (float x : ladder.fold) PutF32(x, &out);
  for (float x : ladder.token_mass) PutF32(x, &out);
  for (size_t k = 0; k < ladder.rungs.size(); ++k) {
    for (size_t h = 0; h < h_count; ++h) {
      const NexusSet& set = ladder.sets[k][h];
      for (uint32_t o : set.offsets) PutU32(o, &out);
      for (float b : set.bias) PutF32(b, &out);
      AppendEncoded(set.keys, ladder.dtype, &out);
      AppendEncoded(set.values, ladder.dtype, &out);
      for (uint32_t a : set.assignment) {
        if (width == 4) {
          PutU32(a, &out);
        } else {
          const uint32_t v = a == kNotMerged ? 0xFFFF : a;
          out.push_back(static_cast<char>(v & 0xff));
          out.push_back(static_cast<char>((v >> 8) & 0xff));
        }
      }
    }
  }
  return out;
}

absl::StatusOr<SonicLadderIndex> IndexSonicLadder(std::string_view fit) {
  if (fit.size() < kSonicHeaderBytes || fit[0] != kLadderMagic[0] || fit[1] != kLadderMagic[1]) {
    return BadLadder(absl::StrCat("missing header (", fit.size(), " bytes)"));
  }
  const int version = static_cast<unsigned char>(fit[2]);
  if (version != kSonicLadderVersion) {
    return BadLadder(absl::StrCat("version ", version, ", this server reads version ",
                                  kSonicLadderVersion, "; refit the turn"));
  }
  SonicLadderIndex index;
  switch (static_cast<unsigned char>(fit[3])) {
    case 1:
      index.dtype = DType::kFloat32;
      break;
    case 2:
      index.dtype = DType::kFloat16;
      break;
    case 3:
      index.dtype = DType::kBFloat16;
      break;
    default:
      return BadLadder(absl::StrCat("unknown dtype ", static_cast<unsigned char>(fit[3])));
  }
  const uint32_t h = GetU32(fit, 4), t = GetU32(fit, 8), d = GetU32(fit, 12), k = GetU32(fit, 16);
  if (h < 1 || t < 1 || d < 1 || k < 1 || h > (1u << 20) || t > (1u << 30) || d > (1u << 20) ||
      k > 64) {
    return BadLadder(absl::StrCat("implausible shape H=", h, " T=", t, " D=", d, " K=", k));
  }
  index.num_kv_heads = static_cast<int>(h);
  index.num_tokens = static_cast<int>(t);
  index.head_dim = static_cast<int>(d);
  index.num_nexus = GetU32(fit, 20);
  index.probe_rows = GetU32(fit, 24);
  const uint32_t flags = GetU32(fit, 28);
  index.proxy = (flags & kSonicFlagProxy) != 0;
  index.assignment_width = (flags & kSonicFlagWideAssignment) != 0 ? 4 : 2;
  size_t at = kSonicHeaderBytes;
  const uint64_t table =
      uint64_t{k} * 4 + uint64_t{k} * h * 8 + uint64_t{h} * d * 4 + uint64_t{h} * t * 4;
  if (fit.size() < at + table) return BadLadder("truncated rung table");
  uint64_t body = 0;
  for (uint32_t i = 0; i < k; ++i) {
    const uint32_t m = GetU32(fit, at + 4 * i);
    if (m < 1 || m > t || (i > 0 && m >= static_cast<uint32_t>(index.rungs.back()))) {
      return BadLadder(absl::StrCat("rung ", i, " has ", m,
                                    " entries; sizes must be strictly "
                                    "descending in [1, ",
                                    t, "]"));
    }
    index.rungs.push_back(static_cast<int>(m));
    body += uint64_t{h} * HeadBlockBytes(m, d, index.dtype, t, index.assignment_width);
  }
  at += size_t{k} * 4;
  index.errors.resize(size_t{k} * h);
  for (SonicRungError& e : index.errors) {
    e.output_error = GetF32(fit, at);
    e.log_mass_error = GetF32(fit, at + 4);
    at += 8;
  }
  at += size_t{h} * d * 4 + size_t{h} * t * 4;
  if (AssignmentWidth(index.rungs) != index.assignment_width) {
    return BadLadder("assignment width does not match the rung sizes");
  }
  if (fit.size() != at + body) {
    return BadLadder(absl::StrCat(fit.size(), " bytes, expected ", at + body));
  }
  for (int m : index.rungs) {
    index.rung_offset.push_back(at);
    at += size_t{h} * HeadBlockBytes(static_cast<size_t>(m), d, index.dtype, t,
                                     static_cast<size_t>(index.assignment_width));
  }
  return index;
}

std::vector<NexusSet> DecodeSonicRung(std::string_view fit, const SonicLadderIndex& index, int k) {
  const size_t m = static_cast<size_t>(index.rungs[k]);
  const size_t d = static_cast<size_t>(index.head_dim);
  const size_t row_bytes = m * d * DTypeSize(index.dtype);
  std::vector<NexusSet> sets(static_cast<size_t>(index.num_kv_heads));
  size_t at = index.rung_offset[k];
  for (NexusSet& set : sets) {
    set.offsets.resize(m);
    set.bias.resize(m);
    set.keys.resize(m * d);
    set.values.resize(m * d);
    for (size_t j = 0; j < m; ++j) set.offsets[j] = GetU32(fit, at + 4 * j);
    at += 4 * m;
    for (size_t j = 0; j < m; ++j) set.bias[j] = GetF32(fit, at + 4 * j);
    at += 4 * m;
    // Sizes were checked by IndexSonicLadder, so decoding cannot fail.
    (void)DecodeToFloat(fit.substr(at, row_bytes), index.dtype, set.keys);
    at += row_bytes;
    (void)DecodeToFloat(fit.substr(at, row_bytes), index.dtype, set.values);
    at += row_bytes;
    const size_t t = static_cast<size_t>(index.num_tokens);
    set.assignment.resize(t);
    for (size_t i = 0; i < t; ++i) {
      if (index.assignment_width == 4) {
        set.assignment[i] = GetU32(fit, at + 4 * i);
      } else {
        const uint32_t v = uint32_t{static_cast<unsigned char>(fit[at + 2 * i])} |
                           uint32_t{static_cast<unsigned char>(fit[at + 2 * i + 1])} << 8;
        set.assignment[i] = v == 0xFFFF ? kNotMerged : v;
      }
    }
    at += t * static_cast<size_t>(index.assignment_width);
  }
  return sets;
}

std::vector<float> DecodeSonicFold(std::string_view fit, const SonicLadderIndex& index) {
  const size_t k = index.rungs.size();
  const size_t h = static_cast<size_t>(index.num_kv_heads);
  const size_t at = kSonicHeaderBytes + k * 4 + k * h * 8;
  std::vector<float> fold(h * static_cast<size_t>(index.head_dim));
  for (size_t i = 0; i < fold.size(); ++i) fold[i] = GetF32(fit, at + 4 * i);
  return fold;
}

std::vector<float> DecodeSonicTokenMass(std::string_view fit, const SonicLadderIndex& index) {
  const size_t k = index.rungs.size();
  const size_t h = static_cast<size_t>(index.num_kv_heads);
  const size_t at = kSonicHeaderBytes + k * 4 + k * h * 8 + h * index.head_dim * 4;
  std::vector<float> mass(h * static_cast<size_t>(index.num_tokens));
  for (size_t i = 0; i < mass.size(); ++i) mass[i] = GetF32(fit, at + 4 * i);
  return mass;
}

std::string EncodeSonicSummary(const SonicSummary& summary) {
  std::string out;
  out.push_back(kSummaryMagic[0]);
  out.push_back(kSummaryMagic[1]);
  out.push_back(static_cast<char>(kSonicSummaryVersion));
  out.push_back(0);
  PutU32(static_cast<uint32_t>(summary.num_tokens), &out);
  PutU32(static_cast<uint32_t>(summary.rungs.size()), &out);
  for (size_t i = 0; i < summary.rungs.size(); ++i) {
    PutU32(static_cast<uint32_t>(summary.rungs[i]), &out);
    PutF32(summary.errors[i].output_error, &out);
    PutF32(summary.errors[i].log_mass_error, &out);
  }
  return out;
}

absl::StatusOr<SonicSummary> DecodeSonicSummary(std::string_view bytes) {
  if (bytes.size() < 12 || bytes[0] != kSummaryMagic[0] || bytes[1] != kSummaryMagic[1] ||
      static_cast<unsigned char>(bytes[2]) != kSonicSummaryVersion) {
    return absl::InvalidArgumentError(absl::StrCat("not a version-", kSonicSummaryVersion,
                                                   " SONIC summary (", bytes.size(), " bytes)"));
  }
  SonicSummary summary;
  summary.num_tokens = static_cast<int>(GetU32(bytes, 4));
  const uint32_t k = GetU32(bytes, 8);
  if (k > 64 || bytes.size() != 12 + size_t{k} * 12) {
    return absl::InvalidArgumentError(
        absl::StrCat("SONIC summary of ", bytes.size(), " bytes cannot hold ", k, " rungs"));
  }
  for (uint32_t i = 0; i < k; ++i) {
    const size_t at = 12 + size_t{i} * 12;
    summary.rungs.push_back(static_cast<int>(GetU32(bytes, at)));
    summary.errors.push_back({GetF32(bytes, at + 4), GetF32(bytes, at + 8)});
  }
  return summary;
}

int64_t SonicStoredEntries(std::span<const int> rungs) {
  int64_t total = 0;
  for (int m : rungs) total += m;
  return total;
}

}  // namespace nexuskv::compressor::internal
