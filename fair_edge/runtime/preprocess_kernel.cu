// FAIR model input in one launch: uint8 frames -> (high-pass, colour) network inputs.
//
// Same definition as fair_edge/preprocess.py (the float64 reference) and mirrored line by line in
// fair_edge/runtime/fused_mirror.py (NumPy, float32). Compiled at run time with NVRTC by
// fair_edge/runtime/nvrtc_build.py; the host side is fair_edge/runtime/preprocess_gpu.py.
// Compile-time settings (-D):
//   IMAGE_SIZE  S, side of the square outputs, pixels
//   RADIUS      R, half-width of the separable high-pass taps (1 for Sobel)
//   RANK        separable terms of the high-pass (0 for Sobel)
//   SOBEL       1: Sobel-xy (2 channels, reflect-101 border); 0: c0*g - sum_k col_k (*) row_k (*) g,
//               circular (the FFT reference's wrap-around)
//   OUT_HALF    1: outputs are FP16 (IEEE binary16, round to nearest even); 0: FP32
//
// Batch item b is the in_h x in_w image at frames + item_offsets[b] bytes (rows row_pitch apart), or at
// frames + b * image_pitch when item_offsets is NULL. With offsets, the items are crops of larger frames
// (the tiles of a tiled model): each is cropped and resized in this same launch, the frames uploaded once.
//
// Grid (ceil(S/TILE), ceil(S/TILE), B), block THREADS. Each block makes one TILE x TILE output tile
// of one item: it resamples the gray tile plus an R-pixel halo straight from the frame into shared
// memory (writing the colour tile on the way), then runs the separable taps from shared memory.
// Dynamic shared memory: (RS * GP + RS * TP) floats, RS = TILE + 2R (see shared_bytes() in Python).

#ifndef IMAGE_SIZE
#error "IMAGE_SIZE must be defined"
#endif
#ifndef RADIUS
#error "RADIUS must be defined"
#endif
#ifndef RANK
#error "RANK must be defined"
#endif
#ifndef SOBEL
#define SOBEL 0
#endif
#ifndef OUT_HALF
#define OUT_HALF 0
#endif

#define TILE 32
#define THREADS 256
#define TAPS (2 * RADIUS + 1)
#define RS (TILE + 2 * RADIUS)  // region side: tile plus halo
#define GP (RS | 1)             // gray row pitch, odd: column strips are bank-conflict free
#define TP (TILE + 1)           // row-pass row pitch, odd for the same reason
#define HSTRIP 8                // row pass: outputs per thread along x
#define VSTRIP (TILE * TILE / THREADS)  // column pass: outputs per thread along y (4)
#define MAX_RANK 16
#define MAX_TAPS 129

#if OUT_HALF
typedef unsigned short out_t;
__device__ __forceinline__ out_t to_out(float v) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
}
#else
typedef float out_t;
__device__ __forceinline__ out_t to_out(float v) { return v; }
#endif

__constant__ float c_row[MAX_RANK * MAX_TAPS];  // row_taps[k][t] at k * TAPS + t
__constant__ float c_col[MAX_RANK * MAX_TAPS];

// Region coordinate -> image coordinate: circular for the frequency filters, reflect-101 for Sobel.
__device__ __forceinline__ int border(int c) {
#if SOBEL
    c = c < 0 ? -c : c;
    c = c >= IMAGE_SIZE ? 2 * IMAGE_SIZE - 2 - c : c;
    return min(max(c, 0), IMAGE_SIZE - 1);  // only reached by halo pixels no output reads
#else
    return ((c % IMAGE_SIZE) + IMAGE_SIZE) % IMAGE_SIZE;
#endif
}

// OpenCV INTER_LINEAR source taps for output index i: src = ((2i+1) n_in - S) / (2S), clamped at 0.
__device__ __forceinline__ void source_taps(int i, int n_in, int* i0, int* i1, float* frac) {
    const int den = 2 * IMAGE_SIZE;
    const int num = (2 * i + 1) * n_in - IMAGE_SIZE;
    int lo = 0;
    float f = 0.0f;
    if (num >= 0) {
        lo = num / den;
        f = (float)(num - lo * den) / (float)den;
    }
    *i0 = min(lo, n_in - 1);
    *i1 = min(lo + 1, n_in - 1);
    *frac = f;
}

__device__ __forceinline__ float lerp(float a, float b, float t) { return a + t * (b - a); }

extern "C" __global__ void __launch_bounds__(THREADS)
fair_preprocess(const unsigned char* __restrict__ frames, int in_h, int in_w, int channels,
                long long row_pitch, long long image_pitch, const long long* __restrict__ item_offsets,
                out_t* __restrict__ highpass, out_t* __restrict__ colour, float centre) {
    extern __shared__ float smem[];
    float* gray = smem;              // RS x GP
    const int b = blockIdx.z;
    const int ty0 = blockIdx.y * TILE;
    const int tx0 = blockIdx.x * TILE;
    const long long plane = (long long)IMAGE_SIZE * IMAGE_SIZE;
    const unsigned char* frame = frames + (item_offsets != nullptr ? item_offsets[b] : (long long)b * image_pitch);
    const float inv255 = 1.0f / 255.0f;

    // 1. gray tile + halo, resampled from the frame; the colour tile is written on the way.
    for (int i = threadIdx.x; i < RS * RS; i += THREADS) {
        const int ry = i / RS, rx = i - (i / RS) * RS;
        const int gy = border(ty0 - RADIUS + ry), gx = border(tx0 - RADIUS + rx);
        int y0, y1, x0, x1;
        float fy, fx;
        source_taps(gy, in_h, &y0, &y1, &fy);
        source_taps(gx, in_w, &x0, &x1, &fx);
        const unsigned char* r0 = frame + (long long)y0 * row_pitch;
        const unsigned char* r1 = frame + (long long)y1 * row_pitch;
        float bgr[3];
        for (int c = 0; c < 3; ++c) {
            const int cc = channels == 3 ? c : 0;
            const float a = r0[x0 * channels + cc] * inv255, bb = r0[x1 * channels + cc] * inv255;
            const float d = r1[x0 * channels + cc] * inv255, e = r1[x1 * channels + cc] * inv255;
            const float top = lerp(a, bb, fx), bottom = lerp(d, e, fx);
            bgr[c] = lerp(top, bottom, fy);
        }
        gray[ry * GP + rx] = 0.299f * bgr[2] + 0.587f * bgr[1] + 0.114f * bgr[0];
        const int oy = ry - RADIUS, ox = rx - RADIUS;
        if (oy >= 0 && oy < TILE && ox >= 0 && ox < TILE && ty0 + oy < IMAGE_SIZE && tx0 + ox < IMAGE_SIZE) {
            const long long at = (long long)(ty0 + oy) * IMAGE_SIZE + tx0 + ox;
            out_t* out = colour + (long long)b * 3 * plane + at;
            out[0] = to_out(bgr[2]);  // RGB order
            out[plane] = to_out(bgr[1]);
            out[2 * plane] = to_out(bgr[0]);
        }
    }
    __syncthreads();

#if SOBEL
    for (int i = threadIdx.x; i < TILE * TILE; i += THREADS) {
        const int y = i / TILE, x = i - (i / TILE) * TILE;
        if (ty0 + y >= IMAGE_SIZE || tx0 + x >= IMAGE_SIZE) continue;
        const float* p = gray + y * GP + x;  // p[dy * GP + dx] = g(y + dy - 1, x + dx - 1)
        const float gx = (p[2] - p[0]) + 2.0f * (p[GP + 2] - p[GP]) + (p[2 * GP + 2] - p[2 * GP]);
        const float gy = (p[2 * GP] - p[0]) + 2.0f * (p[2 * GP + 1] - p[1]) + (p[2 * GP + 2] - p[2]);
        const long long at = (long long)(ty0 + y) * IMAGE_SIZE + tx0 + x;
        highpass[(long long)b * 2 * plane + at] = to_out(gx);
        highpass[(long long)b * 2 * plane + plane + at] = to_out(gy);
    }
#else
    // 2. per rank: row taps over every region row, then column taps into per-thread accumulators.
    float* rows = smem + RS * GP;  // RS x TP: row-pass results of one rank
    const int col = threadIdx.x % TILE;
    const int row0 = (threadIdx.x / TILE) * VSTRIP;
    float acc[VSTRIP];
#pragma unroll
    for (int p = 0; p < VSTRIP; ++p) acc[p] = 0.0f;

#pragma unroll 1
    for (int k = 0; k < RANK; ++k) {
        for (int item = threadIdx.x; item < RS * (TILE / HSTRIP); item += THREADS) {
            const int ry = item % RS, sx = (item / RS) * HSTRIP;
            const float* src = gray + ry * GP + sx;
            float h[HSTRIP];
#pragma unroll
            for (int p = 0; p < HSTRIP; ++p) h[p] = 0.0f;
#pragma unroll
            for (int j = 0; j < TAPS + HSTRIP - 1; ++j) {
                const float v = src[j];
#pragma unroll
                for (int p = 0; p < HSTRIP; ++p) {
                    const int t = j - p;
                    if (t >= 0 && t < TAPS) h[p] = fmaf(c_row[k * TAPS + t], v, h[p]);
                }
            }
#pragma unroll
            for (int p = 0; p < HSTRIP; ++p) rows[ry * TP + sx + p] = h[p];
        }
        __syncthreads();
        const float* src = rows + row0 * TP + col;
#pragma unroll
        for (int j = 0; j < TAPS + VSTRIP - 1; ++j) {
            const float v = src[j * TP];
#pragma unroll
            for (int p = 0; p < VSTRIP; ++p) {
                const int t = j - p;
                if (t >= 0 && t < TAPS) acc[p] = fmaf(c_col[k * TAPS + t], v, acc[p]);
            }
        }
        __syncthreads();  // the next rank overwrites `rows`
    }
#pragma unroll
    for (int p = 0; p < VSTRIP; ++p) {
        const int y = row0 + p;
        if (ty0 + y < IMAGE_SIZE && tx0 + col < IMAGE_SIZE) {
            const float g = gray[(y + RADIUS) * GP + col + RADIUS];
            highpass[(long long)b * plane + (long long)(ty0 + y) * IMAGE_SIZE + tx0 + col] =
                to_out(centre * g - acc[p]);
        }
    }
#endif
}
