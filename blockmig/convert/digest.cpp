#include "digest.hpp"

#include <fmt/format.h>
#include <openssl/evp.h>

#include <memory>
#include <vector>

namespace blockmig::convert {

namespace {

using pools::image::RangeKind;

constexpr std::uint64_t k_chunk = 1 << 20;

struct CtxFree {
    void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};

}  // namespace

Result<std::string> image_digest(pools::image::ImageReader& image, std::uint64_t size,
                                 const std::atomic<bool>& cancel, const DigestProgress& progress) {
    std::unique_ptr<EVP_MD_CTX, CtxFree> ctx(EVP_MD_CTX_new());
    if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1)
        return fail(ErrorCode::io_error, "digest: cannot set up SHA-256 (OpenSSL)");
    const std::vector<std::byte> zeroes(k_chunk);
    std::vector<std::byte> buf(k_chunk);
    for (std::uint64_t pos = 0; pos < size; pos += k_chunk) {
        if (cancel.load()) return fail(ErrorCode::cancelled, "digest: interrupted");
        const std::uint64_t len = std::min(k_chunk, size - pos);
        auto map = image.map(pos, len);
        if (!map) return fail(map.error());
        for (const auto& r : *map) {
            const std::byte* data = zeroes.data();
            if (r.kind == RangeKind::data) {
                auto read = image.read(std::span(buf).first(r.length), r.offset);
                if (!read) return fail(read.error());
                data = buf.data();
            }
            EVP_DigestUpdate(ctx.get(), data, r.length);
        }
        // A map that stops short of `len` (past the image's end) reads as zeroes.
        std::uint64_t mapped = 0;
        for (const auto& r : *map) mapped += r.length;
        if (mapped < len) EVP_DigestUpdate(ctx.get(), zeroes.data(), len - mapped);
        if (progress) progress(pos + len);
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_DigestFinal_ex(ctx.get(), md, &n);
    std::string hex;
    for (unsigned int i = 0; i < n; ++i) hex += fmt::format("{:02x}", md[i]);
    return hex;
}

}  // namespace blockmig::convert
