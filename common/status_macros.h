// Early-return helpers for absl::Status / absl::StatusOr.
//
// Debian's Abseil (20220623) ships neither RETURN_IF_ERROR nor ASSIGN_OR_RETURN, so nexuskv keeps
// these two here. Usage:
//
//   NEXUSKV_RETURN_IF_ERROR(store.Write(batch));
//   NEXUSKV_ASSIGN_OR_RETURN(auto session, store.GetSession(key));
#ifndef NEXUSKV_COMMON_STATUS_MACROS_H_
#define NEXUSKV_COMMON_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define NEXUSKV_RETURN_IF_ERROR(expr)                 \
  do {                                                \
    ::absl::Status nexuskv_status_ = (expr);          \
    if (!nexuskv_status_.ok()) return nexuskv_status_; \
  } while (0)

#define NEXUSKV_STATUS_CONCAT_INNER_(a, b) a##b
#define NEXUSKV_STATUS_CONCAT_(a, b) NEXUSKV_STATUS_CONCAT_INNER_(a, b)

#define NEXUSKV_ASSIGN_OR_RETURN(lhs, expr) \
  NEXUSKV_ASSIGN_OR_RETURN_IMPL_(NEXUSKV_STATUS_CONCAT_(nexuskv_statusor_, __LINE__), lhs, expr)

#define NEXUSKV_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                   \
  if (!statusor.ok()) return std::move(statusor).status();  \
  lhs = std::move(statusor).value()

#endif  // NEXUSKV_COMMON_STATUS_MACROS_H_
