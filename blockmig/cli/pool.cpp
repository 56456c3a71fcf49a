// `blockmig pool list` and `blockmig pool info POOL`; registers `blockmig vol` too.
#include <memory>

#include "commands.hpp"
#include "pool_shared.hpp"
#include "pools/address.hpp"

namespace blockmig::cli {

namespace {

struct PoolArgs {
    std::optional<std::string> pools_file;
    std::string pool;
};

Result<void> pool_list(const GlobalOptions& globals, const PoolArgs& args) {
    auto config = pools::load_pools_config(args.pools_file);
    if (!config) return fail(config.error());
    if (globals.output == OutputFormat::text && config->pools.empty()) {
        fmt::print("no named pools ({})\n",
                   config->source.empty() ? "no pools file found" : config->source);
    }
    for (const auto& [name, spec] : config->pools) {
        if (globals.output == OutputFormat::json) {
            print_record(globals,
                         {{"name", name}, {"type", spec.type}, {"location", spec.location}});
        } else {
            fmt::print("{:<16} {:<6} {}\n", name, spec.type, spec.location);
        }
    }
    return {};
}

Result<void> pool_info(const GlobalOptions& globals, const PoolArgs& args) {
    auto config = pools::load_pools_config(args.pools_file);
    if (!config) return fail(config.error());
    auto pool = pools::open_pool(args.pool, *config);
    if (!pool) {
        print_record(globals,
                     {{"pool", args.pool}, {"reachable", false}, {"error", pool.error().message}});
        return fail(pool.error());
    }
    auto capacity = (*pool)->capacity();
    if (!capacity) return fail(capacity.error());
    nlohmann::json record = {
        {"pool", args.pool}, {"type", (*pool)->type()},        {"url", (*pool)->url()},
        {"reachable", true}, {"total_bytes", capacity->total}, {"free_bytes", capacity->free}};
    if (globals.output == OutputFormat::text) {
        record["total_bytes"] =
            fmt::format("{} ({})", capacity->total, human_size(capacity->total));
        record["free_bytes"] = fmt::format("{} ({})", capacity->free, human_size(capacity->free));
    }
    print_record(globals, record);
    return {};
}

}  // namespace

void add_pool_commands(CLI::App& app, Dispatch& dispatch) {
    auto args = std::make_shared<PoolArgs>();
    CLI::App* pool = app.add_subcommand("pool", "storage pools: list the named ones, show one");
    pool->require_subcommand(1);

    CLI::App* list = pool->add_subcommand("list", "list the named pools of the pools file");
    add_pools_option(*list, args->pools_file);
    list->callback([&dispatch, args] {
        dispatch.action = [&dispatch, args] { return pool_list(dispatch.globals, *args); };
    });

    CLI::App* info = pool->add_subcommand("info", "type, URL, reachability and capacity of a pool");
    add_pools_option(*info, args->pools_file);
    info->add_option("POOL", args->pool,
                     "named pool, directory, nfs://host/export[/dir] or iscsi://host[:port]/iqn")
        ->required();
    info->callback([&dispatch, args] {
        dispatch.action = [&dispatch, args] { return pool_info(dispatch.globals, *args); };
    });

    add_vol_commands(app, dispatch);
}

}  // namespace blockmig::cli
