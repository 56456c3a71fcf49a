#pragma once

namespace blockmig::cli {

// Parses argv and runs one blockmig command. Returns the process exit status:
// 0 on success, 1 when the command failed (one "blockmig: error: ..." line on
// stderr), 2 on a usage error. Never throws.
int run(int argc, char** argv);

}  // namespace blockmig::cli
