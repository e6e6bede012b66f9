/* C baseline: a single-producer single-consumer ring in shared memory between two processes
 * pinned to two CPUs, busy-polling (no syscalls): the physical limit of the shm channel.
 * usage: shm_ring CPU_PARENT CPU_CHILD MODE [ARG]
 *   stream [COUNT]       64-byte messages, 8-byte length + payload per 72-byte frame: msg/s
 *   pingpong [ROUNDS]    64-byte ping-pong over two rings: microseconds per round trip
 *   bulk SIZE [COUNT]    SIZE-byte messages through 16 slots of 64 KiB, copied in and out
 *                        (memcpy on both sides, pipelined): GB/s (1e9 bytes/s) */
#include "bench.h"
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define RING (1u << 20)
#define SLOT (64u << 10)
#define SLOTS 16u

struct ring {
    _Alignas(64) _Atomic uint64_t head;
    _Alignas(64) _Atomic uint64_t tail;
    _Alignas(64) char data[RING];
};

static inline void relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

/* frames: a 4-byte length (padded to 8), then the payload padded to 8; a frame that would
 * not fit before the end of the ring starts at its beginning */
static void put(struct ring *r, uint64_t *head, const char *msg, uint32_t n)
{
    uint64_t frame = 8 + ((n + 7u) & ~7u);
    uint64_t off = *head % RING;
    if (RING - off < frame)
        *head += RING - off, off = 0; /* skip the tail end (the reader skips it too) */
    while (*head + frame - atomic_load_explicit(&r->tail, memory_order_acquire) > RING)
        relax();
    memcpy(r->data + off, &n, 4);
    memcpy(r->data + off + 8, msg, n);
    *head += frame;
    atomic_store_explicit(&r->head, *head, memory_order_release);
}

static uint32_t get(struct ring *r, uint64_t *tail, uint64_t *cached_head, char *out)
{
    uint64_t off = *tail % RING;
    if (RING - off < 8 + 64)
        *tail += RING - off, off = 0;
    while (*cached_head <= *tail) {
        *cached_head = atomic_load_explicit(&r->head, memory_order_acquire);
        if (*cached_head <= *tail)
            relax();
    }
    uint32_t n;
    memcpy(&n, r->data + off, 4);
    memcpy(out, r->data + off + 8, n);
    *tail += 8 + ((n + 7u) & ~7u);
    atomic_store_explicit(&r->tail, *tail, memory_order_release);
    return n;
}

int main(int argc, char **argv)
{
    if (argc < 4)
        die("usage: shm_ring CPU_PARENT CPU_CHILD stream|pingpong|bulk [ARG]");
    int cpu0 = atoi(argv[1]), cpu1 = atoi(argv[2]);
    const char *mode = argv[3];
    struct ring *rings = mmap(NULL, 2 * sizeof(struct ring), PROT_READ | PROT_WRITE,
                              MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (rings == MAP_FAILED)
        die("mmap");
    struct ring *a = &rings[0], *b = &rings[1];
    char msg[64] = {1}, out[64];
    double result = 0;

    if (strcmp(mode, "stream") == 0 || strcmp(mode, "pingpong") == 0) {
        int pp = mode[0] == 'p';
        long count = argc > 4 ? atol(argv[4]) : (pp ? 200000 : 20000000);
        pid_t pid = fork();
        if (pid < 0)
            die("fork");
        if (pid == 0) {
            pin(cpu1);
            uint64_t tail = 0, ch = 0, head = 0;
            for (long i = 0; i < count; i++) {
                get(a, &tail, &ch, out);
                if (pp)
                    put(b, &head, out, 64);
            }
            _exit(0);
        }
        pin(cpu0);
        uint64_t head = 0, tail = 0, ch = 0;
        double t0 = now();
        for (long i = 0; i < count; i++) {
            put(a, &head, msg, 64);
            if (pp)
                get(b, &tail, &ch, out);
        }
        int status;
        if (waitpid(pid, &status, 0) < 0)
            die("waitpid");
        double dt = now() - t0;
        result = pp ? dt / count * 1e6 : count / dt;
    } else if (strcmp(mode, "bulk") == 0) {
        size_t size = argc > 4 ? strtoull(argv[4], NULL, 10) : (1u << 20);
        long count = argc > 5 ? atol(argv[5]) : (long)((4ull << 30) / size);
        if (count < 3)
            count = 3;
        char *src = malloc(size), *dst = malloc(size);
        if (!src || !dst)
            die("malloc");
        memset(src, 7, size);
        memset(dst, 0, size);
        pid_t pid = fork();
        if (pid < 0)
            die("fork");
        if (pid == 0) {
            pin(cpu1);
            uint64_t tail = 0;
            for (long i = 0; i < count; i++) {
                for (size_t done = 0; done < size; done += SLOT) {
                    while (atomic_load_explicit(&a->head, memory_order_acquire) == tail)
                        relax();
                    size_t n = size - done < SLOT ? size - done : SLOT;
                    memcpy(dst + done, a->data + (tail % SLOTS) * SLOT, n);
                    atomic_store_explicit(&a->tail, ++tail, memory_order_release);
                }
            }
            _exit(dst[size - 1] == 7 ? 0 : 1);
        }
        pin(cpu0);
        uint64_t head = 0;
        double t0 = now();
        for (long i = 0; i < count; i++) {
            for (size_t done = 0; done < size; done += SLOT) {
                while (head - atomic_load_explicit(&a->tail, memory_order_acquire) >= SLOTS)
                    relax();
                size_t n = size - done < SLOT ? size - done : SLOT;
                memcpy(a->data + (head % SLOTS) * SLOT, src + done, n);
                atomic_store_explicit(&a->head, ++head, memory_order_release);
            }
        }
        int status;
        if (waitpid(pid, &status, 0) < 0)
            die("waitpid");
        double dt = now() - t0;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            die("bulk: data did not arrive");
        result = (double)size * count / dt / 1e9;
    } else {
        die("unknown mode");
    }
    printf("%.6g\n", result);
    return 0;
}
