#include "qmp/features.hpp"

#include <algorithm>

#include "json_util.hpp"

namespace blockmig::qmp {

using nlohmann::json;
using namespace detail;

Result<Features> Features::detect(Client& client, std::optional<Milliseconds> timeout) {
    auto schema = client.execute("query-qmp-schema", json::object(), timeout);
    if (!schema) return fail(schema.error());
    return from_schema(*schema);
}

Result<Features> Features::from_schema(const json& schema) {
    if (!schema.is_array())
        return fail(ErrorCode::protocol, "query-qmp-schema: reply is not an array");
    Features f;
    for (const json& entry : schema) {
        std::string name = str(entry, "name"), meta = str(entry, "meta-type");
        if (name.empty()) continue;
        if (meta == "command") {
            f.m_command_arg_type[name] = str(entry, "arg-type");
        } else if (meta == "event") {
            f.m_events.insert(name);
        } else {
            f.m_types[name] = entry;
        }
    }
    return f;
}

bool Features::has_command(std::string_view command) const {
    return m_command_arg_type.contains(command);
}
bool Features::has_event(std::string_view event) const { return m_events.contains(event); }

std::vector<Features::Member> Features::members_of(const std::string& type) const {
    std::vector<Member> out;
    std::vector<std::string> todo{type};
    std::set<std::string> seen;
    while (!todo.empty()) {
        std::string t = std::move(todo.back());
        todo.pop_back();
        if (!seen.insert(t).second) continue;
        auto it = m_types.find(t);
        if (it == m_types.end()) continue;
        const json& entry = it->second;
        if (const json* members = member(entry, "members"); members && members->is_array()) {
            for (const json& m : *members) out.push_back(Member{str(m, "name"), str(m, "type")});
        }
        if (const json* variants = member(entry, "variants"); variants && variants->is_array()) {
            for (const json& v : *variants) todo.push_back(str(v, "type"));
        }
    }
    return out;
}

bool Features::command_has_argument(std::string_view command, std::string_view argument) const {
    auto it = m_command_arg_type.find(command);
    if (it == m_command_arg_type.end()) return false;
    auto members = members_of(it->second);
    return std::any_of(members.begin(), members.end(),
                       [&](const Member& m) { return m.name == argument; });
}

std::vector<std::string> Features::argument_enum_values(std::string_view command,
                                                        std::string_view argument) const {
    auto it = m_command_arg_type.find(command);
    if (it == m_command_arg_type.end()) return {};
    for (const Member& m : members_of(it->second)) {
        if (m.name != argument) continue;
        auto t = m_types.find(m.type);
        if (t == m_types.end() || str(t->second, "meta-type") != "enum") return {};
        std::vector<std::string> values;
        if (const json* v = member(t->second, "values"); v && v->is_array()) {
            for (const json& s : *v) {
                if (s.is_string()) values.push_back(s.get<std::string>());
            }
        }
        return values;
    }
    return {};
}

bool Features::mirror_write_blocking() const {
    auto values = argument_enum_values("blockdev-mirror", "copy-mode");
    return std::find(values.begin(), values.end(), "write-blocking") != values.end();
}

bool Features::migrate_pause_before_switchover() const {
    auto values = argument_enum_values("migrate-continue", "state");
    return std::find(values.begin(), values.end(), "pre-switchover") != values.end();
}

}  // namespace blockmig::qmp
