// CPU emulation of one launch of the fused pre-processing kernel, for the tests (no GPU needed).
//
// The kernel's own source (fair_edge/runtime/preprocess_kernel.cu, lightly rewritten by tests/kernel_emulator.py:
// the PTX half conversion and the `extern __shared__` declaration) is compiled by g++ with the CUDA
// keywords defined away. Every thread of a block is a real std::thread; __syncthreads() is a
// std::barrier over them, so a missing barrier shows up as a wrong result (or under ThreadSanitizer
// as a data race). Blocks run one after another; before each block the shared memory is filled with
// NaN, and the outputs start as NaN too, so a read of shared memory nothing wrote, or an output
// nothing wrote, shows as NaN. Buffers are allocated at exactly the sizes the caller gives, so with
// AddressSanitizer any read or write outside them stops the run.
//
// usage: harness LAUNCH FRAMES TAPS HIGHPASS_OUT COLOUR_OUT OFFSETS
//   LAUNCH: whitespace-separated numbers: grid x y z, block x y z, shared bytes, frames bytes,
//           highpass bytes, colour bytes, offsets bytes, then the ten kernel arguments in signature
//           order; the pointer arguments are buffer ids (1 frames, 2 high-pass, 3 colour, 4 the int64
//           item offsets read from OFFSETS; 0 for no offsets, a NULL pointer).
//   TAPS: float32 row taps then column taps, RANK x (2 RADIUS + 1) each.
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

struct emu_dim3 {
    unsigned x, y, z;
};
static thread_local emu_dim3 threadIdx, blockIdx;
static std::barrier<>* emu_block_barrier = nullptr;
static float* emu_shared_memory = nullptr;

static inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned short emu_f32_to_f16_rn(float v) {  // IEEE binary16, round to nearest even
    _Float16 h = (_Float16)v;
    unsigned short bits;
    std::memcpy(&bits, &h, sizeof bits);
    return bits;
}

#define __device__
#define __forceinline__ inline
#define __global__
#define __launch_bounds__(n)
#define __constant__

#include EMU_KERNEL

static std::vector<unsigned char> read_file(const char* path, size_t expected) {
    std::vector<unsigned char> data(expected);
    FILE* f = std::fopen(path, "rb");
    if (!f || std::fread(data.data(), 1, expected, f) != expected) {
        std::fprintf(stderr, "cannot read %zu bytes from %s\n", expected, path);
        std::exit(2);
    }
    std::fclose(f);
    return data;
}

static void write_file(const char* path, const unsigned char* data, size_t size) {
    FILE* f = std::fopen(path, "wb");
    if (!f || std::fwrite(data, 1, size, f) != size) {
        std::fprintf(stderr, "cannot write %s\n", path);
        std::exit(2);
    }
    std::fclose(f);
}

int main(int argc, char** argv) {
    if (argc != 7) {
        std::fprintf(stderr, "usage: %s LAUNCH FRAMES TAPS HIGHPASS_OUT COLOUR_OUT OFFSETS\n", argv[0]);
        return 2;
    }
    FILE* f = std::fopen(argv[1], "r");
    unsigned grid[3], block[3];
    size_t smem_bytes, frames_bytes, hp_bytes, colour_bytes, offsets_bytes;
    long long frames_id, hp_id, colour_id, offsets_id, row_pitch, image_pitch;
    int in_h, in_w, channels;
    double centre;
    if (!f || std::fscanf(f, "%u %u %u %u %u %u %zu %zu %zu %zu %zu %lld %d %d %d %lld %lld %lld %lld %lld %lf",
                          &grid[0], &grid[1], &grid[2], &block[0], &block[1], &block[2], &smem_bytes,
                          &frames_bytes, &hp_bytes, &colour_bytes, &offsets_bytes, &frames_id, &in_h, &in_w,
                          &channels, &row_pitch, &image_pitch, &offsets_id, &hp_id, &colour_id, &centre) != 21) {
        std::fprintf(stderr, "cannot parse %s\n", argv[1]);
        return 2;
    }
    std::fclose(f);
    if (block[1] != 1 || block[2] != 1) {
        std::fprintf(stderr, "the emulator runs 1-D blocks; found %u x %u x %u\n", block[0], block[1], block[2]);
        return 2;
    }
    const size_t taps = (size_t)RANK * TAPS;
    std::vector<unsigned char> tap_bytes = read_file(argv[3], 2 * taps * sizeof(float));
    std::memcpy(c_row, tap_bytes.data(), taps * sizeof(float));
    std::memcpy(c_col, tap_bytes.data() + taps * sizeof(float), taps * sizeof(float));

    // Exact-size heap buffers: AddressSanitizer flags any access outside them.
    unsigned char* frames = new unsigned char[frames_bytes];
    std::vector<unsigned char> frame_data = read_file(argv[2], frames_bytes);
    std::memcpy(frames, frame_data.data(), frames_bytes);
    unsigned char* hp = new unsigned char[hp_bytes];
    unsigned char* colour = new unsigned char[colour_bytes];
    std::memset(hp, 0xFF, hp_bytes);  // all-ones bits are NaN in float32 and in float16
    std::memset(colour, 0xFF, colour_bytes);
    long long* offsets = nullptr;  // exact size, so a read past the last item's offset is caught too
    if (offsets_bytes) {
        offsets = new long long[offsets_bytes / sizeof(long long)];
        std::vector<unsigned char> offset_data = read_file(argv[6], offsets_bytes);
        std::memcpy(offsets, offset_data.data(), offsets_bytes);
    }
    emu_shared_memory = new float[(smem_bytes + sizeof(float) - 1) / sizeof(float)];
    const auto buffer = [&](long long id) -> void* {
        return id == 1 ? (void*)frames : id == 2 ? (void*)hp : id == 3 ? (void*)colour : nullptr;
    };
    if (!buffer(frames_id) || !buffer(hp_id) || !buffer(colour_id) || (offsets_id != 0 && offsets_id != 4) ||
        (offsets_id == 4) != (offsets != nullptr)) {
        std::fprintf(stderr, "pointer arguments must be buffer ids 1..3 and 0 or 4 (with offsets bytes); found %lld "
                     "%lld %lld %lld\n", frames_id, hp_id, colour_id, offsets_id);
        return 2;
    }

    std::barrier<> sync(block[0]);
    emu_block_barrier = &sync;
    std::barrier end_of_block(block[0], [&]() noexcept { std::memset(emu_shared_memory, 0xFF, smem_bytes); });
    std::memset(emu_shared_memory, 0xFF, smem_bytes);
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < block[0]; ++t) {
        threads.emplace_back([&, t] {
            threadIdx = {t, 0, 0};
            for (unsigned z = 0; z < grid[2]; ++z)
                for (unsigned y = 0; y < grid[1]; ++y)
                    for (unsigned x = 0; x < grid[0]; ++x) {
                        blockIdx = {x, y, z};
                        fair_preprocess((const unsigned char*)buffer(frames_id), in_h, in_w, channels, row_pitch,
                                        image_pitch, offsets, (out_t*)buffer(hp_id), (out_t*)buffer(colour_id),
                                        (float)centre);
                        end_of_block.arrive_and_wait();
                    }
        });
    }
    for (std::thread& t : threads) t.join();
    write_file(argv[4], hp, hp_bytes);
    write_file(argv[5], colour, colour_bytes);
    delete[] frames;
    delete[] hp;
    delete[] colour;
    delete[] offsets;
    delete[] emu_shared_memory;
    return 0;
}
