/*
 * diskstamp: deterministic, self-checking block pattern writer + verifier.
 *
 * Guest side (inside the tiny VM, started by /init):
 *   diskstamp write /dev/vda [nblocks] [hb_ms]
 *     Loops forever: generation g = 1,2,3...; for every 4 KiB block b it writes
 *     a block whose header holds magic, b, g, a global sequence number and a
 *     64-bit FNV-1a checksum over the whole block; the payload is a PRNG stream
 *     seeded by (b, g).  Writes use O_DIRECT; after every CHUNK blocks it does
 *     fdatasync() and prints an "ACK" line: everything up to that seq is durable.
 *     A separate heartbeat thread prints "HB <seq> <guest-monotonic-ns>" every
 *     hb_ms milliseconds on stdout (the serial console).  Host tooling should
 *     timestamp the lines on arrival; guest CLOCK_MONOTONIC (kvmclock) does NOT
 *     advance while the VM is paused, so gaps are measured host-side.
 *
 * Host side:
 *   diskstamp verify IMAGE-or-DEVICE [nblocks] [min_ack_gen min_ack_blk]
 *     Reads every block, checks magic/block-number/checksum/payload (torn or
 *     corrupted writes), and reports the generation distribution.  If the last
 *     ACK (gen, blk) seen on the console is given, it also checks that no
 *     acknowledged write was lost: block b must have gen >= ack_gen for
 *     b <= ack_blk and gen >= ack_gen-1 for b > ack_blk.
 *     Also valid: a raw file, or /dev/nbdX, or use `qemu-img convert -O raw`.
 *   Exit status: 0 = OK, 1 = corruption/loss, 2 = usage / IO error.
 *
 *   diskstamp stamp IMAGE block gen
 *     Test helper: writes one valid block of the given generation.
 *
 *   diskstamp dirty MIB [period_ms]
 *     Guest side, for the migration policy tests: keeps MIB MiB of RAM
 *     dirty, rewriting one word of every 4 KiB page with a new non-zero
 *     value (never a zero page) every period_ms (default 10), forever.
 *
 * Console lines carry the device tag (dev=vda) so one guest can stamp
 * several disks, one writer process per disk.
 *
 * Build: gcc -O2 -static -pthread -o diskstamp diskstamp.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <linux/fs.h>

#define BS 4096
#define MAGIC 0x314B4C4247494D4CULL /* "LMIGBLK1" */
#define CHUNK 64                     /* blocks per fdatasync + ACK line */

struct hdr {
    uint64_t magic, block, gen, seq, csum; /* csum computed with csum=0 */
};

static uint64_t fnv64(const unsigned char *p, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 1099511628211ULL; }
    return h;
}

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static void fill(unsigned char *buf, uint64_t b, uint64_t g, uint64_t seq)
{
    struct hdr h = { MAGIC, b, g, seq, 0 };
    memcpy(buf, &h, sizeof h);
    uint64_t s = b * 0x100000001B3ULL ^ (g << 32) ^ 0xA5A5A5A5ULL;
    for (size_t off = sizeof h; off + 8 <= BS; off += 8) {
        uint64_t v = splitmix(&s);
        memcpy(buf + off, &v, 8);
    }
    h.csum = fnv64(buf, BS);
    memcpy(buf, &h, sizeof h);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

static volatile uint64_t g_gen, g_blk, g_seq;
static int hb_ms = 50;
static const char *g_tag = "vda";

static void *hb_thread(void *arg)
{
    (void)arg;
    uint64_t n = 0;
    for (;;) {
        struct timespec ts = { hb_ms / 1000, (hb_ms % 1000) * 1000000L };
        nanosleep(&ts, NULL);
        printf("HB dev=%s n=%" PRIu64 " t=%" PRIu64 " gen=%" PRIu64 " blk=%" PRIu64 "\n",
               g_tag, ++n, now_ns(), g_gen, g_blk);
        fflush(stdout);
    }
    return NULL;
}

static uint64_t dev_blocks(int fd)
{
    struct stat st;
    if (fstat(fd, &st) < 0) return 0;
    if (S_ISBLK(st.st_mode)) {
        uint64_t sz = 0;
        if (ioctl(fd, BLKGETSIZE64, &sz) < 0) return 0;
        return sz / BS;
    }
    return (uint64_t)st.st_size / BS;
}

static int do_write(const char *dev, uint64_t nblocks)
{
    const char *slash = strrchr(dev, '/');
    g_tag = slash ? slash + 1 : dev;
    int fd = open(dev, O_RDWR | O_DIRECT);
    if (fd < 0) { perror("open"); return 2; }
    uint64_t max = dev_blocks(fd);
    if (!nblocks || nblocks > max) nblocks = max;
    unsigned char *buf;
    if (posix_memalign((void **)&buf, BS, BS)) return 2;
    printf("START dev=%s path=%s nblocks=%" PRIu64 " t=%" PRIu64 "\n", g_tag, dev, nblocks, now_ns());
    fflush(stdout);
    pthread_t t;
    pthread_create(&t, NULL, hb_thread, NULL);
    uint64_t seq = 0;
    for (uint64_t g = 1;; g++) {
        uint64_t t0 = now_ns();
        for (uint64_t b = 0; b < nblocks; b++) {
            fill(buf, b, g, ++seq);
            if (pwrite(fd, buf, BS, (off_t)(b * BS)) != BS) {
                printf("ERR dev=%s write b=%" PRIu64 " errno=%d\n", g_tag, b, errno);
                fflush(stdout);
                sleep(1);
                b--; /* retry */
                continue;
            }
            g_gen = g; g_blk = b; g_seq = seq;
            if ((b + 1) % CHUNK == 0 || b + 1 == nblocks) {
                if (fdatasync(fd) < 0) {
                    printf("ERR dev=%s fdatasync errno=%d\n", g_tag, errno);
                } else {
                    printf("ACK dev=%s gen=%" PRIu64 " blk=%" PRIu64 " seq=%" PRIu64 " t=%" PRIu64 "\n",
                           g_tag, g, b, seq, now_ns());
                }
                fflush(stdout);
            }
        }
        printf("GEN dev=%s gen=%" PRIu64 " ms=%" PRIu64 "\n", g_tag, g, (now_ns() - t0) / 1000000);
        fflush(stdout);
    }
}

static int do_verify(const char *path, uint64_t nblocks, int have_ack,
                     uint64_t ack_gen, uint64_t ack_blk)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) { perror("open"); return 2; }
    uint64_t max = dev_blocks(fd);
    if (!nblocks || nblocks > max) nblocks = max;
    unsigned char buf[BS], ref[BS];
    uint64_t bad = 0, lost = 0, empty = 0, ok = 0, gmin = UINT64_MAX, gmax = 0;
    for (uint64_t b = 0; b < nblocks; b++) {
        if (pread(fd, buf, BS, (off_t)(b * BS)) != BS) { perror("pread"); return 2; }
        struct hdr h;
        memcpy(&h, buf, sizeof h);
        if (h.magic == 0 && h.block == 0 && h.gen == 0) {
            static const unsigned char z[BS];
            if (!memcmp(buf, z, BS)) {
                empty++;
                uint64_t need = !have_ack ? 0 : (b <= ack_blk ? ack_gen : ack_gen - 1);
                if (need >= 1) {
                    lost++;
                    if (lost <= 10) printf("LOST b=%" PRIu64 " (zero block) need>=%" PRIu64 "\n", b, need);
                }
                continue;
            }
        }
        fill(ref, h.block, h.gen, h.seq);
        if (h.magic != MAGIC || h.block != b || memcmp(buf, ref, BS)) {
            bad++;
            if (bad <= 10)
                printf("BAD b=%" PRIu64 " magic=%" PRIx64 " hdr.block=%" PRIu64 " gen=%" PRIu64 "\n",
                       b, h.magic, h.block, h.gen);
            continue;
        }
        ok++;
        if (h.gen < gmin) gmin = h.gen;
        if (h.gen > gmax) gmax = h.gen;
        if (have_ack) {
            uint64_t need = b <= ack_blk ? ack_gen : ack_gen - 1;
            if (h.gen < need) {
                lost++;
                if (lost <= 10)
                    printf("LOST b=%" PRIu64 " gen=%" PRIu64 " need>=%" PRIu64 "\n", b, h.gen, need);
            }
        }
    }
    printf("VERIFY blocks=%" PRIu64 " ok=%" PRIu64 " empty=%" PRIu64 " bad=%" PRIu64
           " lost=%" PRIu64 " gen_min=%" PRIu64 " gen_max=%" PRIu64 "\n",
           nblocks, ok, empty, bad, lost, ok ? gmin : 0, gmax);
    return (bad || lost) ? 1 : 0;
}

/* Host-side test helper: writes one well-formed block of generation `gen`,
 * e.g. an older generation than acknowledged, to prove the verifier reports
 * a rolled-back block as LOST. */
static int do_stamp(const char *path, uint64_t b, uint64_t g)
{
    int fd = open(path, O_RDWR);
    if (fd < 0) { perror("open"); return 2; }
    unsigned char buf[BS];
    fill(buf, b, g, 0);
    if (pwrite(fd, buf, BS, (off_t)(b * BS)) != BS || fsync(fd) < 0) { perror("pwrite"); return 2; }
    close(fd);
    return 0;
}

static int do_dirty(uint64_t mib, int period_ms)
{
    size_t pages = (size_t)(mib << 20) / 4096;
    volatile uint64_t *mem = malloc(pages * 4096);
    if (!mem || !pages) { fprintf(stderr, "dirty: cannot allocate %" PRIu64 " MiB\n", mib); return 2; }
    printf("DIRTY-UP mib=%" PRIu64 " period_ms=%d\n", mib, period_ms);
    fflush(stdout);
    for (uint64_t n = 1;; ++n) {
        for (size_t p = 0; p < pages; ++p) mem[p * 512] = n;
        usleep((useconds_t)period_ms * 1000);
    }
}

int main(int argc, char **argv)
{
    if (argc >= 3 && !strcmp(argv[1], "dirty"))
        return do_dirty(strtoull(argv[2], 0, 0), argc >= 4 ? atoi(argv[3]) : 10);
    if (argc == 5 && !strcmp(argv[1], "stamp"))
        return do_stamp(argv[2], strtoull(argv[3], 0, 0), strtoull(argv[4], 0, 0));
    if (argc >= 3 && !strcmp(argv[1], "write")) {
        if (argc >= 5) hb_ms = atoi(argv[4]);
        return do_write(argv[2], argc >= 4 ? strtoull(argv[3], 0, 0) : 0);
    }
    if (argc >= 3 && !strcmp(argv[1], "verify")) {
        int have = argc >= 6;
        return do_verify(argv[2], argc >= 4 ? strtoull(argv[3], 0, 0) : 0, have,
                         have ? strtoull(argv[4], 0, 0) : 0, have ? strtoull(argv[5], 0, 0) : 0);
    }
    fprintf(stderr, "usage: %s write DEV [nblocks] [hb_ms] | verify PATH [nblocks] [ack_gen ack_blk] | stamp PATH block gen | dirty MIB [period_ms]\n", argv[0]);
    return 2;
}
