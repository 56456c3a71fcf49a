// `blockmig vol list|info|create|delete`: volumes in pools.
#include <memory>

#include "pool_shared.hpp"
#include "pools/address.hpp"
#include "pools/pool.hpp"

namespace blockmig::cli {

namespace {

struct VolArgs {
    std::optional<std::string> pools_file;
    std::string pool, volume, name, size, format = "raw";
};

nlohmann::json volume_record(const GlobalOptions& globals, const pools::Pool& pool,
                             const pools::VolumeInfo& info) {
    nlohmann::json record = {{"name", info.name},
                             {"url", pool.url_of(info.name)},
                             {"format", pools::to_string(info.format)},
                             {"virtual_size", info.virtual_size},
                             {"allocated_bytes", info.allocated_bytes}};
    if (globals.output == OutputFormat::text) {
        record["virtual_size"] =
            fmt::format("{} ({})", info.virtual_size, human_size(info.virtual_size));
        record["allocated_bytes"] =
            fmt::format("{} ({})", info.allocated_bytes, human_size(info.allocated_bytes));
    }
    return record;
}

Result<void> vol_list(const GlobalOptions& globals, const VolArgs& args) {
    auto config = pools::load_pools_config(args.pools_file);
    if (!config) return fail(config.error());
    auto pool = pools::open_pool(args.pool, *config);
    if (!pool) return fail(pool.error());
    auto volumes = (*pool)->list_volumes();
    if (!volumes) return fail(volumes.error());
    for (const auto& info : *volumes) {
        if (globals.output == OutputFormat::json) {
            print_record(globals, volume_record(globals, **pool, info));
        } else {
            fmt::print("{:<24} {:<6} {:>12} {:>12}\n", info.name, pools::to_string(info.format),
                       human_size(info.virtual_size), human_size(info.allocated_bytes));
        }
    }
    return {};
}

Result<void> vol_info(const GlobalOptions& globals, const VolArgs& args) {
    auto config = pools::load_pools_config(args.pools_file);
    if (!config) return fail(config.error());
    auto ref = pools::resolve_volume(args.volume, *config);
    if (!ref) return fail(ref.error());
    auto info = ref->pool->stat(ref->name);
    if (!info) return fail(info.error());
    print_record(globals, volume_record(globals, *ref->pool, *info));
    return {};
}

Result<void> vol_create(const GlobalOptions& globals, const VolArgs& args) {
    auto size = pools::parse_size(args.size);
    if (!size) return fail(size.error());
    auto format = pools::parse_image_format(args.format);
    if (!format) return fail(format.error());
    auto config = pools::load_pools_config(args.pools_file);
    if (!config) return fail(config.error());
    auto pool = pools::open_pool(args.pool, *config);
    if (!pool) return fail(pool.error());
    auto info = (*pool)->create(args.name, *size, *format);
    if (!info) return fail(info.error());
    print_record(globals, volume_record(globals, **pool, *info));
    return {};
}

Result<void> vol_delete(const GlobalOptions& globals, const VolArgs& args) {
    auto config = pools::load_pools_config(args.pools_file);
    if (!config) return fail(config.error());
    auto ref = pools::resolve_volume(args.volume, *config);
    if (!ref) return fail(ref.error());
    const std::string url = ref->pool->url_of(ref->name);
    if (auto r = ref->pool->remove(ref->name); !r) return r;
    if (globals.output == OutputFormat::json) {
        print_record(globals, {{"deleted", url}});
    } else {
        fmt::print("deleted {}\n", url);
    }
    return {};
}

using Handler = Result<void> (*)(const GlobalOptions&, const VolArgs&);

void on_run(CLI::App* command, Dispatch& dispatch, std::shared_ptr<VolArgs> args, Handler handler) {
    add_pools_option(*command, args->pools_file);
    command->callback([&dispatch, args, handler] {
        dispatch.action = [&dispatch, args, handler] { return handler(dispatch.globals, *args); };
    });
}

}  // namespace

void add_vol_commands(CLI::App& app, Dispatch& dispatch) {
    auto args = std::make_shared<VolArgs>();
    const char* pool_help =
        "named pool, directory, nfs://host/export[/dir] or iscsi://host[:port]/iqn";
    const char* volume_help =
        "pool:name, a file path, nfs://host/export/[dir/]file or iscsi://host[:port]/iqn/lun";
    CLI::App* vol = app.add_subcommand("vol", "volumes in storage pools");
    vol->require_subcommand(1);

    CLI::App* list = vol->add_subcommand("list", "list the volumes of a pool");
    list->add_option("POOL", args->pool, pool_help)->required();
    on_run(list, dispatch, args, vol_list);

    CLI::App* info = vol->add_subcommand("info", "format, virtual size and allocation of a volume");
    info->add_option("VOLUME", args->volume, volume_help)->required();
    on_run(info, dispatch, args, vol_info);

    CLI::App* create = vol->add_subcommand("create", "create a sparse raw or empty qcow2 volume");
    create->add_option("POOL", args->pool, pool_help)->required();
    create->add_option("NAME", args->name, "volume name (iSCSI: lunN, or \"\" for any unused LUN)")
        ->required();
    create->add_option("SIZE", args->size, "size, e.g. 512M, 20G")->required();
    create->add_option("--format", args->format, "raw (default) or qcow2")
        ->check(CLI::IsMember({"raw", "qcow2"}));
    on_run(create, dispatch, args, vol_create);

    CLI::App* del = vol->add_subcommand("delete", "delete a volume and its data");
    del->add_option("VOLUME", args->volume, volume_help)->required();
    on_run(del, dispatch, args, vol_delete);
}

}  // namespace blockmig::cli
