#include "compress.hpp"

#include <libdeflate.h>
#include <zstd.h>

#include <memory>

namespace blockmig::pools::image::detail {

namespace {

struct DeflateCompressor {
    int level = -1;
    libdeflate_compressor* c = nullptr;
    ~DeflateCompressor() {
        if (c) libdeflate_free_compressor(c);
    }
    libdeflate_compressor* get(int want) {
        if (c && level == want) return c;
        if (c) libdeflate_free_compressor(c);
        c = libdeflate_alloc_compressor(want);
        level = want;
        return c;
    }
};

struct DeflateDecompressor {
    libdeflate_decompressor* d = libdeflate_alloc_decompressor();
    ~DeflateDecompressor() { libdeflate_free_decompressor(d); }
};

struct ZstdContexts {
    ZSTD_CCtx* c = ZSTD_createCCtx();
    ZSTD_DCtx* d = ZSTD_createDCtx();
    ~ZstdContexts() {
        ZSTD_freeCCtx(c);
        ZSTD_freeDCtx(d);
    }
};

thread_local DeflateCompressor t_deflate;
thread_local DeflateDecompressor t_inflate;
thread_local ZstdContexts t_zstd;

}  // namespace

std::optional<std::size_t> compress(Codec codec, int level, std::span<const std::byte> in,
                                    std::span<std::byte> out) {
    if (codec == Codec::deflate) {
        auto* c = t_deflate.get(level);
        if (!c) return std::nullopt;
        std::size_t n =
            libdeflate_deflate_compress(c, in.data(), in.size(), out.data(), out.size());
        if (n == 0) return std::nullopt;
        return n;
    }
    ZSTD_CCtx_reset(t_zstd.c, ZSTD_reset_session_and_parameters);
    ZSTD_CCtx_setParameter(t_zstd.c, ZSTD_c_compressionLevel, level);
    std::size_t n = ZSTD_compress2(t_zstd.c, out.data(), out.size(), in.data(), in.size());
    if (ZSTD_isError(n)) return std::nullopt;
    return n;
}

bool decompress(Codec codec, std::span<const std::byte> in, std::span<std::byte> out) {
    if (codec == Codec::deflate) {
        std::size_t in_used = 0, out_made = 0;
        auto r = libdeflate_deflate_decompress_ex(t_inflate.d, in.data(), in.size(), out.data(),
                                                  out.size(), &in_used, &out_made);
        return r == LIBDEFLATE_SUCCESS && out_made == out.size();
    }
    // A stream decode stops at the end of the frame and ignores the padding after it.
    ZSTD_DCtx_reset(t_zstd.d, ZSTD_reset_session_only);
    ZSTD_inBuffer input{in.data(), in.size(), 0};
    ZSTD_outBuffer output{out.data(), out.size(), 0};
    while (output.pos < output.size) {
        const std::size_t before_in = input.pos, before_out = output.pos;
        std::size_t r = ZSTD_decompressStream(t_zstd.d, &output, &input);
        if (ZSTD_isError(r)) return false;
        if (r == 0) break;  // frame complete
        if (input.pos == before_in && output.pos == before_out) return false;
    }
    return output.pos == output.size;
}

}  // namespace blockmig::pools::image::detail
