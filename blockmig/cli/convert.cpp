// `blockmig convert`: images between raw, qcow2 and VMDK, shaped like
// `qemu-img convert` so habits carry over.
#include "blockmig/convert.hpp"

#include <fmt/core.h>
#include <signal.h>

#include <atomic>
#include <charconv>

#include "commands.hpp"
#include "pool_shared.hpp"

namespace blockmig::cli {

namespace {

std::atomic<bool> g_interrupted{false};

extern "C" void on_convert_interrupt(int) { g_interrupted.store(true); }

struct ConvertArgs {
    std::string source, target;
    std::string source_format, target_format;
    std::vector<std::string> options;  // -o KEY=VAL[,KEY=VAL...]
    bool compress = false;
    bool progress = false;
    unsigned in_flight = 16;
    std::optional<std::string> pools_file;
};

// Without -p a text run still says what it did to a LUN, but shows no bar.
class EventsOnly : public ProgressSink {
  public:
    explicit EventsOnly(std::unique_ptr<ProgressSink> inner) : m_inner(std::move(inner)) {}
    void progress(const ProgressSample&) override {}
    void event(const std::string& name, const nlohmann::json& fields,
               const std::string& message) override {
        m_inner->event(name, fields, message);
    }

  private:
    std::unique_ptr<ProgressSink> m_inner;
};

[[noreturn]] void usage(const std::string& message) { throw CLI::ValidationError("-o", message); }

int parse_int(const std::string& key, const std::string& value) {
    int out = 0;
    auto [p, ec] = std::from_chars(value.data(), value.data() + value.size(), out);
    if (ec != std::errc{} || p != value.data() + value.size())
        usage(fmt::format("{}={}: not a number", key, value));
    return out;
}

// Applies one -o KEY=VAL to the options of the target format; a key that
// does not belong to it is a usage error, never silently ignored.
void apply_option(ConvertOptions& o, const std::string& key, const std::string& value) {
    const bool qcow2 = o.target_format == pools::ImageFormat::qcow2;
    const bool vmdk = o.target_format == pools::ImageFormat::vmdk;
    auto need = [&](bool ok, const char* format) {
        if (!ok) usage(fmt::format("-o {} applies to -O {} only", key, format));
    };
    if (key == "compression_type") {
        need(qcow2, "qcow2");
        if (value != "zlib" && value != "zstd") usage("compression_type must be zlib or zstd");
        o.qcow2.compression_type = value == "zstd" ? pools::image::Qcow2Compression::zstd
                                                   : pools::image::Qcow2Compression::zlib;
    } else if (key == "preallocation") {
        need(qcow2, "qcow2");
        if (value != "off" && value != "metadata") usage("preallocation must be off or metadata");
        o.qcow2.preallocation = value == "metadata" ? pools::image::Qcow2Preallocation::metadata
                                                    : pools::image::Qcow2Preallocation::off;
    } else if (key == "cluster_size") {
        need(qcow2, "qcow2");
        auto size = pools::parse_size(value);
        if (!size || *size > (2u << 20))
            usage(fmt::format("cluster_size={}: not a size up to 2M", value));
        o.qcow2.cluster_size = static_cast<std::uint32_t>(*size);
    } else if (key == "subformat") {
        need(vmdk, "vmdk");
        if (value != "streamOptimized" && value != "monolithicSparse")
            usage("subformat must be streamOptimized or monolithicSparse");
        o.vmdk.subformat = value;
    } else if (key == "adapter_type") {
        need(vmdk, "vmdk");
        o.vmdk.adapter_type = value;
    } else if (key == "hwversion") {
        need(vmdk, "vmdk");
        o.vmdk.hw_version = parse_int(key, value);
    } else {
        usage(fmt::format("unknown option -o {}", key));
    }
}

ConvertOptions to_options(const ConvertArgs& args) {
    ConvertOptions o;
    o.source = args.source;
    o.target = args.target;
    if (!args.source_format.empty()) {
        auto f = pools::parse_image_format(args.source_format);
        if (!f) throw CLI::ValidationError("-f", f.error().message);
        o.source_format = *f;
    }
    auto f = pools::parse_image_format(args.target_format);
    if (!f) throw CLI::ValidationError("-O", f.error().message);
    o.target_format = *f;
    for (const auto& group : args.options) {
        std::size_t pos = 0;
        while (pos <= group.size()) {
            const std::size_t comma = std::min(group.find(',', pos), group.size());
            const std::string item = group.substr(pos, comma - pos);
            pos = comma + 1;
            if (item.empty()) continue;
            const auto eq = item.find('=');
            if (eq == std::string::npos) usage(fmt::format("-o {}: expected KEY=VALUE", item));
            apply_option(o, item.substr(0, eq), item.substr(eq + 1));
        }
    }
    if (args.compress) {
        if (o.target_format != pools::ImageFormat::qcow2)
            usage("-c applies to -O qcow2 (streamOptimized VMDKs are always compressed)");
        o.qcow2.compress = true;
        if (o.qcow2.preallocation != pools::image::Qcow2Preallocation::off)
            usage("-c and preallocation exclude each other");
    }
    if (args.in_flight == 0 || args.in_flight > 256)
        throw CLI::ValidationError("-m", "must be 1..256");
    o.in_flight = args.in_flight;
    return o;
}

Result<void> run_convert_command(ConvertOptions options, const ConvertArgs& args,
                                 const GlobalOptions& globals) {
    auto config = pools::load_pools_config(args.pools_file);
    if (!config) return fail(config.error());
    options.pools = std::move(*config);
    const bool json = globals.output == OutputFormat::json;
    std::unique_ptr<ProgressSink> progress;
    if (json)
        progress = make_json_progress();
    else if (args.progress)
        progress = make_text_progress();
    else
        progress = std::make_unique<EventsOnly>(make_text_progress());
    // Ctrl-C removes the half-written target instead of leaving it behind.
    struct sigaction sa {};
    sa.sa_handler = on_convert_interrupt;
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
    auto report = run_convert(options, *progress, g_interrupted);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    if (!report) return fail(report.error());
    const nlohmann::json done = {{"event", "done"},
                                 {"source", report->source},
                                 {"source_format", report->source_format},
                                 {"target", report->target},
                                 {"target_format", pools::to_string(options.target_format)},
                                 {"virtual_size", report->virtual_size},
                                 {"data_bytes", report->data_bytes},
                                 {"zero_bytes", report->zero_bytes},
                                 {"target_allocated", report->target_allocated},
                                 {"seconds", report->seconds}};
    if (json) {
        fmt::print("{}\n", done.dump());
    } else if (args.progress) {
        fmt::print(stderr, "converted {} ({}) -> {} ({}): {} of data in {:.1f} s, {} allocated\n",
                   report->source, report->source_format, report->target,
                   pools::to_string(options.target_format), human_size(report->data_bytes),
                   report->seconds, human_size(report->target_allocated));
    }
    return {};
}

}  // namespace

void add_convert_command(CLI::App& app, Dispatch& dispatch) {
    auto args = std::make_shared<ConvertArgs>();
    auto* cmd = app.add_subcommand(
        "convert", "convert a disk image (raw, qcow2, vmdk) to another format or place");
    cmd->add_option("-f", args->source_format,
                    "source format (probed when not given; -f raw is taken as is)");
    cmd->add_option("-O", args->target_format, "target format: raw, qcow2 or vmdk")->required();
    cmd->add_option(
        "-o", args->options,
        "KEY=VAL[,...]: subformat=streamOptimized|monolithicSparse, adapter_type=, hwversion= "
        "(vmdk); compression_type=zlib|zstd, preallocation=off|metadata, cluster_size= (qcow2)");
    cmd->add_flag("-c", args->compress, "compress the qcow2 target");
    cmd->add_flag("-p", args->progress, "show progress");
    cmd->add_option("-m", args->in_flight, "requests in flight (default 16)");
    add_pools_option(*cmd, args->pools_file);
    cmd->add_option("SOURCE", args->source, "file, nfs://..., iscsi://... or pool:volume")
        ->required();
    cmd->add_option("TARGET", args->target, "a new file or volume, or an unused LUN")->required();
    cmd->callback([args, &dispatch] {
        // Option errors surface here, during parsing, as usage errors.
        ConvertOptions options = to_options(*args);
        dispatch.action = [args, options, &dispatch] {
            return run_convert_command(options, *args, dispatch.globals);
        };
    });
}

}  // namespace blockmig::cli
