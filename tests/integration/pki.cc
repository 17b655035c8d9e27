#include "tests/integration/pki.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "tests/integration/subprocess.h"

namespace nexuskv::testing {

absl::StatusOr<Pki> Pki::Make(const std::string& dir) {
  const std::string sh = absl::StrCat(
      "set -e; cd '", dir, "';",
      "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=nexuskv-test-ca "
      "  -keyout ca.key -out ca.pem 2>/dev/null;",
      "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=rogue-ca "
      "  -keyout rogue.key -out rogue.pem 2>/dev/null;",
      "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost' > san.ext;",
      "openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key "
      "  -out server.csr 2>/dev/null;",
      "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
      "  -extfile san.ext -out server.pem 2>/dev/null;",
      "for who in client:ca rogue-client:rogue; do n=${who%%:*}; c=${who##*:};"
      "  openssl req -newkey rsa:2048 -nodes -subj /CN=$n -keyout $n.key -out $n.csr 2>/dev/null;"
      "  openssl x509 -req -in $n.csr -CA $c.pem -CAkey $c.key -CAcreateserial -days 2 "
      "    -out $n.pem 2>/dev/null; done");
  absl::StatusOr<CommandResult> result = RunCommand({"/bin/sh", "-c", sh});
  if (!result.ok()) return result.status();
  if (result->exit_code != 0) {
    return absl::InternalError(
        absl::StrCat("openssl failed (", result->exit_code, "): ", result->err));
  }
  return Pki(dir);
}

std::string Pki::pem(const std::string& name) const {
  std::ifstream in(path(name));
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace nexuskv::testing
