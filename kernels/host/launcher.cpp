// Runs the CUDA kernels of kernels/*.cu on the CPU: a grid is a loop over
// blocks and threads.  Built into a shared library by tinynet/cuda/emulate.py
// and called through ctypes.
//
//   emu_launch("im2col_kernel<float>", grid, block, order, n_order, args)
//
// runs every thread of the grid once, one after another, in the given order:
// thread number t (0 <= t < blocks * threads_per_block) is block t / B,
// thread t % B of that block, with B = threads per block and x fastest within
// a block (as CUDA numbers them).  No order given: 0, 1, 2, ...
// ``args`` is an array of pointers, one per kernel argument, each pointing at
// the argument's value: the convention of CUDA's own cudaLaunchKernel.
//
// To step through one thread in gdb: break on the kernel (for example
// `break im2col_kernel<float>`), or run a grid of one thread, or pass an order
// that holds just the thread you want.

#include "cuda_host.h"

#include <cstring>
#include <functional>
#include <string>
#include <utility>

#include "../im2col.cu"
#include "../lrn.cu"
#include "../maxpool.cu"

// ---------------------------------------------------------------------------
// Each kernel's argument types as a string, one letter per argument
// (p pointer, i int, q long long, f float, d double), so that Python can check
// what it packs before the kernel reads it.
template <typename T> struct Letter;
template <typename T> struct Letter<T*> { static constexpr char value = 'p'; };
template <> struct Letter<int> { static constexpr char value = 'i'; };
template <> struct Letter<long long> { static constexpr char value = 'q'; };
template <> struct Letter<float> { static constexpr char value = 'f'; };
template <> struct Letter<double> { static constexpr char value = 'd'; };

// Call kernel(args...) with each argument read from the pointer array.
template <typename... Args, std::size_t... I>
void call(void (*kernel)(Args...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<Args*>(args[I])...);
}

struct Kernel {
    const char* name;
    std::string signature;
    std::function<void(void**)> run_one_thread;
};

template <typename... Args>
Kernel entry(const char* name, void (*kernel)(Args...)) {
    return {name, std::string{Letter<Args>::value...},
            [kernel](void** args) { call(kernel, args, std::index_sequence_for<Args...>{}); }};
}

static const Kernel KERNELS[] = {
    entry("im2col_kernel<float>", im2col_kernel<float>),
    entry("im2col_kernel<double>", im2col_kernel<double>),
    entry("col2im_kernel<float>", col2im_kernel<float>),
    entry("col2im_kernel<double>", col2im_kernel<double>),
    entry("maxpool_forward_kernel<float>", maxpool_forward_kernel<float>),
    entry("maxpool_forward_kernel<double>", maxpool_forward_kernel<double>),
    entry("maxpool_backward_kernel<float>", maxpool_backward_kernel<float>),
    entry("maxpool_backward_kernel<double>", maxpool_backward_kernel<double>),
    entry("lrn_forward_kernel<float>", lrn_forward_kernel<float>),
    entry("lrn_forward_kernel<double>", lrn_forward_kernel<double>),
    entry("lrn_backward_kernel<float>", lrn_backward_kernel<float>),
    entry("lrn_backward_kernel<double>", lrn_backward_kernel<double>),
};

static const Kernel* find(const char* name) {
    for (const Kernel& k : KERNELS)
        if (std::strcmp(k.name, name) == 0) return &k;
    return nullptr;
}

// Thread number t -> its blockIdx and threadIdx: x varies fastest, then y, then z,
// for blocks in the grid as for threads in a block (CUDA's numbering).
static void position(const dim3& grid, const dim3& block, long long t, uint3& b, uint3& th) {
    const long long per_block = (long long)block.x * block.y * block.z;
    const long long nb = t / per_block, nt = t % per_block;
    b = {unsigned(nb % grid.x), unsigned(nb / grid.x % grid.y), unsigned(nb / grid.x / grid.y)};
    th = {unsigned(nt % block.x), unsigned(nt / block.x % block.y), unsigned(nt / block.x / block.y)};
}

// ---------------------------------------------------------------------------
// The C interface used from Python.

extern "C" {

// Where thread number t sits: out = blockIdx.x, .y, .z, threadIdx.x, .y, .z.
void emu_thread_position(const unsigned int grid[3], const unsigned int block[3], long long t,
                         unsigned int out[6]) {
    uint3 b, th;
    position({grid[0], grid[1], grid[2]}, {block[0], block[1], block[2]}, t, b, th);
    const unsigned int values[6] = {b.x, b.y, b.z, th.x, th.y, th.z};
    for (int k = 0; k < 6; ++k) out[k] = values[k];
}

// The kernel's argument letters, or NULL if there is no such kernel.
const char* emu_signature(const char* name) {
    const Kernel* k = find(name);
    return k ? k->signature.c_str() : nullptr;
}

// Run the grid.  Returns 0, or -1 for an unknown kernel, -2 for a thread
// number outside the grid.
int emu_launch(const char* name, const unsigned int grid[3], const unsigned int block[3],
               const long long* order, long long n_order, void** args) {
    const Kernel* k = find(name);
    if (!k) return -1;
    gridDim = {grid[0], grid[1], grid[2]};
    blockDim = {block[0], block[1], block[2]};
    const long long threads = (long long)grid[0] * grid[1] * grid[2] * block[0] * block[1] * block[2];
    const long long n = order ? n_order : threads;
    for (long long step = 0; step < n; ++step) {
        const long long t = order ? order[step] : step;
        if (t < 0 || t >= threads) return -2;
        position(gridDim, blockDim, t, blockIdx, threadIdx);
        k->run_one_thread(args);  // one CUDA thread, start to finish
    }
    return 0;
}

}  // extern "C"
