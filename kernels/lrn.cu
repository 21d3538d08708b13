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

template <typename T>
__global__ void lrn_forward_kernel(const T* __restrict__ x, T* __restrict__ y, T* __restrict__ scale,
                                   long long N, long long C, long long HW,
                                   int before, int after, T alpha, T beta, T k) {
    const long long total = N * C * HW;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        const long long c = (i / HW) % C;
        const long long base = i - c * HW;  // channel 0 of this (n, pixel)
        const long long lo = c - before < 0 ? 0 : c - before;
        const long long hi = c + after > C - 1 ? C - 1 : c + after;
        T sum = T(0);
        for (long long j = lo; j <= hi; ++j) {
            const T v = x[base + j * HW];
            sum += v * v;
        }
        const T s = k + alpha * sum;
        scale[i] = s;
        y[i] = x[i] * pow(s, -beta);
    }
}

template <typename T>
__global__ void lrn_backward_kernel(const T* __restrict__ x, const T* __restrict__ y,
                                    const T* __restrict__ scale, const T* __restrict__ gy,
                                    T* __restrict__ gx, long long N, long long C, long long HW,
                                    int before, int after, T alpha, T beta) {
    const long long total = N * C * HW;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        const long long c = (i / HW) % C;
        const long long base = i - c * HW;
        // channels j whose window contains c: c - after <= j <= c + before
        const long long lo = c - after < 0 ? 0 : c - after;
        const long long hi = c + before > C - 1 ? C - 1 : c + before;
        T acc = T(0);
        for (long long j = lo; j <= hi; ++j) {
            const long long p = base + j * HW;
            acc += gy[p] * y[p] / scale[p];
        }
        gx[i] = gy[i] * pow(scale[i], -beta) - T(2) * alpha * beta * x[i] * acc;
    }
}

template __global__ void lrn_forward_kernel<float>(const float*, float*, float*, long long, long long,
                                                   long long, int, int, float, float, float);
template __global__ void lrn_forward_kernel<double>(const double*, double*, double*, long long, long long,
                                                    long long, int, int, double, double, double);
template __global__ void lrn_backward_kernel<float>(const float*, const float*, const float*, const float*,
                                                    float*, long long, long long, long long, int, int,
                                                    float, float);
template __global__ void lrn_backward_kernel<double>(const double*, const double*, const double*,
                                                     const double*, double*, long long, long long,
                                                     long long, int, int, double, double);
