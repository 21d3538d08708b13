// Max pooling forward and backward; the CUDA twins of
// tinynet/ops/cpu_kernels.py: maxpool_forward, maxpool_backward.
//
// forward : one thread per output element (N*C*OH*OW threads); it scans its
//           KH x KW window and writes the maximum.  A NaN in the window wins, as in
//           NumPy and PyTorch (a plain v > best would skip it: every comparison with
//           NaN is false), so a diverging network shows NaN here as on the CPU.
// backward: one thread per input pixel (N*C*H*W threads).  For every window that
//           covers the pixel it finds that window's first maximum (row-major scan,
//           comparing x with the saved output y; if y is NaN, the window's first
//           NaN) and, if that is this pixel, adds the window's gradient.  A gather: no argmax array, no atomics, and ties
//           go to the first maximum exactly as on the CPU.
// 64-bit linear indices throughout.

template <typename T>
__global__ void maxpool_forward_kernel(const T* __restrict__ x, T* __restrict__ y,
                                       long long N, long long C, long long H, long long W,
                                       int KH, int KW, int SH, int SW, long long OH, long long OW) {
    const long long total = N * C * OH * OW;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        const long long ox = i % OW;
        const long long oy = (i / OW) % OH;
        const long long nc = i / (OW * OH);
        const T* plane = x + nc * H * W;
        T best = plane[(oy * SH) * W + ox * SW];
        for (int ky = 0; ky < KH; ++ky)
            for (int kx = 0; kx < KW; ++kx) {
                const T v = plane[(oy * SH + ky) * W + ox * SW + kx];
                best = (v > best || isnan(v)) ? v : best;  // once best is NaN it stays NaN
            }
        y[i] = best;
    }
}

template <typename T>
__global__ void maxpool_backward_kernel(const T* __restrict__ x, const T* __restrict__ y,
                                        const T* __restrict__ gy, T* __restrict__ gx,
                                        long long N, long long C, long long H, long long W,
                                        int KH, int KW, int SH, int SW, long long OH, long long OW) {
    const long long total = N * C * H * W;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        const long long w = i % W;
        const long long h = (i / W) % H;
        const long long nc = i / (W * H);
        const T* plane = x + nc * H * W;
        const long long oy_lo = h < KH ? 0 : (h - KH) / SH + 1;
        const long long oy_hi = min(h / SH, OH - 1);
        const long long ox_lo = w < KW ? 0 : (w - KW) / SW + 1;
        const long long ox_hi = min(w / SW, OW - 1);
        T sum = T(0);
        for (long long oy = oy_lo; oy <= oy_hi; ++oy)
            for (long long ox = ox_lo; ox <= ox_hi; ++ox) {
                const long long o = (nc * OH + oy) * OW + ox;
                const T m = y[o];
                const bool m_nan = isnan(m);
                // the window's first maximum (first NaN if the maximum is NaN), row-major
                long long first = -1;
                for (int ky = 0; ky < KH && first < 0; ++ky)
                    for (int kx = 0; kx < KW; ++kx) {
                        const long long p = (oy * SH + ky) * W + ox * SW + kx;
                        if (plane[p] == m || (m_nan && isnan(plane[p]))) { first = p; break; }
                    }
                if (first == h * W + w) sum += gy[o];
            }
        gx[i] = sum;
    }
}

template __global__ void maxpool_forward_kernel<float>(const float*, float*, long long, long long, long long,
                                                       long long, int, int, int, int, long long, long long);
template __global__ void maxpool_forward_kernel<double>(const double*, double*, long long, long long, long long,
                                                        long long, int, int, int, int, long long, long long);
template __global__ void maxpool_backward_kernel<float>(const float*, const float*, const float*, float*,
                                                        long long, long long, long long, long long,
                                                        int, int, int, int, long long, long long);
template __global__ void maxpool_backward_kernel<double>(const double*, const double*, const double*, double*,
                                                         long long, long long, long long, long long,
                                                         int, int, int, int, long long, long long);
