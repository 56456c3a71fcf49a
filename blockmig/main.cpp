#include "blockmig/cli.hpp"

int main(int argc, char** argv) { return blockmig::cli::run(argc, argv); }
