// libFuzzer target for the QMP wire parser: arbitrary server bytes go through
// the line splitter and message classifier. Anything but a clean Result
// (a crash, a leak, UB, an escaping exception) is a bug.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "qmp/message.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view input(reinterpret_cast<const char*>(data), size);
    // The whole input as one line.
    (void)blockmig::qmp::parse_message(input);
    // As a stream cut into chunks whose length comes from the first byte, so
    // the fuzzer also explores messages split mid-JSON.
    std::size_t chunk = size ? (static_cast<std::uint8_t>(input[0]) % 64) + 1 : 1;
    blockmig::qmp::LineBuffer lines(4096);
    for (std::size_t pos = 0; pos < input.size(); pos += chunk) {
        if (!lines.append(input.substr(pos, chunk))) return 0;
        while (auto line = lines.next_line()) {
            auto msg = blockmig::qmp::parse_message(*line);
            if (msg && msg->kind == blockmig::qmp::MessageKind::error_reply) {
                // parse_message promises string class and desc.
                if (!msg->body["class"].is_string() || !msg->body["desc"].is_string())
                    __builtin_trap();
            }
        }
    }
    return 0;
}
