// Sequential throughput through each pool, next to a reference tool run in
// the same process on the same storage, printed as ratios (pool / reference).
//
//   pools_bench [--size MiB] [--dir DIR] [--nfs nfs://host/export] [--iscsi
//   iscsi://host:port/iqn/lun]
//
// References: `dd` on a local file (dir), `nfs-cp` (nfs), `iscsi-dd` (iscsi,
// if installed; libiscsi-utils). Not run by ctest: it needs real servers and
// a quiet machine. Writes `bench-<pid>.raw` into the pools (deleted after);
// on iSCSI it overwrites the given LUN.
#include <fmt/core.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <vector>

#include "pools/address.hpp"
#include "pools/pools.hpp"

using namespace blockmig;
using namespace blockmig::pools;
using Clock = std::chrono::steady_clock;

namespace {

constexpr std::uint64_t k_chunk = 1 << 20;

double seconds_since(Clock::time_point start) {
    return std::chrono::duration<double>(Clock::now() - start).count();
}

double run_shell(const std::string& command) {
    auto start = Clock::now();
    if (std::system(command.c_str()) != 0) return -1;
    return seconds_since(start);
}

struct Rates {
    double write = -1, read = -1;  // MiB/s
};

Rates through_pool(Volume& volume, std::uint64_t mib) {
    std::vector<std::byte> buf(k_chunk, std::byte{0x5a});
    Rates r;
    auto start = Clock::now();
    for (std::uint64_t i = 0; i < mib; ++i) {
        if (!volume.pwrite(buf, i * k_chunk)) return r;
    }
    if (!volume.flush()) return r;
    r.write = double(mib) / seconds_since(start);
    start = Clock::now();
    for (std::uint64_t i = 0; i < mib; ++i) {
        if (!read_full(volume, buf, i * k_chunk)) return r;
    }
    r.read = double(mib) / seconds_since(start);
    return r;
}

void report(const std::string& pool, Rates ours, Rates ref, const std::string& tool) {
    auto ratio = [](double a, double b) {
        return a > 0 && b > 0 ? fmt::format("{:.2f}", a / b) : std::string("n/a");
    };
    fmt::print("{:<6} write {:8.1f} MiB/s  {:<9} {:8.1f} MiB/s  ratio {}\n", pool, ours.write, tool,
               ref.write, ratio(ours.write, ref.write));
    fmt::print("{:<6} read  {:8.1f} MiB/s  {:<9} {:8.1f} MiB/s  ratio {}\n", pool, ours.read, tool,
               ref.read, ratio(ours.read, ref.read));
}

}  // namespace

int main(int argc, char** argv) {
    std::uint64_t mib = 256;
    std::string dir, nfs, iscsi;
    for (int i = 1; i + 1 < argc; i += 2) {
        std::string key = argv[i];
        if (key == "--size")
            mib = std::stoull(argv[i + 1]);
        else if (key == "--dir")
            dir = argv[i + 1];
        else if (key == "--nfs")
            nfs = argv[i + 1];
        else if (key == "--iscsi")
            iscsi = argv[i + 1];
    }
    if (dir.empty() && nfs.empty() && iscsi.empty()) {
        fmt::print(stderr,
                   "usage: pools_bench [--size MiB] [--dir DIR] [--nfs URL] [--iscsi LUN-URL]\n");
        return 2;
    }
    const std::string name = fmt::format("bench-{}.raw", getpid());
    const std::string tmp = fmt::format("/var/tmp/pools-bench-{}.raw", getpid());
    run_shell(fmt::format("dd if=/dev/zero of={} bs=1M count={} status=none", tmp, mib));

    auto bench_file_pool = [&](const std::string& spec,
                               const std::string& label) -> std::optional<Rates> {
        auto pool = open_pool(spec, {});
        if (!pool) return fmt::print(stderr, "{}\n", pool.error().message), std::nullopt;
        if (auto c = (*pool)->create(name, mib * k_chunk, ImageFormat::raw); !c) {
            return fmt::print(stderr, "{}\n", c.error().message), std::nullopt;
        }
        auto volume = (*pool)->open(name, true);
        std::optional<Rates> out;
        if (volume) out = through_pool(**volume, mib);
        volume = nullptr;
        (void)(*pool)->remove(name);
        (void)label;
        return out;
    };

    if (!dir.empty()) {
        if (auto ours = bench_file_pool(dir, "dir")) {
            const std::string file = dir + "/ref-" + name;
            Rates ref;
            double w = run_shell(
                fmt::format("dd if={} of={} bs=1M conv=fdatasync status=none", tmp, file));
            double r = run_shell(fmt::format("dd if={} of=/dev/null bs=1M status=none", file));
            ref.write = w > 0 ? double(mib) / w : -1;
            ref.read = r > 0 ? double(mib) / r : -1;
            unlink(file.c_str());
            report("dir", *ours, ref, "dd");
        }
    }
    if (!nfs.empty()) {
        if (auto ours = bench_file_pool(nfs, "nfs")) {
            const std::string url = nfs + "/ref-" + name;
            Rates ref;
            double w = run_shell(fmt::format("nfs-cp {} {} >/dev/null", tmp, url));
            double r = run_shell(fmt::format("nfs-cp {} /dev/null >/dev/null", url));
            ref.write = w > 0 ? double(mib) / w : -1;
            ref.read = r > 0 ? double(mib) / r : -1;
            if (auto ref_vol = resolve_volume(url, {}); ref_vol)
                (void)ref_vol->pool->remove(ref_vol->name);
            report("nfs", *ours, ref, "nfs-cp");
        }
    }
    if (!iscsi.empty()) {
        auto ref_vol = resolve_volume(iscsi, {});
        if (!ref_vol) {
            fmt::print(stderr, "{}\n", ref_vol.error().message);
        } else if (auto volume = ref_vol->pool->open(ref_vol->name, true); volume) {
            Rates ours = through_pool(**volume, mib);
            Rates ref;
            if (std::system("command -v iscsi-dd >/dev/null") == 0) {
                double r =
                    run_shell(fmt::format("iscsi-dd -s {} -d /dev/null >/dev/null 2>&1", iscsi));
                ref.read = r > 0 ? double(mib) / r : -1;
            }
            report("iscsi", ours, ref, "iscsi-dd");
            (void)(*volume)->discard(0, mib * k_chunk);
        }
    }
    unlink(tmp.c_str());
    return 0;
}
