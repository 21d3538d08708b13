// Max pooling forward and backward; the CUDA twins of
// tinynet/ops/cpu_kernels.py: maxpool_forward, maxpool_backward.
//
// forward : one thread per output element (N*C*OH*OW threads); it scans its
//           KH x KW window in row-major order and writes the maximum and, in
//           argmax, where it sits in the input plane (h * W + w).  A value is
//           taken if it beats the maximum so far by np.maximum's rule (the maximum
//           m stays if m >= v or m is NaN): so a NaN in the window wins, as in NumPy
//           and PyTorch, its first NaN takes the place (as np.argmax picks it), and on
//           ties the first maximum keeps its place.
// backward: one thread per input pixel (N*C*H*W threads).  It visits the windows
//           that cover its pixel in row-major order and adds the gradient of each
//           whose argmax is this pixel.  A gather: no atomics, and the terms come
//           in the order the CPU's scatter adds them (the outputs' row-major order),
//           so the sums are the same bits.
// 64-bit linear indices throughout; argmax is int (an index inside one plane).

template <typename T>
__global__ void maxpool_forward_kernel(const T* __restrict__ x, T* __restrict__ y, int* __restrict__ argmax,
                                       long long N, long long C, long long H, long long W,
                                       int KH, int KW, int SH, int SW, long long OH, long long OW) {
    const long long total = N * C * OH * OW;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        const long long ox = i % OW;
        const long long oy = (i / OW) % OH;
        const long long nc = i / (OW * OH);
        const T* plane = x + nc * H * W;
        long long where = (oy * SH) * W + ox * SW;
        T best = plane[where];
        for (int ky = 0; ky < KH; ++ky)
            for (int kx = 0; kx < KW; ++kx) {
                const long long p = (oy * SH + ky) * W + ox * SW + kx;
                const T v = plane[p];
                if (!(best >= v || isnan(best))) {
                    best = v;
                    where = p;
                }
            }
        y[i] = best;
        argmax[i] = (int)where;
    }
}

template <typename T>
__global__ void maxpool_backward_kernel(const int* __restrict__ argmax, const T* __restrict__ gy,
                                        T* __restrict__ gx, long long N, long long C, long long H, long long W,
                                        int KH, int KW, int SH, int SW, long long OH, long long OW) {
    const long long total = N * C * H * W;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        const long long w = i % W;
        const long long h = (i / W) % H;
        const long long nc = i / (W * H);
        // the windows that cover (h, w): oy * SH <= h < oy * SH + KH, and the same across
        const long long oy_lo = h < KH ? 0 : (h - KH) / SH + 1;
        const long long oy_hi = min(h / SH, OH - 1);
        const long long ox_lo = w < KW ? 0 : (w - KW) / SW + 1;
        const long long ox_hi = min(w / SW, OW - 1);
        const int here = (int)(h * W + w);
        T sum = T(0);
        for (long long oy = oy_lo; oy <= oy_hi; ++oy)
            for (long long ox = ox_lo; ox <= ox_hi; ++ox) {
                const long long o = (nc * OH + oy) * OW + ox;
                if (argmax[o] == here) sum += gy[o];
            }
        gx[i] = sum;
    }
}

template __global__ void maxpool_forward_kernel<float>(const float*, float*, int*, long long, long long, long long,
                                                       long long, int, int, int, int, long long, long long);
template __global__ void maxpool_forward_kernel<double>(const double*, double*, int*, long long, long long,
                                                        long long, long long, int, int, int, int, long long,
                                                        long long);
template __global__ void maxpool_backward_kernel<float>(const int*, const float*, float*, long long, long long,
                                                        long long, long long, int, int, int, int, long long,
                                                        long long);
template __global__ void maxpool_backward_kernel<double>(const int*, const double*, double*, long long, long long,
                                                         long long, long long, int, int, int, int, long long,
                                                         long long);
