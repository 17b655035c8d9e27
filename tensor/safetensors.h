// Reading and writing safetensors files (https://huggingface.co/docs/safetensors), the tensor
// container the `nexuskv` CLI uses for turns (put) and caches (get --out), and the compressor tests
// read real KV from (tests/data).
//
// Layout: an 8-byte little-endian header length N, N bytes of JSON, then the data buffer. The JSON
// maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to
// the data buffer) and may hold "__metadata__", a map of string to string.
//
//   NEXUSKV_ASSIGN_OR_RETURN(SafetensorsFile file, ReadSafetensorsFile("turn.safetensors"));
//   const SafetensorsTensor* keys = file.Find("layers.0.keys");
//
//   SafetensorsWriter writer;
//   writer.AddMetadata("model_id", "llama");
//   NEXUSKV_RETURN_IF_ERROR(writer.AddTensor("layers.0.keys", "F16", {8, 16, 64}, bytes));
//   NEXUSKV_RETURN_IF_ERROR(writer.WriteFile("cache.safetensors"));
//
// Parsing is strict, as the reference implementation is: the header must be valid JSON holding an
// object, every tensor's byte range must match shape x dtype, ranges must tile the data buffer
// without gaps or overlap, names must be unique, and metadata values must be strings. Every
// violation is InvalidArgument with a message naming the tensor and the problem.
//
// Thread safety: a SafetensorsFile is immutable after parsing; a SafetensorsWriter is not
// thread-safe.
#ifndef NEXUSKV_TENSOR_SAFETENSORS_H_
#define NEXUSKV_TENSOR_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace nexuskv {

// Bytes per element of a safetensors dtype name ("F32", "F16", "BF16", "I64", ...); nullopt for a
// name the format does not define.
std::optional<size_t> SafetensorsDTypeSize(std::string_view dtype);

struct SafetensorsTensor {
  std::string name;
  std::string dtype;            // Safetensors spelling: "F32", "F16", "BF16", "I64"...
  std::vector<uint64_t> shape;  // Row-major; empty for a scalar.
  std::string_view data;        // Little-endian bytes, a view into the owning SafetensorsFile.
};

// A parsed file. Owns the bytes that SafetensorsTensor::data points into; moving keeps the views
// valid (the buffer is heap-allocated and not copied), copying is disabled.
class SafetensorsFile {
 public:
  SafetensorsFile(SafetensorsFile&&) = default;
  SafetensorsFile& operator=(SafetensorsFile&&) = default;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  // Tensors in data-offset order.
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // The tensor called `name`, or null.
  const SafetensorsTensor* Find(std::string_view name) const;

  // Parses a whole file's contents. InvalidArgument when they are not valid safetensors.
  static absl::StatusOr<SafetensorsFile> Parse(std::string contents);

 private:
  SafetensorsFile() = default;

  std::unique_ptr<std::string> contents_;
  std::vector<SafetensorsTensor> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Reads and parses `path`. NotFound / PermissionDenied / Internal (naming the path and errno text)
// when it cannot be read; InvalidArgument (prefixed with the path) when it is not valid.
absl::StatusOr<SafetensorsFile> ReadSafetensorsFile(const std::string& path);

// Collects tensors and metadata, then serializes them. Tensor data is referenced, not copied: the
// caller keeps it alive until Serialize or WriteFile returns.
class SafetensorsWriter {
 public:
  // InvalidArgument for an empty or duplicate name, "__metadata__", an unknown dtype, or data
  // whose size is not shape x dtype size.
  absl::Status AddTensor(std::string name, std::string dtype, std::vector<uint64_t> shape,
                         std::string_view data);
  // Later values for the same key replace earlier ones.
  void AddMetadata(std::string key, std::string value);

  // The file's bytes: header padded with spaces to a multiple of 8, then the tensors' data in the
  // order they were added.
  std::string Serialize() const;
  // Serialize().size(), without building it.
  uint64_t SerializedSize() const;

  // Writes Serialize()'s bytes to `path` through a temporary file in the same directory that is
  // renamed over `path`, so readers never see a partial file. Internal (with errno text) on I/O
  // failure.
  absl::Status WriteFile(const std::string& path) const;

 private:
  std::string Header() const;

  std::vector<SafetensorsTensor> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace nexuskv

#endif  // NEXUSKV_TENSOR_SAFETENSORS_H_
