// im2col and col2im for NCHW images; the CUDA twins of
// tinynet/ops/cpu_kernels.py: im2col, col2im.
//
// Layout (as on the CPU):
//   x    : (N, C, H, W)
//   cols : (C*KH*KW, N*OH*OW); row r = (c*KH + ky)*KW + kx, column q = (n*OH + oy)*OW + ox
//
// im2col: one thread per element of cols (C*KH*KW*N*OH*OW threads, grid-stride loop);
//   the linear index i splits as i = r * (N*OH*OW) + q, so consecutive threads write
//   consecutive columns of one row (coalesced stores).
// col2im: one thread per input pixel (N*C*H*W threads).  The thread *gathers* the
//   column entries of every window that covers its pixel and writes the sum once:
//   no atomics, no races, the same result on every run (Caffe's and Chainer's choice).
// All linear indices are 64-bit: AlexNet's conv1 columns at batch 128 already hold
// 140 million entries, and larger inputs overflow 32 bits.

template <typename T>
__global__ void im2col_kernel(const T* __restrict__ x, T* __restrict__ cols,
                              long long N, long long C, long long H, long long W,
                              int KH, int KW, int SH, int SW, int PH, int PW,
                              long long OH, long long OW) {
    const long long ncols = N * OH * OW;
    const long long total = C * KH * KW * ncols;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        const long long r = i / ncols, q = i % ncols;
        const int kx = (int)(r % KW);
        const int ky = (int)((r / KW) % KH);
        const long long c = r / ((long long)KW * KH);
        const long long ox = q % OW;
        const long long oy = (q / OW) % OH;
        const long long n = q / (OW * OH);
        const long long h = oy * SH - PH + ky;
        const long long w = ox * SW - PW + kx;
        cols[i] = (h >= 0 && h < H && w >= 0 && w < W) ? x[((n * C + c) * H + h) * W + w] : T(0);
    }
}

template <typename T>
__global__ void col2im_kernel(const T* __restrict__ cols, T* __restrict__ x,
                              long long N, long long C, long long H, long long W,
                              int KH, int KW, int SH, int SW, int PH, int PW,
                              long long OH, long long OW) {
    const long long total = N * C * H * W;
    const long long ncols = N * OH * OW;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        const long long w = i % W;
        const long long h = (i / W) % H;
        const long long c = (i / (W * H)) % C;
        const long long n = i / (W * H * C);
        const long long hp = h + PH, wp = w + PW;  // position in the padded image
        // output rows whose window covers hp: oy*SH <= hp <= oy*SH + KH - 1
        const long long oy_lo = hp < KH ? 0 : (hp - KH) / SH + 1;
        const long long oy_hi = min(hp / SH, OH - 1);
        const long long ox_lo = wp < KW ? 0 : (wp - KW) / SW + 1;
        const long long ox_hi = min(wp / SW, OW - 1);
        T sum = T(0);
        for (long long oy = oy_lo; oy <= oy_hi; ++oy) {
            const int ky = (int)(hp - oy * SH);
            for (long long ox = ox_lo; ox <= ox_hi; ++ox) {
                const int kx = (int)(wp - ox * SW);
                const long long r = (c * KH + ky) * KW + kx;
                sum += cols[r * ncols + (n * OH + oy) * OW + ox];
            }
        }
        x[i] = sum;
    }
}

// explicit instantiations, looked up by name from Python
template __global__ void im2col_kernel<float>(const float*, float*, long long, long long, long long,
                                              long long, int, int, int, int, int, int, long long, long long);
template __global__ void im2col_kernel<double>(const double*, double*, long long, long long, long long,
                                               long long, int, int, int, int, int, int, long long, long long);
template __global__ void col2im_kernel<float>(const float*, float*, long long, long long, long long,
                                              long long, int, int, int, int, int, int, long long, long long);
template __global__ void col2im_kernel<double>(const double*, double*, long long, long long, long long,
                                               long long, int, int, int, int, int, int, long long, long long);
