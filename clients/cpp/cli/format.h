// Text formatting for the `nexuskv` CLI: byte counts, times, aligned tables and protobuf JSON.
// All functions are pure and thread-safe.
#ifndef NEXUSKV_CLIENTS_CPP_CLI_FORMAT_H_
#define NEXUSKV_CLIENTS_CPP_CLI_FORMAT_H_

#include <google/protobuf/message.h>

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "nexuskv/v1/kv_memory.pb.h"

namespace nexuskv::cli {

// "0 B", "512 B", "1.5 KiB", "12.0 MiB", "3.2 GiB".
std::string HumanBytes(uint64_t bytes);

// "2026-01-31 17:10:13Z" (UTC); "-" for 0.
std::string FormatUnixMillis(int64_t unix_ms);

// "demo-model (L=2 H=2 Hq=4 D=16 float16)".
std::string DescribeModel(const nexuskv::v1::ModelSpec& model);

// A turn's fits as "sonic:stored h2o:pending snapkv:failed"; "-" when the server fits none.
std::string DescribeFits(const nexuskv::v1::TurnInfo& turn);

// Columns separated by two spaces and padded to their widest cell; the last column is not padded.
// Columns whose index is in `right_aligned` are right-aligned (numbers).
void PrintTable(std::ostream& out, const std::vector<std::string>& header,
                const std::vector<std::vector<std::string>>& rows,
                const std::vector<size_t>& right_aligned = {});

// A message as one line of JSON with proto field names (snake_case), every field printed (zeros
// included) and enums as names. 64-bit integers are JSON strings, as proto3 JSON mapping says.
std::string ToJson(const google::protobuf::Message& message);

}  // namespace nexuskv::cli

#endif  // NEXUSKV_CLIENTS_CPP_CLI_FORMAT_H_
