// Local response normalisation across channels (the paper's formula); the CUDA
// twins of tinynet/ops/cpu_kernels.py: lrn_forward, lrn_backward.
//
//   s[c] = k + alpha * sum_{c' = c-before .. c+after, clipped} x[c']^2,  y[c] = x[c] * s[c]^-beta
//   gx[i] = gy[i] * s[i]^-beta - 2*alpha*beta * x[i] * sum_{j: i in window(j)} gy[j]*y[j]/s[j]
//
// One thread per element (N*C*H*W threads); index i = ((n*C + c)*H + h)*W + w, so a
// thread's channel neighbours sit H*W apart.  The window is at most a few channels,
// so each thread reads them directly.  before = size/2, after = (size-1)/2; backward's
// window is the same with before and after swapped.  64-bit indices.
//
// As on the CPU, only x is kept for backward: a backward thread computes s and y of
// each channel j in its window again (lrn_scale, the same sum as forward's, so the
// same bits), a few more reads of x instead of two more arrays written and read.

// s of channel c at the (n, pixel) whose channel 0 is x[base]
template <typename T>
__device__ T lrn_scale(const T* __restrict__ x, long long base, long long c, long long C, long long HW,
                       int before, int after, T alpha, T k) {
    const long long lo = c - before < 0 ? 0 : c - before;
    const long long hi = c + after > C - 1 ? C - 1 : c + after;
    T sum = T(0);
    for (long long j = lo; j <= hi; ++j) {
        const T v = x[base + j * HW];
        sum += v * v;
    }
    return k + alpha * sum;
}

template <typename T>
__global__ void lrn_forward_kernel(const T* __restrict__ x, T* __restrict__ y,
                                   long long N, long long C, long long HW,
                                   int before, int after, T alpha, T beta, T k) {
    const long long total = N * C * HW;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        const long long c = (i / HW) % C;
        const long long base = i - c * HW;  // channel 0 of this (n, pixel)
        const T s = lrn_scale(x, base, c, C, HW, before, after, alpha, k);
        y[i] = x[i] * pow(s, -beta);
    }
}

template <typename T>
__global__ void lrn_backward_kernel(const T* __restrict__ x, const T* __restrict__ gy,
                                    T* __restrict__ gx, long long N, long long C, long long HW,
                                    int before, int after, T alpha, T beta, T k) {
    const long long total = N * C * HW;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        const long long c = (i / HW) % C;
        const long long base = i - c * HW;
        // channels j whose window contains c: c - after <= j <= c + before
        const long long lo = c - after < 0 ? 0 : c - after;
        const long long hi = c + before > C - 1 ? C - 1 : c + before;
        T acc = T(0), r_c = T(0);  // r_c: s^-beta of channel c itself, one of the j
        for (long long j = lo; j <= hi; ++j) {
            const long long p = base + j * HW;
            const T s = lrn_scale(x, base, j, C, HW, before, after, alpha, k);
            const T r = pow(s, -beta);
            if (j == c) r_c = r;
            const T y = x[p] * r;  // as forward computed it
            acc += gy[p] * y / s;
        }
        gx[i] = gy[i] * r_c - T(2) * alpha * beta * x[i] * acc;
    }
}

template __global__ void lrn_forward_kernel<float>(const float*, float*, long long, long long, long long,
                                                   int, int, float, float, float);
template __global__ void lrn_forward_kernel<double>(const double*, double*, long long, long long, long long,
                                                    int, int, double, double, double);
template __global__ void lrn_backward_kernel<float>(const float*, const float*, float*, long long, long long,
                                                    long long, int, int, float, float, float);
template __global__ void lrn_backward_kernel<double>(const double*, const double*, double*, long long,
                                                     long long, long long, int, int, double, double, double);
