// Private: non-throwing accessors for QEMU replies. nlohmann's value() throws
// when a member has an unexpected type; QEMU's replies are data from outside.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "qmp/client.hpp"

namespace blockmig::qmp::detail {

// Runs a command whose `return` is empty ({}), keeping only success/failure.
inline Result<void> run(Client& client, std::string_view command, const nlohmann::json& args,
                        std::optional<Milliseconds> timeout) {
    auto r = client.execute(command, args, timeout);
    if (!r) return fail(r.error());
    return {};
}

inline const nlohmann::json* member(const nlohmann::json& j, std::string_view key) {
    if (!j.is_object()) return nullptr;
    auto it = j.find(key);
    return it == j.end() ? nullptr : &*it;
}
inline std::optional<std::string> opt_str(const nlohmann::json& j, std::string_view key) {
    auto m = member(j, key);
    if (!m || !m->is_string()) return std::nullopt;
    return m->get<std::string>();
}
inline std::string str(const nlohmann::json& j, std::string_view key) {
    return opt_str(j, key).value_or("");
}
inline std::optional<std::int64_t> opt_int(const nlohmann::json& j, std::string_view key) {
    auto m = member(j, key);
    if (!m || !m->is_number_integer()) return std::nullopt;
    return m->get<std::int64_t>();
}
inline std::int64_t integer(const nlohmann::json& j, std::string_view key) {
    return opt_int(j, key).value_or(0);
}
inline std::optional<double> opt_num(const nlohmann::json& j, std::string_view key) {
    auto m = member(j, key);
    if (!m || !m->is_number()) return std::nullopt;
    return m->get<double>();
}
inline std::optional<bool> opt_bool(const nlohmann::json& j, std::string_view key) {
    auto m = member(j, key);
    if (!m || !m->is_boolean()) return std::nullopt;
    return m->get<bool>();
}
inline bool boolean(const nlohmann::json& j, std::string_view key) {
    return opt_bool(j, key).value_or(false);
}

}  // namespace blockmig::qmp::detail
