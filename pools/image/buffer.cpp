// PageBuffer: anonymous mappings aligned for transparent huge pages.
#include "pools/image/buffer.hpp"

#include <sys/mman.h>

#include <cstdint>
#include <new>
#include <utility>

namespace blockmig::pools::image {

namespace {

constexpr std::size_t k_huge = 2u << 20;
// Below this a huge page would mostly be waste (and RSS): plain pages.
constexpr std::size_t k_huge_min = 1u << 20;

}  // namespace

PageBuffer::PageBuffer(std::size_t size) : m_size(size) {
    if (size == 0) return;
    const bool huge = size >= k_huge_min;
    const std::size_t rounded = huge ? (size + k_huge - 1) / k_huge * k_huge : size;
    // Over-map by one huge page so the start can be aligned to one.
    m_map_size = huge ? rounded + k_huge : rounded;
    m_map = ::mmap(nullptr, m_map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m_map == MAP_FAILED) {
        m_map = nullptr;
        throw std::bad_alloc();
    }
    auto start = reinterpret_cast<std::uintptr_t>(m_map);
    if (huge) {
        start = (start + k_huge - 1) / k_huge * k_huge;
        // Only a hint: without THP the buffer simply uses small pages.
        (void)::madvise(reinterpret_cast<void*>(start), rounded, MADV_HUGEPAGE);
    }
    m_data = reinterpret_cast<std::byte*>(start);
}

PageBuffer::~PageBuffer() { release(); }

PageBuffer::PageBuffer(PageBuffer&& other) noexcept
    : m_map(std::exchange(other.m_map, nullptr)),
      m_map_size(std::exchange(other.m_map_size, 0)),
      m_data(std::exchange(other.m_data, nullptr)),
      m_size(std::exchange(other.m_size, 0)) {}

PageBuffer& PageBuffer::operator=(PageBuffer&& other) noexcept {
    if (this != &other) {
        release();
        m_map = std::exchange(other.m_map, nullptr);
        m_map_size = std::exchange(other.m_map_size, 0);
        m_data = std::exchange(other.m_data, nullptr);
        m_size = std::exchange(other.m_size, 0);
    }
    return *this;
}

void PageBuffer::release() {
    if (m_map) ::munmap(m_map, m_map_size);
    m_map = nullptr;
    m_data = nullptr;
    m_size = m_map_size = 0;
}

}  // namespace blockmig::pools::image
