// The CLI's help: the overview (`nexuskv help`) and one page per command (`nexuskv get --help`,
// `nexuskv help get`), both from one table so that they cannot disagree.
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "clients/cpp/cli/commands.h"

namespace nexuskv::cli {
namespace {

// C strings: Debian's Abseil (absl::string_view is its own type there) concatenates them as is.
struct CommandHelp {
  const char* name;
  const char* synopsis;  // After "nexuskv ".
  const char* summary;   // One line, in the overview.
  const char* details;   // The command's own page: what it does, then its flags.
};

constexpr const char* kGlobalFlags = R"(Global flags (every command):
  --server HOST:PORT   Server address (default $NEXUSKV_SERVER, else localhost:50051).
  --json               Print results as JSON (protobuf JSON mapping, proto field names).
  --timeout SECONDS    Deadline of each call (default 30).
  --token TOKEN        Bearer token for a server with a tokens file (default $NEXUSKV_TOKEN;
                       prefer the variable: other users can read command lines).
  --tls-ca FILE        Use TLS, verifying the server against the CA certificates in this PEM
                       file (without it, against gRPC's default roots).
  --tls-cert FILE      Use TLS and present this client certificate (PEM), for servers that
                       require mutual TLS. Needs --tls-key.
  --tls-key FILE       The private key (PEM) of --tls-cert.
)";

const std::vector<CommandHelp>& Commands() {
  static const std::vector<CommandHelp> kCommands = {
      {"ls", "ls [--prefix P]", "List sessions.",
       R"(Lists the sessions of your tenant, one row each: turns, tokens, raw bytes, compressed
bytes (stored fits; it grows for a few seconds after each put, while compression runs in the
background), model and last update.

  --prefix P           Only sessions whose id starts with P.
)"},
      {"show", "show SESSION", "Session info and its turns.",
       R"(Prints the session's summary and one row per turn. FITS gives the state of each turn's
background compression per method: pending (queued or running; a GetCache that needs it computes
it), stored, or failed (the error follows the table; answers serve that turn from its raw KV).
)"},
      {"rm", "rm SESSION", "Delete a session.",
       R"(Deletes the session, its turns and its fits, and prints what was freed.
)"},
      {"get",
       "get SESSION [--keep-ratio R | --max-tokens N | --max-bytes B]\n"
       "      [--method full|sonic|h2o|streaming_llm|snapkv] [--keep-recent-turns N]\n"
       "      [--first-turn N] [--last-turn N] [--dtype float16|bfloat16|float32] [--no-bias]\n"
       "      [--out FILE.safetensors]",
       "Fetch a cache fitted to a budget; print its header, and with --out write the tensors as "
       "safetensors.",
       R"(Fetches the session's cache fitted to a budget and prints its header (entries per layer,
per-turn allocation, notes). A budget that cannot hold one entry per layer is refused
(INVALID_ARGUMENT) with the smallest budget that works.

  --keep-ratio R       Keep R of the compressed turns' tokens, 0 < R <= 1 (0.2 = 80% compression).
  --max-tokens N       At most N entries per layer and kv head.
  --max-bytes B        At most B bytes of keys, values and bias in all.
  --method M           full, sonic (default), h2o, streaming_llm or snapkv. full needs no budget.
  --keep-recent-turns N  The last N turns of the range come back raw (they count in the budget).
  --first-turn N, --last-turn N  The turn range (default: every turn).
  --dtype D            Output dtype (default: the session's).
  --no-bias            A bias-free answer, for engines that cannot add a per-key bias.
  --out FILE           Write the cache as safetensors (format: docs/cli.md).
)"},
      {"put", "put SESSION --turn N --file TURN.safetensors",
       "Append one turn from a safetensors file.",
       R"(Appends one turn (format: docs/cli.md). Turns go in order from 0; re-sending an identical
turn changes nothing. The server acknowledges once the turn is durable and compresses it in the
background afterwards ('nexuskv show SESSION' shows each fit's state).

  --turn N             The turn number.
  --file FILE          The turn file.
)"},
      {"demo-turn",
       "demo-turn --out FILE [--layers L] [--kv-heads H] [--query-heads Hq] [--head-dim D]\n"
       "      [--tokens T] [--probes P] [--dtype float16] [--seed S] [--first-position N]\n"
       "      [--role user] [--model-id ID]",
       "Write a random (seeded) turn file for put.",
       R"(Writes a turn file of seeded random KV (the same seed gives the same file), for trying
put and get without a model. Defaults: 2 layers, 2 kv heads, 4 query heads, head_dim 16,
8 tokens, 4 probes, float16, seed 0, first position 0, role user, model id demo-model.
)"},
  };
  return kCommands;
}

}  // namespace

std::string HelpText() {
  std::string text = R"(nexuskv: command-line client of the nexuskv KV-cache memory tier.

Usage: nexuskv [--server HOST:PORT] [--json] [--timeout SECONDS] [--token TOKEN]
               [--tls-ca CA.pem] [--tls-cert CERT.pem --tls-key KEY.pem] COMMAND [ARGS]

Commands:
)";
  for (const CommandHelp& c : Commands()) {
    absl::StrAppend(&text, "  ", c.synopsis, "\n", std::string(31, ' '), c.summary, "\n");
  }
  absl::StrAppend(&text, "  help [COMMAND]               This text, or one command's.\n\n",
                  kGlobalFlags, R"(
Exit status: 0 success, 1 operation failed (printed as "error: CODE: message"), 2 usage error.
'nexuskv COMMAND --help' shows a command's own help. File formats: docs/cli.md.
)");
  return text;
}

absl::StatusOr<std::string> CommandHelpText(std::string_view command) {
  for (const CommandHelp& c : Commands()) {
    if (std::string_view(c.name) != command) continue;
    return absl::StrCat("Usage: nexuskv ", c.synopsis, "\n\n", c.summary, "\n\n", c.details, "\n",
                        kGlobalFlags);
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown command \"", std::string(command), "\""));
}

}  // namespace nexuskv::cli
