// `blockmig info`: what an image is (format, sizes, chain, features).
#include "commands.hpp"
#include "pool_shared.hpp"
#include "pools/image/open.hpp"

namespace blockmig::cli {

namespace {

struct InfoArgs {
    std::string image;
    std::string format;
    std::optional<std::string> pools_file;
};

Result<void> run_info(const InfoArgs& args, const GlobalOptions& globals) {
    auto config = pools::load_pools_config(args.pools_file);
    if (!config) return fail(config.error());
    std::optional<pools::ImageFormat> format;
    if (!args.format.empty()) {
        auto f = pools::parse_image_format(args.format);
        if (!f) return fail(f.error());
        format = *f;
    }
    auto ref = pools::resolve_volume(args.image, *config);
    if (!ref) return fail(ref.error());
    auto reader = pools::image::open_image(*ref->pool, ref->name, format);
    if (!reader) return fail(reader.error());
    const auto& info = (*reader)->info();
    const bool text = globals.output == OutputFormat::text;
    nlohmann::json record = {{"image", ref->pool->url_of(ref->name)},
                             {"format", pools::to_string(info.format)},
                             {"subformat", info.subformat}};
    record["virtual_size"] = text ? nlohmann::json(fmt::format("{} ({})", info.virtual_size,
                                                               human_size(info.virtual_size)))
                                  : nlohmann::json(info.virtual_size);
    record["allocated_bytes"] = text ? nlohmann::json(fmt::format("{} ({})", info.allocated_bytes,
                                                                  human_size(info.allocated_bytes)))
                                     : nlohmann::json(info.allocated_bytes);
    if (!info.adapter_type.empty() || !text) record["adapter_type"] = info.adapter_type;
    if (!info.chain.empty() || !text) record["chain"] = info.chain;
    if (!info.features.empty() || !text) record["features"] = info.features;
    if (text) {
        for (const char* key : {"chain", "features"})
            if (record.contains(key)) {
                std::string joined;
                for (const auto& v : record[key])
                    joined += (joined.empty() ? "" : ", ") + v.get<std::string>();
                record[key] = joined;
            }
    }
    print_record(globals, record);
    return {};
}

}  // namespace

void add_info_command(CLI::App& app, Dispatch& dispatch) {
    auto args = std::make_shared<InfoArgs>();
    auto* cmd =
        app.add_subcommand("info", "show a disk image's format, sizes, backing chain and features");
    cmd->add_option("-f", args->format, "format (probed when not given)");
    add_pools_option(*cmd, args->pools_file);
    cmd->add_option("IMAGE", args->image, "file, nfs://..., iscsi://... or pool:volume")
        ->required();
    cmd->callback([args, &dispatch] {
        dispatch.action = [args, &dispatch] { return run_info(*args, dispatch.globals); };
    });
}

}  // namespace blockmig::cli
