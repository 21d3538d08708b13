// The few CUDA built-ins our kernels use, defined for the host C++ compiler, so
// that kernels/*.cu compile unchanged with g++ or clang++ and run on the CPU
// (what nvcc's device emulation did before CUDA 3.0).
//
// A CUDA thread is an ordinary function call here: the launcher
// (kernels/host/launcher.cpp) sets blockIdx and threadIdx, calls the kernel,
// and moves on to the next thread.  Our kernels use no shared memory, no
// __syncthreads and no atomics, so running the threads one after another, in
// any order, is one of the schedules a GPU may pick: the results must match.
// (A kernel that needs any of those would not compile here: nothing below
// defines them.)

#pragma once

#include <cmath>
#include <cstdio>  // printf works inside a kernel, as in CUDA

// Qualifiers: on the host every function is a host function.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
// __restrict__ is understood by g++ and clang++ as it is by nvcc.

// The index built-ins.  CUDA gives each thread its own; here they are
// thread-local variables that the launcher sets before calling the kernel
// for one thread (thread-local so that two Python threads may each run a grid).
struct uint3 { unsigned int x, y, z; };
struct dim3 { unsigned int x, y, z; };
static thread_local uint3 threadIdx;  // this thread within its block
static thread_local uint3 blockIdx;   // this block within the grid
static thread_local dim3 blockDim;    // threads per block
static thread_local dim3 gridDim;     // blocks in the grid

// CUDA's min and max are overloaded for each integer and floating type
// (not templates: both arguments have the same type).
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
static inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline float min(float a, float b) { return std::fmin(a, b); }
static inline float max(float a, float b) { return std::fmax(a, b); }
static inline double min(double a, double b) { return std::fmin(a, b); }
static inline double max(double a, double b) { return std::fmax(a, b); }

// Math (only what the kernels call): in CUDA, pow(float, float) is the float function powf, and isnan is
// overloaded for float and double.  std:: has the same overloads; without these
// lines pow(float, float) would pick the C library's double pow.
using std::isnan;
using std::pow;
