// Debian's Abseil (20220623) is built with ABSL_OPTION_USE_STD_STRING_VIEW 0: absl::string_view
// is its own class, and absl::StrCat / absl::StrAppend do not accept a std::string_view. The
// store's API uses std::string_view, so its messages pass ids through Sv().
//
//   return absl::NotFoundError(absl::StrCat("session \"", Sv(session_id), "\" does not exist"));
#ifndef NEXUSKV_STORE_INTERNAL_ABSL_COMPAT_H_
#define NEXUSKV_STORE_INTERNAL_ABSL_COMPAT_H_

#include <string_view>

#include "absl/strings/string_view.h"

namespace nexuskv::store::internal {

// A view of the same bytes. No copy.
inline absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// The reverse, for absl::Status::message() and the like.
inline std::string_view StdSv(absl::string_view s) { return std::string_view(s.data(), s.size()); }

}  // namespace nexuskv::store::internal

#endif  // NEXUSKV_STORE_INTERNAL_ABSL_COMPAT_H_
