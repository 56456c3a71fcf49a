// An independent SHA-256 (OpenSSL) for the offline tests to check
// blockmig's digests against: never blockmig's own convert/digest code.
#pragma once

#include <fmt/core.h>
#include <openssl/evp.h>

#include <cstddef>
#include <span>
#include <string>
#include <string_view>

namespace sha256_test {

// Lower-case hex, as sha256sum prints it.
inline std::string sha256(const void* data, std::size_t size) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_Digest(data, size, md, &n, EVP_sha256(), nullptr);
    std::string hex;
    for (unsigned int i = 0; i < n; ++i) hex += fmt::format("{:02x}", md[i]);
    return hex;
}
inline std::string sha256(std::string_view data) { return sha256(data.data(), data.size()); }
inline std::string sha256(std::span<const std::byte> data) {
    return sha256(data.data(), data.size());
}

}  // namespace sha256_test
