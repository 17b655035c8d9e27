// Pki: throwaway certificates for TLS integration tests, made with the openssl CLI.
//
// Make(dir) writes into an existing directory, each as PEM (X.509 certificate .pem, RSA key .key):
//   ca.pem, ca.key                      a test CA ("nexuskv-test-ca");
//   server.pem, server.key              a server certificate signed by the CA, for IP:127.0.0.1
//                                       and DNS:localhost;
//   client.pem, client.key              a client certificate signed by the CA (CN=client);
//   rogue.pem, rogue.key                another CA, trusted by nobody;
//   rogue-client.pem, rogue-client.key  a client certificate signed by the rogue CA.
// Certificates are valid for two days.
//
//   NEXUSKV_ASSIGN_OR_RETURN(Pki pki, Pki::Make(dir));
//   flags.push_back("--tls_cert_file=" + pki.path("server.pem"));
//   options.pem_root_certs = pki.pem("ca.pem");
//
// Needs `openssl` on PATH. Thread-compatible: a Pki only names files.
#ifndef NEXUSKV_TESTS_INTEGRATION_PKI_H_
#define NEXUSKV_TESTS_INTEGRATION_PKI_H_

#include <string>
#include <utility>

#include "absl/status/statusor.h"

namespace nexuskv::testing {

class Pki {
 public:
  // Internal when openssl fails or is missing.
  static absl::StatusOr<Pki> Make(const std::string& dir);

  // The path of one of the files above.
  std::string path(const std::string& name) const { return dir_ + "/" + name; }
  // Its contents; empty when it cannot be read.
  std::string pem(const std::string& name) const;

 private:
  explicit Pki(std::string dir) : dir_(std::move(dir)) {}
  std::string dir_;
};

}  // namespace nexuskv::testing

#endif  // NEXUSKV_TESTS_INTEGRATION_PKI_H_
