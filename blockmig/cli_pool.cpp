// Registers `blockmig pool` (filled in by its issue).
#include "cli_commands.hpp"

namespace blockmig::cli {

void add_pool_commands(CLI::App&, Dispatch&) {}

}  // namespace blockmig::cli
