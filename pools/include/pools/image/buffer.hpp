// Large I/O buffers for the copy pipeline and the image writers.
//
// Why not std::vector: a vector zero-fills what it allocates, and every
// first touch of a 4 KiB page is a page fault. On VMs whose host takes freed
// memory back (balloon free-page reporting) a fault costs tens of
// microseconds, so the 20 MiB a conversion buffers cost more than copying a
// small image. These buffers come straight from mmap (zero pages, no memset),
// aligned to 2 MiB and marked for transparent huge pages, so the kernel
// backs them with a few huge pages instead of thousands of small ones
// (measured here: 16 MiB first touch 145 ms in 4 KiB pages, 1.4 ms in huge
// pages). Page alignment also suits O_DIRECT-style backends.
#pragma once

#include <cstddef>
#include <span>

namespace blockmig::pools::image {

class PageBuffer {
  public:
    PageBuffer() = default;
    // `size` bytes reading as zeroes; std::bad_alloc if the mapping fails.
    explicit PageBuffer(std::size_t size);
    ~PageBuffer();
    PageBuffer(PageBuffer&& other) noexcept;
    PageBuffer& operator=(PageBuffer&& other) noexcept;
    PageBuffer(const PageBuffer&) = delete;
    PageBuffer& operator=(const PageBuffer&) = delete;

    std::byte* data() const { return m_data; }
    std::size_t size() const { return m_size; }
    std::span<std::byte> span() const { return {m_data, m_size}; }

  private:
    void release();

    void* m_map = nullptr;  // the whole mapping (m_data rounded up inside it)
    std::size_t m_map_size = 0;
    std::byte* m_data = nullptr;
    std::size_t m_size = 0;
};

}  // namespace blockmig::pools::image
