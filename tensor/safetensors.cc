#include "tensor/safetensors.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace nexuskv {
namespace {

using nlohmann::json;

// The reference implementation refuses headers above 100 MB.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr char kMetadataKey[] = "__metadata__";

absl::Status Invalid(const std::string& tensor, const std::string& problem) {
  return absl::InvalidArgumentError(
      absl::StrCat("safetensors: tensor \"", tensor, "\": ", problem));
}

std::string ShapeString(const std::vector<uint64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// shape x element size, or nullopt on overflow.
std::optional<uint64_t> ByteSize(const std::vector<uint64_t>& shape, size_t element_size) {
  unsigned __int128 total = element_size;
  for (uint64_t d : shape) {
    total *= d;
    if (total > UINT64_MAX) return std::nullopt;
  }
  return static_cast<uint64_t>(total);
}

absl::StatusOr<uint64_t> ReadUnsigned(const json& value, const std::string& tensor,
                                      const char* what) {
  if (!value.is_number_unsigned()) {
    return Invalid(tensor,
                   absl::StrCat(what, " must be a non-negative integer, got ", value.dump()));
  }
  return value.get<uint64_t>();
}

// Parses one tensor entry of the header (not yet checked against the data buffer).
absl::StatusOr<SafetensorsTensor> ParseEntry(const std::string& name, const json& entry,
                                             std::pair<uint64_t, uint64_t>& offsets) {
  if (name.empty()) return Invalid(name, "empty tensor name");
  if (!entry.is_object()) return Invalid(name, "entry must be a JSON object");
  for (const auto& [key, unused] : entry.items()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets") {
      return Invalid(name, absl::StrCat("unknown field \"", key, "\""));
    }
  }
  SafetensorsTensor tensor;
  tensor.name = name;
  const auto dtype = entry.find("dtype");
  if (dtype == entry.end() || !dtype->is_string()) return Invalid(name, "missing string dtype");
  tensor.dtype = dtype->get<std::string>();
  const std::optional<size_t> element_size = SafetensorsDTypeSize(tensor.dtype);
  if (!element_size) return Invalid(name, absl::StrCat("unknown dtype \"", tensor.dtype, "\""));

  const auto shape = entry.find("shape");
  if (shape == entry.end() || !shape->is_array()) return Invalid(name, "missing shape array");
  for (const json& d : *shape) {
    absl::StatusOr<uint64_t> dim = ReadUnsigned(d, name, "shape dimension");
    if (!dim.ok()) return dim.status();
    tensor.shape.push_back(*dim);
  }
  const auto range = entry.find("data_offsets");
  if (range == entry.end() || !range->is_array() || range->size() != 2) {
    return Invalid(name, "data_offsets must be an array [begin, end]");
  }
  absl::StatusOr<uint64_t> begin = ReadUnsigned((*range)[0], name, "data_offsets begin");
  if (!begin.ok()) return begin.status();
  absl::StatusOr<uint64_t> end = ReadUnsigned((*range)[1], name, "data_offsets end");
  if (!end.ok()) return end.status();
  if (*end < *begin) {
    return Invalid(name, absl::StrCat("data_offsets [", *begin, ", ", *end, "] end before begin"));
  }
  const std::optional<uint64_t> expected = ByteSize(tensor.shape, *element_size);
  if (!expected) return Invalid(name, "shape x dtype size overflows 64 bits");
  if (*end - *begin != *expected) {
    return Invalid(name, absl::StrCat("data_offsets [", *begin, ", ", *end, "] span ",
                                      *end - *begin, " bytes but shape ", ShapeString(tensor.shape),
                                      " of ", tensor.dtype, " needs ", *expected));
  }
  offsets = {*begin, *end};
  return tensor;
}

absl::Status ErrnoStatus(int error, const std::string& context) {
  std::string message = absl::StrCat(context, ": ", std::strerror(error));
  if (error == ENOENT) return absl::NotFoundError(message);
  if (error == EACCES || error == EPERM) return absl::PermissionDeniedError(message);
  return absl::InternalError(message);
}

}  // namespace

std::optional<size_t> SafetensorsDTypeSize(std::string_view dtype) {
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL" || dtype == "F8_E4M3" ||
      dtype == "F8_E5M2") {
    return 1;
  }
  return std::nullopt;
}

const SafetensorsTensor* SafetensorsFile::Find(std::string_view name) const {
  for (const SafetensorsTensor& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::Parse(std::string contents) {
  if (contents.size() < 8) {
    return absl::InvalidArgumentError(absl::StrCat("safetensors: file is ", contents.size(),
                                                   " bytes, too short for the 8-byte header size"));
  }
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | static_cast<uint8_t>(contents[i]);
  if (header_size > kMaxHeaderBytes || header_size > contents.size() - 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("safetensors: header size ", header_size, " does not fit in the ",
                     contents.size(), "-byte file (truncated or not a safetensors file)"));
  }
  const std::string_view header(contents.data() + 8, header_size);
  if (header.empty() || header.front() != '{') {
    return absl::InvalidArgumentError("safetensors: header does not start with '{'");
  }

  // nlohmann keeps the last of duplicate keys silently; the format forbids them.
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  const json::parser_callback_t track = [&](int, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) open_objects.emplace_back();
    if (event == json::parse_event_t::object_end) open_objects.pop_back();
    if (event == json::parse_event_t::key &&
        !open_objects.back().insert(parsed.get<std::string>()).second && duplicate.empty()) {
      duplicate = parsed.get<std::string>();
    }
    return true;
  };
  json root;
  try {
    root = json::parse(header.begin(), header.end(), track);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("safetensors: header is not valid JSON: ", e.what()));
  }
  if (!duplicate.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("safetensors: header repeats the key \"", duplicate, "\""));
  }

  if (!root.is_object()) {
    return absl::InvalidArgumentError("safetensors: header must be a JSON object");
  }

  SafetensorsFile file;
  std::vector<std::pair<std::pair<uint64_t, uint64_t>, SafetensorsTensor>> entries;
  for (const auto& [name, entry] : root.items()) {
    if (name == kMetadataKey) {
      if (!entry.is_object()) {
        return absl::InvalidArgumentError("safetensors: __metadata__ must be a JSON object");
      }
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          return absl::InvalidArgumentError(absl::StrCat("safetensors: __metadata__ value of \"",
                                                         key, "\" must be a string, got ",
                                                         value.dump()));
        }
        file.metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    std::pair<uint64_t, uint64_t> offsets;
    absl::StatusOr<SafetensorsTensor> tensor = ParseEntry(name, entry, offsets);
    if (!tensor.ok()) return tensor.status();
    entries.emplace_back(offsets, *std::move(tensor));
  }

  // The byte ranges must tile the data buffer exactly: sorted, contiguous, from 0 to its end.
  std::stable_sort(entries.begin(), entries.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  const uint64_t data_size = contents.size() - 8 - header_size;
  uint64_t cursor = 0;
  for (const auto& [range, tensor] : entries) {
    if (range.first != cursor) {
      return Invalid(
          tensor.name,
          absl::StrCat("data_offsets begin at ", range.first, " but the previous tensor ",
                       range.first < cursor ? "overlaps it, ending at " : "ends at ", cursor,
                       " (ranges must be contiguous from 0)"));
    }
    if (range.second > data_size) {
      return Invalid(tensor.name, absl::StrCat("data_offsets end at ", range.second, " past the ",
                                               data_size, "-byte data buffer (file truncated?)"));
    }
    cursor = range.second;
  }
  if (cursor != data_size) {
    return absl::InvalidArgumentError(absl::StrCat("safetensors: tensors cover ", cursor,
                                                   " bytes but the data buffer holds ", data_size,
                                                   " (trailing bytes)"));
  }

  file.contents_ = std::make_unique<std::string>(std::move(contents));
  const char* data = file.contents_->data() + 8 + header_size;
  for (auto& [range, tensor] : entries) {
    tensor.data = std::string_view(data + range.first, range.second - range.first);
    file.tensors_.push_back(std::move(tensor));
  }
  return file;
}

absl::StatusOr<SafetensorsFile> ReadSafetensorsFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return ErrnoStatus(errno, absl::StrCat("cannot open ", path));
  std::string contents((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return ErrnoStatus(errno, absl::StrCat("cannot read ", path));
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Parse(std::move(contents));
  if (!file.ok()) {
    return absl::Status(file.status().code(), absl::StrCat(path, ": ", file.status().message()));
  }
  return file;
}

absl::Status SafetensorsWriter::AddTensor(std::string name, std::string dtype,
                                          std::vector<uint64_t> shape, std::string_view data) {
  if (name.empty() || name == kMetadataKey) {
    return Invalid(name, "tensor names must be non-empty and not __metadata__");
  }
  for (const SafetensorsTensor& t : tensors_) {
    if (t.name == name) return Invalid(name, "added twice");
  }
  const std::optional<size_t> element_size = SafetensorsDTypeSize(dtype);
  if (!element_size) return Invalid(name, absl::StrCat("unknown dtype \"", dtype, "\""));
  const std::optional<uint64_t> expected = ByteSize(shape, *element_size);
  if (!expected || *expected != data.size()) {
    return Invalid(name, absl::StrCat(data.size(), " bytes do not match shape ", ShapeString(shape),
                                      " of ", dtype));
  }
  tensors_.push_back({std::move(name), std::move(dtype), std::move(shape), data});
  return absl::OkStatus();
}

void SafetensorsWriter::AddMetadata(std::string key, std::string value) {
  metadata_[std::move(key)] = std::move(value);
}

std::string SafetensorsWriter::Header() const {
  json root = json::object();
  uint64_t offset = 0;
  for (const SafetensorsTensor& t : tensors_) {
    root[t.name] = {
        {"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.data.size()}}};
    offset += t.data.size();
  }
  if (!metadata_.empty()) root[std::string(kMetadataKey)] = metadata_;
  std::string header = root.dump();
  header.append((8 - header.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i)
    out[i] = static_cast<char>((uint64_t{header.size()} >> (8 * i)) & 0xff);
  return out + header;
}

std::string SafetensorsWriter::Serialize() const {
  std::string out = Header();
  for (const SafetensorsTensor& t : tensors_) out.append(t.data);
  return out;
}

uint64_t SafetensorsWriter::SerializedSize() const {
  uint64_t size = Header().size();
  for (const SafetensorsTensor& t : tensors_) size += t.data.size();
  return size;
}

absl::Status SafetensorsWriter::WriteFile(const std::string& path) const {
  const std::string tmp = absl::StrCat(path, ".tmp");
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return ErrnoStatus(errno, absl::StrCat("cannot create ", tmp));
    const std::string header = Header();
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    for (const SafetensorsTensor& t : tensors_) {
      out.write(t.data.data(), static_cast<std::streamsize>(t.data.size()));
    }
    out.close();
    if (!out) {
      const int error = errno;
      std::remove(tmp.c_str());
      return ErrnoStatus(error, absl::StrCat("cannot write ", tmp));
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int error = errno;
    std::remove(tmp.c_str());
    return ErrnoStatus(error, absl::StrCat("cannot rename ", tmp, " to ", path));
  }
  return absl::OkStatus();
}

}  // namespace nexuskv
