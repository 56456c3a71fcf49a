// `blockmig compare`: are two images' contents equal? Exit 0 if so, 1 if
// they differ (as `qemu-img compare`), with the first differing offset.
#include <signal.h>

#include <atomic>

#include "blockmig/convert.hpp"
#include "commands.hpp"
#include "pool_shared.hpp"

namespace blockmig::cli {

namespace {

struct CompareArgs {
    std::string a, b;
    std::string format_a, format_b;
    std::optional<std::string> pools_file;
};

Result<std::optional<pools::ImageFormat>> format_of(const std::string& text) {
    if (text.empty()) return std::optional<pools::ImageFormat>{};
    auto f = pools::parse_image_format(text);
    if (!f) return fail(f.error());
    return std::optional<pools::ImageFormat>{*f};
}

Result<void> run_compare(const CompareArgs& args, Dispatch& dispatch) {
    auto config = pools::load_pools_config(args.pools_file);
    if (!config) return fail(config.error());
    auto fa = format_of(args.format_a);
    if (!fa) return fail(fa.error());
    auto fb = format_of(args.format_b);
    if (!fb) return fail(fb.error());
    static std::atomic<bool> never{false};
    auto report = compare_images(args.a, *fa, args.b, *fb, *config, never);
    if (!report) return fail(report.error());
    if (dispatch.globals.output == OutputFormat::json) {
        nlohmann::json j = {{"identical", report->identical},
                            {"size_a", report->size_a},
                            {"size_b", report->size_b},
                            {"format_a", report->format_a},
                            {"format_b", report->format_b}};
        j["first_difference"] = report->first_difference ? nlohmann::json(*report->first_difference)
                                                         : nlohmann::json(nullptr);
        fmt::print("{}\n", j.dump());
    } else {
        if (report->size_a != report->size_b) fmt::print("Warning: image size mismatch!\n");
        if (report->identical)
            fmt::print("Images are identical.\n");
        else
            fmt::print("Content mismatch at offset {}!\n", *report->first_difference);
    }
    if (!report->identical) dispatch.exit_code = 1;
    return {};
}

}  // namespace

void add_compare_command(CLI::App& app, Dispatch& dispatch) {
    auto args = std::make_shared<CompareArgs>();
    auto* cmd = app.add_subcommand(
        "compare", "compare the contents of two disk images (exit 0 same, 1 different)");
    cmd->add_option("-f", args->format_a, "format of the first image (probed when not given)");
    cmd->add_option("-F", args->format_b, "format of the second image (probed when not given)");
    add_pools_option(*cmd, args->pools_file);
    cmd->add_option("A", args->a, "file, nfs://..., iscsi://... or pool:volume")->required();
    cmd->add_option("B", args->b, "file, nfs://..., iscsi://... or pool:volume")->required();
    cmd->callback([args, &dispatch] {
        dispatch.action = [args, &dispatch] { return run_compare(*args, dispatch); };
    });
}

}  // namespace blockmig::cli
