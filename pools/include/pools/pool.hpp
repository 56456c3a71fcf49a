// Storage pools: where disks live, modelled on leveldb's Env.
//
// A Pool holds named volumes (files in a directory or on an NFS export, LUNs
// of an iSCSI target, buffers in memory). Callers list, stat, create, remove
// and resize volumes, open one for block I/O, and ask how QEMU should open it
// (`describe_for_qemu`, the node chain for `blockdev-add`). Implementations
// are reached only through the factories in pools/pools.hpp; no libnfs,
// libiscsi or socket type appears here.
//
// Thread safety: a Pool and the Volumes it opened may be used from several
// threads; each backend serialises calls on its connection internally.
// A Volume must not outlive the Pool that opened it.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "qmp/error.hpp"

namespace blockmig::pools {

enum class ImageFormat { raw, qcow2, vmdk, unknown };

// "raw", "qcow2", "vmdk", "unknown".
std::string_view to_string(ImageFormat format);
// Parses "raw" / "qcow2" / "vmdk"; invalid_argument otherwise.
Result<ImageFormat> parse_image_format(std::string_view text);

// Options of the network pools (NFS, iSCSI).
struct PoolOptions {
    // Deadline of every exchange with the server: connecting and logging in
    // or mounting, and each RPC / SCSI command a call makes. A call against
    // a dead or frozen server fails within about this long: `timeout` when
    // the server stopped answering, io_error when it refused or dropped the
    // connection. Never waits forever.
    std::chrono::milliseconds timeout = std::chrono::seconds(15);
    // Pools that choose the volume themselves (an iSCSI create with an empty
    // name picks an unused LUN) ask this before taking a candidate, passing
    // its url_of(); false skips it (already chosen by this run, locked by
    // another process, used by the guest). A raw LUN still reads as unused
    // after create, so without a claim two creates can return the same LUN.
    // A named create of a LUN the claim refuses fails with already_exists.
    // Claims are the caller's: the pool never releases one, also not when
    // the create fails afterwards. Called on the thread that calls create().
    std::function<bool(const std::string& volume_url)> claim;
};

struct VolumeInfo {
    std::string name;
    std::uint64_t virtual_size = 0;     // what a guest sees (qcow2: from its header)
    std::uint64_t allocated_bytes = 0;  // space the volume occupies in the pool
    ImageFormat format = ImageFormat::unknown;
};

struct Capacity {
    std::uint64_t total = 0;
    std::uint64_t free = 0;
};

// One run of a block-status answer. `data == false` means the range reads as
// zeroes and holds no storage (a hole, an unmapped LBA range).
struct Extent {
    std::uint64_t offset = 0;
    std::uint64_t length = 0;
    bool data = true;
};

// An open volume. Offsets and lengths are bytes; backends with a block size
// (iSCSI) require multiples of it and answer invalid_argument otherwise
// (see block_size()).
class Volume {
  public:
    virtual ~Volume() = default;

    // Current size in bytes (file size, LUN size).
    virtual std::uint64_t size() const = 0;
    // Alignment required for I/O offsets and lengths (1 for files).
    virtual std::uint32_t block_size() const { return 1; }

    // Reads up to buf.size() bytes at offset. Returns the count read, which is
    // short only at the end of the volume (or through a fault-injection pool).
    virtual Result<std::size_t> pread(std::span<std::byte> buf, std::uint64_t offset) = 0;
    // Writes all of buf at offset or fails. File-backed volumes grow when
    // writing past the end; fixed-size ones (LUNs) fail with invalid_argument.
    virtual Result<void> pwrite(std::span<const std::byte> buf, std::uint64_t offset) = 0;
    // Makes the range read as zeroes, deallocating it where the backend can.
    virtual Result<void> write_zeroes(std::uint64_t offset, std::uint64_t length) = 0;
    // Hints that the range is unused: deallocates it where the backend can
    // (afterwards it reads as zeroes on files and LBPRZ LUNs); unsupported if
    // the backend has no discard at all.
    virtual Result<void> discard(std::uint64_t offset, std::uint64_t length) = 0;
    // Makes every completed write durable.
    virtual Result<void> flush() = 0;
    // Which parts of [offset, offset+length) hold data and which are holes.
    // The extents are sorted, contiguous and cover the range (clipped to the
    // volume size). A backend that cannot tell answers one data extent.
    virtual Result<std::vector<Extent>> block_status(std::uint64_t offset,
                                                     std::uint64_t length) = 0;
};

// Reads exactly buf.size() bytes (looping over short reads); io_error if the
// volume ends first.
Result<void> read_full(Volume& volume, std::span<std::byte> buf, std::uint64_t offset);

// How the node chain for `blockdev-add` should be set up.
struct QemuNodeOptions {
    // Node names are `<prefix>-proto` and `<prefix>-fmt`.
    std::string node_prefix = "bm0";
    bool read_only = false;
    // cache.direct: bypass the host page cache (O_DIRECT on files).
    bool cache_direct = true;
    // cache.no-flush: ignore guest flushes (unsafe; for scratch copies only).
    bool cache_no_flush = false;
    // discard=unmap and detect-zeroes=unmap, so a mirror keeps the target thin.
    bool unmap = true;
    // iSCSI initiator name QEMU logs in with.
    std::string initiator_name = "iqn.2024-01.org.blockmig:qemu";
};

// The `blockdev-add` arguments for one volume. Add `secrets` (object-add
// arguments) first, then `protocol`, then `format`; the guest device or block
// job refers to `format_node`.
struct BlockdevChain {
    std::vector<nlohmann::json> secrets;  // object-add arguments, e.g. CHAP passwords
    nlohmann::json protocol;              // driver file / nfs / iscsi
    nlohmann::json format;                // driver raw / qcow2, file = protocol_node
    std::string protocol_node;
    std::string format_node;  // the top node
};

class Pool {
  public:
    virtual ~Pool() = default;

    // "dir", "nfs", "iscsi", "mem".
    virtual std::string_view type() const = 0;
    // The pool's own URL or path (nfs://host/export/dir, iscsi://host:port/iqn, /srv/vms).
    virtual std::string url() const = 0;

    // Every volume, sorted by name.
    virtual Result<std::vector<VolumeInfo>> list_volumes() = 0;
    // not_found if the volume does not exist.
    virtual Result<VolumeInfo> stat(std::string_view name) = 0;
    // Creates a volume of `size` bytes: raw (sparse) or an empty qcow2 whose
    // virtual size is `size`. already_exists if the name is taken (nothing is
    // touched), no_space if the pool cannot hold it, invalid_argument for a
    // bad name or format. Returns the new volume's info (an iSCSI pool may pick
    // the volume, see make_iscsi_pool). Nothing is left behind on failure.
    virtual Result<VolumeInfo> create(std::string_view name, std::uint64_t size,
                                      ImageFormat format) = 0;
    // Deletes the volume and its data. not_found if it does not exist.
    virtual Result<void> remove(std::string_view name) = 0;
    // Renames volume `from` to `to`, never replacing a volume: already_exists
    // if `to` is taken (both volumes stay as they were), not_found if `from`
    // does not exist, invalid_argument for a bad name, unsupported where
    // volumes have fixed names (iSCSI LUNs). Atomic on local directories; on
    // NFS the check for `to` and the rename are two calls.
    virtual Result<void> rename(std::string_view from, std::string_view to) = 0;
    // Changes a raw volume's size; unsupported where the backend cannot.
    virtual Result<void> resize(std::string_view name, std::uint64_t size) = 0;
    virtual Result<Capacity> capacity() = 0;
    // Opens a volume for block I/O. not_found if it does not exist.
    virtual Result<std::unique_ptr<Volume>> open(std::string_view name, bool writable) = 0;
    // The node chain QEMU needs to open the volume (its format is probed).
    // unsupported where QEMU cannot reach it (in-memory volumes, NFSv4).
    virtual Result<BlockdevChain> describe_for_qemu(std::string_view name,
                                                    const QemuNodeOptions& options) = 0;
    // A URL or path for the volume that users and qemu-img understand.
    virtual std::string url_of(std::string_view name) const = 0;
};

// Forwards every call to another pool; subclass it and override what you
// want to change (leveldb's EnvWrapper).
class PoolWrapper : public Pool {
  public:
    explicit PoolWrapper(std::unique_ptr<Pool> target) : m_target(std::move(target)) {}
    Pool& target() { return *m_target; }
    const Pool& target() const { return *m_target; }

    std::string_view type() const override { return m_target->type(); }
    std::string url() const override { return m_target->url(); }
    Result<std::vector<VolumeInfo>> list_volumes() override { return m_target->list_volumes(); }
    Result<VolumeInfo> stat(std::string_view name) override { return m_target->stat(name); }
    Result<VolumeInfo> create(std::string_view name, std::uint64_t size,
                              ImageFormat format) override {
        return m_target->create(name, size, format);
    }
    Result<void> remove(std::string_view name) override { return m_target->remove(name); }
    Result<void> rename(std::string_view from, std::string_view to) override {
        return m_target->rename(from, to);
    }
    Result<void> resize(std::string_view name, std::uint64_t size) override {
        return m_target->resize(name, size);
    }
    Result<Capacity> capacity() override { return m_target->capacity(); }
    Result<std::unique_ptr<Volume>> open(std::string_view name, bool writable) override {
        return m_target->open(name, writable);
    }
    Result<BlockdevChain> describe_for_qemu(std::string_view name,
                                            const QemuNodeOptions& options) override {
        return m_target->describe_for_qemu(name, options);
    }
    std::string url_of(std::string_view name) const override { return m_target->url_of(name); }

  private:
    std::unique_ptr<Pool> m_target;
};

}  // namespace blockmig::pools
