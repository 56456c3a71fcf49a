#include <fmt/core.h>

#include <cctype>
#include <cmath>
#include <string>

#include "pools/address.hpp"

namespace blockmig::pools {

Result<std::uint64_t> parse_size(std::string_view text) {
    auto bad = [&](std::string_view why) {
        return fail(ErrorCode::invalid_argument, fmt::format("size '{}': {}", text, why));
    };
    std::size_t i = 0;
    while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.'))
        ++i;
    std::string_view number = text.substr(0, i);
    std::string suffix;
    for (char c : text.substr(i))
        suffix += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    if (number.empty() || number == ".")
        return bad("expected a number with an optional K/M/G/T suffix");
    if (std::count(number.begin(), number.end(), '.') > 1) return bad("malformed number");
    int shift = 0;
    if (suffix.empty() || suffix == "B")
        shift = 0;
    else if (suffix == "K" || suffix == "KB" || suffix == "KIB")
        shift = 10;
    else if (suffix == "M" || suffix == "MB" || suffix == "MIB")
        shift = 20;
    else if (suffix == "G" || suffix == "GB" || suffix == "GIB")
        shift = 30;
    else if (suffix == "T" || suffix == "TB" || suffix == "TIB")
        shift = 40;
    else if (suffix == "P" || suffix == "PB" || suffix == "PIB")
        shift = 50;
    else
        return bad("unknown suffix (K, M, G, T, P)");

    if (number.find('.') == std::string_view::npos) {
        std::uint64_t value = 0;
        for (char c : number) {
            if (value > (UINT64_MAX - 9) / 10) return bad("too large");
            value = value * 10 + static_cast<std::uint64_t>(c - '0');
        }
        if (shift > 0 && value > (UINT64_MAX >> shift)) return bad("too large");
        return value << shift;
    }
    const long double value =
        std::strtold(std::string(number).c_str(), nullptr) * std::ldexp(1.0L, shift);
    if (!(value < 18446744073709551616.0L)) return bad("too large");
    if (value != std::floor(value)) return bad("not a whole number of bytes");
    return static_cast<std::uint64_t>(value);
}

}  // namespace blockmig::pools
