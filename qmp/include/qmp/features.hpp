// What the connected QEMU supports, read from query-qmp-schema, so callers
// adapt to its version instead of failing mid-operation.
//
// The schema names types by opaque numbers; this resolves a command's
// argument type, including the members of its union variants (e.g.
// block-export-add's nbd-specific "name").
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "qmp/client.hpp"
#include "qmp/error.hpp"

namespace blockmig::qmp {

class Features {
  public:
    // Runs query-qmp-schema. Errors: those of Client::execute(), protocol.
    static Result<Features> detect(Client& client, std::optional<Milliseconds> timeout = {});
    // From a schema already fetched. Errors: protocol if it is not an array.
    static Result<Features> from_schema(const nlohmann::json& schema);

    bool has_command(std::string_view command) const;
    bool has_event(std::string_view event) const;
    // True if `command` takes `argument` (directly or in any union variant).
    bool command_has_argument(std::string_view command, std::string_view argument) const;
    // The values an enum-typed argument of `command` accepts (empty if the
    // argument is absent or not an enum), e.g. ("blockdev-mirror", "copy-mode").
    std::vector<std::string> argument_enum_values(std::string_view command,
                                                  std::string_view argument) const;

    // ---- what blockmig asks --------------------------------------------------
    bool mirror_copy_mode() const { return command_has_argument("blockdev-mirror", "copy-mode"); }
    bool mirror_write_blocking() const;
    bool block_export_add() const { return has_command("block-export-add"); }
    bool block_job_change() const { return has_command("block-job-change"); }
    // block-job-change can switch a running mirror's copy-mode (QEMU >= 8.2).
    bool mirror_change_copy_mode() const {
        return command_has_argument("block-job-change", "copy-mode");
    }
    bool blockdev_reopen() const { return has_command("blockdev-reopen"); }
    bool migrate_pause_before_switchover() const;
    bool calc_dirty_rate() const { return has_command("calc-dirty-rate"); }

  private:
    struct Member {
        std::string name;
        std::string type;
    };
    std::vector<Member> members_of(const std::string& type) const;
    std::map<std::string, std::string, std::less<>> m_command_arg_type;
    std::set<std::string, std::less<>> m_events;
    std::map<std::string, nlohmann::json, std::less<>> m_types;
};

}  // namespace blockmig::qmp
