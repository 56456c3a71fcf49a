// `blockmig convert` and `blockmig compare`: disk images between formats and
// storage (files, NFS, iSCSI LUNs, pool:volume), natively.
//
// The copy loop follows nbdcopy (libnbd copy/): the source's allocation map
// is walked in mid-size requests (256 KiB) with several in flight on reader
// threads, all-zero 4 KiB blocks are found on the way and written as zeroes
// (holes, unmapped LBAs), and the writer (which compresses on every core)
// runs while the next requests are read. Memory is bounded by the number of
// requests in flight and the writers' fixed batches, never by the image.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>

#include "blockmig/progress.hpp"
#include "pools/address.hpp"
#include "pools/image/qcow2.hpp"
#include "pools/image/vmdk.hpp"

namespace blockmig {

struct ConvertOptions {
    std::string source;  // VOLUME spec: file path, nfs://, iscsi://, pool:volume
    std::string target;
    std::optional<pools::ImageFormat> source_format;  // probe when empty
    pools::ImageFormat target_format = pools::ImageFormat::qcow2;
    pools::image::Qcow2WriteOptions qcow2;
    pools::image::VmdkWriteOptions vmdk;
    unsigned in_flight = 16;  // requests in flight (-m)
    std::size_t request_size = 256 << 10;
    pools::PoolsConfig pools;
};

struct ConvertReport {
    std::string source;  // URLs
    std::string target;
    std::string source_format;
    std::uint64_t virtual_size = 0;
    std::uint64_t data_bytes = 0;  // allocated bytes read from the source
    std::uint64_t zero_bytes = 0;  // bytes written as zeroes (holes)
    std::uint64_t target_allocated = 0;
    double seconds = 0;
    bool onto_lun = false;  // written onto an unused LUN (its old contents are gone)
};

// Converts source to a new target. The target must not exist (files, NFS),
// or must be an unused LUN of sufficient size (iSCSI pools refuse a LUN that
// holds data). On any failure, or when `cancel` becomes true (SIGINT), the
// target is removed again (a LUN is zeroed back to unused) and the error is
// returned: no partial target is left behind. Progress goes to `progress`
// (phase "convert"); the call blocks until done.
Result<ConvertReport> run_convert(const ConvertOptions& options, ProgressSink& progress,
                                  const std::atomic<bool>& cancel);

struct CompareReport {
    bool identical = true;
    std::optional<std::uint64_t> first_difference;  // byte offset
    std::uint64_t size_a = 0;
    std::uint64_t size_b = 0;
    std::string format_a, format_b;
};

// Compares the guest-visible contents of two images (any formats),
// sparse-aware: ranges both maps call zero are not read. Like `qemu-img
// compare` without -s, a size difference is not a difference as long as
// the extra part of the larger image reads as zeroes.
Result<CompareReport> compare_images(const std::string& a,
                                     std::optional<pools::ImageFormat> format_a,
                                     const std::string& b,
                                     std::optional<pools::ImageFormat> format_b,
                                     const pools::PoolsConfig& pools,
                                     const std::atomic<bool>& cancel);

}  // namespace blockmig
