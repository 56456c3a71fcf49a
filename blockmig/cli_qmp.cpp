// Registers `blockmig qmp` (filled in by its issue).
#include "cli_commands.hpp"

namespace blockmig::cli {

void add_qmp_command(CLI::App&, Dispatch&) {}

}  // namespace blockmig::cli
