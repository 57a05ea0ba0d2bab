// XLA FFI handlers that run NVIDIA cuSPARSELt 2:4 sparse GEMMs on XLA's CUDA stream.
//
// Host-only C++17 (no nvcc): built by `python -m jaxnm.kernels.cusparselt.build` against
// jax's FFI headers (jax.ffi.include_dir()), the cuSPARSELt wheel's cusparseLt.h and the
// CUDA runtime headers. Python side: jaxnm/kernels/cusparselt/ (library.py registers these
// symbols with jax.ffi.register_ffi_target for platform "CUDA").
//
// One layout is used for every call, the one PyTorch's semi-structured path uses:
//   A: the sparse operand, a row-major (rows, cols) matrix that is 2:4 along cols (the
//      contraction axis), compressed with cusparseLtSpMMACompress2 (isSparseA = 1, op N);
//   B: a row-major dense matrix, either (n, cols) used transposed (transpose_b = true) or
//      (cols, n) used as is (transpose_b = false);
//   D = A · op(B), (rows, n), stored column-major with ld = rows, i.e. the row-major (n, rows)
//      matrix op(B)ᵀ · Aᵀ.
// jaxnm/kernels/cusparselt/layout.py holds the same mapping in pure JAX and its tests.
//
// Handlers:
//   jaxnm_cslt_compress(dense) -> (compressed u8[bytes], invalid s32[])   attrs: check
//   jaxnm_cslt_matmul(compressed, b) -> d                                   attrs: rows, cols,
//                                                                          transpose_b, alg_id
//   jaxnm_cslt_search(compressed, b) -> (d, alg_id s32[])                   attrs: rows, cols,
//                                                                          transpose_b
// Plain C entry points (ctypes): jaxnm_cslt_version, jaxnm_cslt_compressed_size.

#include <cuda_runtime_api.h>
#include <cusparseLt.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr uint32_t kAlignment = 16;  // bytes; XLA buffers are at least this aligned

std::string StatusText(cusparseStatus_t status) {
  return std::string(cusparseLtGetErrorName(status)) + ": " + cusparseLtGetErrorString(status);
}

#define JAXNM_CSLT(expr)                                                                \
  do {                                                                                  \
    cusparseStatus_t jaxnm_status_ = (expr);                                            \
    if (jaxnm_status_ != CUSPARSE_STATUS_SUCCESS) {                                     \
      return ffi::Error::Internal(std::string("cuSPARSELt call `") + #expr +           \
                                  "` failed: " + StatusText(jaxnm_status_));            \
    }                                                                                   \
  } while (0)

#define JAXNM_CUDA(expr)                                                                \
  do {                                                                                  \
    cudaError_t jaxnm_err_ = (expr);                                                    \
    if (jaxnm_err_ != cudaSuccess) {                                                    \
      return ffi::Error::Internal(std::string("CUDA call `") + #expr +                 \
                                  "` failed: " + cudaGetErrorString(jaxnm_err_));       \
    }                                                                                   \
  } while (0)

#define JAXNM_RETURN_IF_ERROR(expr)            \
  do {                                         \
    ffi::Error jaxnm_e_ = (expr);              \
    if (!jaxnm_e_.success()) return jaxnm_e_;  \
  } while (0)

// ---------------------------------------------------------------------------------------
// Data types
// ---------------------------------------------------------------------------------------

ffi::Error ToCudaType(ffi::DataType dtype, const char* what, cudaDataType* out) {
  switch (dtype) {
    case ffi::DataType::BF16: *out = CUDA_R_16BF; return ffi::Error::Success();
    case ffi::DataType::F16: *out = CUDA_R_16F; return ffi::Error::Success();
    case ffi::DataType::S8: *out = CUDA_R_8I; return ffi::Error::Success();
    case ffi::DataType::F8E4M3FN: *out = CUDA_R_8F_E4M3; return ffi::Error::Success();
    case ffi::DataType::S32: *out = CUDA_R_32I; return ffi::Error::Success();
    case ffi::DataType::F32: *out = CUDA_R_32F; return ffi::Error::Success();
    default:
      return ffi::Error::InvalidArgument(
          std::string("jaxnm cuSPARSELt: unsupported dtype (XLA type id ") +
          std::to_string(static_cast<int>(dtype)) + ") for " + what +
          "; supported: bfloat16, float16, int8, float8_e4m3fn (and int32/float32 outputs)");
  }
}

// Operand dtype -> compute type (cuSPARSELt >= 0.5.2 names).
cusparseComputeType ComputeType(cudaDataType ab) {
  return ab == CUDA_R_8I ? CUSPARSE_COMPUTE_32I : CUSPARSE_COMPUTE_32F;
}

// ---------------------------------------------------------------------------------------
// Per-device handles and the plan cache
// ---------------------------------------------------------------------------------------

struct DeviceState {
  cusparseLtHandle_t handle;
};

std::mutex g_mutex;  // guards the two maps below
std::map<int32_t, std::unique_ptr<DeviceState>> g_devices;

// Checks the compute capability (cuSPARSELt needs sm_80+) and returns the device's handle.
ffi::Error GetHandle(int32_t device, const cusparseLtHandle_t** handle) {
  std::lock_guard<std::mutex> lock(g_mutex);
  auto it = g_devices.find(device);
  if (it == g_devices.end()) {
    int major = 0, minor = 0;
    JAXNM_CUDA(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    JAXNM_CUDA(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
    if (major < 8) {
      return ffi::Error::InvalidArgument(
          "jaxnm cuSPARSELt needs a GPU of compute capability 8.0 (sm_80, Ampere) or newer; "
          "device " + std::to_string(device) + " is sm_" + std::to_string(major) +
          std::to_string(minor));
    }
    int previous = 0;
    JAXNM_CUDA(cudaGetDevice(&previous));
    JAXNM_CUDA(cudaSetDevice(device));  // cuSPARSELt binds a handle to the current device
    auto state = std::make_unique<DeviceState>();
    cusparseStatus_t status = cusparseLtInit(&state->handle);
    JAXNM_CUDA(cudaSetDevice(previous));
    if (status != CUSPARSE_STATUS_SUCCESS) {
      return ffi::Error::Internal("cusparseLtInit failed on device " + std::to_string(device) +
                                  ": " + StatusText(status));
    }
    it = g_devices.emplace(device, std::move(state)).first;
  }
  *handle = &it->second->handle;
  return ffi::Error::Success();
}

ffi::Error SparseDescriptor(const cusparseLtHandle_t* handle, int64_t rows, int64_t cols,
                            cudaDataType type, cusparseLtMatDescriptor_t* descr) {
  JAXNM_CSLT(cusparseLtStructuredDescriptorInit(handle, descr, rows, cols, /*ld=*/cols,
                                                kAlignment, type, CUSPARSE_ORDER_ROW,
                                                CUSPARSELT_SPARSITY_50_PERCENT));
  return ffi::Error::Success();
}

// Everything that determines a matmul plan.
struct PlanKey {
  int32_t device;
  int64_t rows, cols, n;
  bool transpose_b;
  int ab_type, d_type;
  int64_t alg_id;
  bool operator<(const PlanKey& o) const {
    return std::tie(device, rows, cols, n, transpose_b, ab_type, d_type, alg_id) <
           std::tie(o.device, o.rows, o.cols, o.n, o.transpose_b, o.ab_type, o.d_type,
                    o.alg_id);
  }
};

struct Plan {
  cusparseLtMatDescriptor_t a, b, d;
  cusparseLtMatmulDescriptor_t matmul;
  cusparseLtMatmulAlgSelection_t alg_sel;
  cusparseLtMatmulPlan_t plan;
  size_t workspace = 0;
};

std::map<PlanKey, std::unique_ptr<Plan>> g_plans;

ffi::Error BuildPlan(const cusparseLtHandle_t* h, const PlanKey& key, cudaDataType ab,
                     cudaDataType dt, Plan* p) {
  JAXNM_RETURN_IF_ERROR(SparseDescriptor(h, key.rows, key.cols, ab, &p->a));
  // B row-major: (n, cols) used transposed, or (cols, n) used as is.
  int64_t b_rows = key.transpose_b ? key.n : key.cols;
  int64_t b_cols = key.transpose_b ? key.cols : key.n;
  JAXNM_CSLT(cusparseLtDenseDescriptorInit(h, &p->b, b_rows, b_cols, /*ld=*/b_cols,
                                           kAlignment, ab, CUSPARSE_ORDER_ROW));
  // D (rows, n) column-major, ld = rows: the row-major (n, rows) output.
  JAXNM_CSLT(cusparseLtDenseDescriptorInit(h, &p->d, key.rows, key.n, /*ld=*/key.rows,
                                           kAlignment, dt, CUSPARSE_ORDER_COL));
  JAXNM_CSLT(cusparseLtMatmulDescriptorInit(
      h, &p->matmul, CUSPARSE_OPERATION_NON_TRANSPOSE,
      key.transpose_b ? CUSPARSE_OPERATION_TRANSPOSE : CUSPARSE_OPERATION_NON_TRANSPOSE,
      &p->a, &p->b, &p->d, &p->d, ComputeType(ab)));
  JAXNM_CSLT(cusparseLtMatmulAlgSelectionInit(h, &p->alg_sel, &p->matmul,
                                              CUSPARSELT_MATMUL_ALG_DEFAULT));
  if (key.alg_id >= 0) {
    int alg = static_cast<int>(key.alg_id);
    int max_id = 0;
    JAXNM_CSLT(cusparseLtMatmulAlgGetAttribute(h, &p->alg_sel,
                                               CUSPARSELT_MATMUL_ALG_CONFIG_MAX_ID, &max_id,
                                               sizeof(max_id)));
    if (alg > max_id) {
      return ffi::Error::InvalidArgument("jaxnm cuSPARSELt: alg_id=" + std::to_string(alg) +
                                         " exceeds this problem's maximum algorithm id " +
                                         std::to_string(max_id));
    }
    JAXNM_CSLT(cusparseLtMatmulAlgSetAttribute(h, &p->alg_sel, CUSPARSELT_MATMUL_ALG_CONFIG_ID,
                                               &alg, sizeof(alg)));
  }
  JAXNM_CSLT(cusparseLtMatmulPlanInit(h, &p->plan, &p->matmul, &p->alg_sel));
  JAXNM_CSLT(cusparseLtMatmulGetWorkspace(h, &p->plan, &p->workspace));
  return ffi::Error::Success();
}

// Validates the operands against the static attributes and returns the cached plan.
ffi::Error GetPlan(int32_t device, const ffi::AnyBuffer& compressed, const ffi::AnyBuffer& b,
                   const ffi::AnyBuffer& d, int64_t rows, int64_t cols, bool transpose_b,
                   int64_t alg_id, const cusparseLtHandle_t** handle, Plan** plan) {
  JAXNM_RETURN_IF_ERROR(GetHandle(device, handle));
  auto bd = b.dimensions();
  auto dd = d.dimensions();
  if (bd.size() != 2 || dd.size() != 2) {
    return ffi::Error::InvalidArgument("jaxnm cuSPARSELt matmul: B and D must be 2-D");
  }
  int64_t n = transpose_b ? bd[0] : bd[1];
  int64_t b_contract = transpose_b ? bd[1] : bd[0];
  if (b_contract != cols || dd[0] != n || dd[1] != rows) {
    return ffi::Error::InvalidArgument(
        "jaxnm cuSPARSELt matmul: shapes do not fit: A is (" + std::to_string(rows) + ", " +
        std::to_string(cols) + "), B is (" + std::to_string(bd[0]) + ", " +
        std::to_string(bd[1]) + ") with transpose_b=" + (transpose_b ? "true" : "false") +
        ", D is (" + std::to_string(dd[0]) + ", " + std::to_string(dd[1]) + ")");
  }
  cudaDataType ab, dt;
  JAXNM_RETURN_IF_ERROR(ToCudaType(b.element_type(), "the dense operand", &ab));
  JAXNM_RETURN_IF_ERROR(ToCudaType(d.element_type(), "the output", &dt));
  PlanKey key{device, rows, cols, n, transpose_b, static_cast<int>(ab), static_cast<int>(dt),
              alg_id};
  std::lock_guard<std::mutex> lock(g_mutex);
  auto it = g_plans.find(key);
  if (it == g_plans.end()) {
    auto p = std::make_unique<Plan>();
    JAXNM_RETURN_IF_ERROR(BuildPlan(*handle, key, ab, dt, p.get()));
    it = g_plans.emplace(key, std::move(p)).first;
  }
  *plan = it->second.get();
  size_t needed = 0, scratch = 0;
  JAXNM_CSLT(cusparseLtSpMMACompressedSize2(*handle, &(*plan)->a, &needed, &scratch));
  if (compressed.size_bytes() < needed) {
    return ffi::Error::InvalidArgument(
        "jaxnm cuSPARSELt matmul: the compressed operand has " +
        std::to_string(compressed.size_bytes()) + " bytes, cuSPARSELt needs " +
        std::to_string(needed));
  }
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------

ffi::Error CompressImpl(cudaStream_t stream, int32_t device, ffi::ScratchAllocator scratch,
                        ffi::AnyBuffer dense, ffi::Result<ffi::AnyBuffer> out,
                        ffi::Result<ffi::Buffer<ffi::S32>> invalid, bool check) {
  const cusparseLtHandle_t* handle = nullptr;
  JAXNM_RETURN_IF_ERROR(GetHandle(device, &handle));
  auto dims = dense.dimensions();
  if (dims.size() != 2) {
    return ffi::Error::InvalidArgument("jaxnm cuSPARSELt compress: the operand must be 2-D");
  }
  cudaDataType type;
  JAXNM_RETURN_IF_ERROR(ToCudaType(dense.element_type(), "the sparse operand", &type));
  cusparseLtMatDescriptor_t descr;
  JAXNM_RETURN_IF_ERROR(SparseDescriptor(handle, dims[0], dims[1], type, &descr));
  size_t size = 0, buffer_size = 0;
  JAXNM_CSLT(cusparseLtSpMMACompressedSize2(handle, &descr, &size, &buffer_size));
  if (out->size_bytes() < size) {
    cusparseLtMatDescriptorDestroy(&descr);
    return ffi::Error::InvalidArgument(
        "jaxnm cuSPARSELt compress: output buffer has " + std::to_string(out->size_bytes()) +
        " bytes, cuSPARSELt needs " + std::to_string(size) +
        " (jaxnm.kernels.cusparselt.compressed_nbytes under-estimated it: please report)");
  }
  void* buffer = nullptr;
  if (buffer_size > 0) {
    auto allocated = scratch.Allocate(buffer_size, 256);
    if (!allocated.has_value()) {
      cusparseLtMatDescriptorDestroy(&descr);
      return ffi::Error::Internal("jaxnm cuSPARSELt compress: scratch allocation of " +
                                  std::to_string(buffer_size) + " bytes failed");
    }
    buffer = *allocated;
  }
  JAXNM_CUDA(cudaMemsetAsync(invalid->typed_data(), 0, sizeof(int32_t), stream));
  if (check) {
    // Writes a nonzero value into `invalid` when `dense` is not 2:4 along its columns.
    JAXNM_CSLT(cusparseLtSpMMAPruneCheck2(handle, &descr, /*isSparseA=*/1,
                                          CUSPARSE_OPERATION_NON_TRANSPOSE,
                                          dense.untyped_data(), invalid->typed_data(), stream));
  }
  JAXNM_CSLT(cusparseLtSpMMACompress2(handle, &descr, /*isSparseA=*/1,
                                      CUSPARSE_OPERATION_NON_TRANSPOSE, dense.untyped_data(),
                                      out->untyped_data(), buffer, stream));
  JAXNM_CSLT(cusparseLtMatDescriptorDestroy(&descr));
  return ffi::Error::Success();
}

ffi::Error RunMatmul(cudaStream_t stream, int32_t device, ffi::ScratchAllocator& scratch,
                     const ffi::AnyBuffer& compressed, const ffi::AnyBuffer& b,
                     ffi::AnyBuffer d, int64_t rows, int64_t cols, bool transpose_b,
                     int64_t alg_id, bool search, int32_t* found_alg) {
  const cusparseLtHandle_t* handle = nullptr;
  Plan* plan = nullptr;
  JAXNM_RETURN_IF_ERROR(GetPlan(device, compressed, b, d, rows, cols, transpose_b,
                                search ? -1 : alg_id, &handle, &plan));
  void* workspace = nullptr;
  if (plan->workspace > 0) {
    auto allocated = scratch.Allocate(plan->workspace, 256);
    if (!allocated.has_value()) {
      return ffi::Error::Internal("jaxnm cuSPARSELt matmul: scratch allocation of " +
                                  std::to_string(plan->workspace) + " bytes failed");
    }
    workspace = *allocated;
  }
  float alpha = 1.0f, beta = 0.0f;
  cudaStream_t streams[1] = {stream};
  if (search) {
    // Times the candidate kernels on this stream and keeps the fastest in the plan's
    // algorithm selection (a fresh plan, not the cached one for alg_id >= 0).
    Plan local;
    PlanKey key{device, rows, cols, transpose_b ? b.dimensions()[0] : b.dimensions()[1],
                transpose_b, 0, 0, -1};
    cudaDataType ab, dt;
    JAXNM_RETURN_IF_ERROR(ToCudaType(b.element_type(), "the dense operand", &ab));
    JAXNM_RETURN_IF_ERROR(ToCudaType(d.element_type(), "the output", &dt));
    JAXNM_RETURN_IF_ERROR(BuildPlan(handle, key, ab, dt, &local));
    JAXNM_CSLT(cusparseLtMatmulSearch(handle, &local.plan, &alpha, compressed.untyped_data(),
                                      b.untyped_data(), &beta, d.untyped_data(),
                                      d.untyped_data(), workspace, streams, 1));
    int alg = 0;
    JAXNM_CSLT(cusparseLtMatmulAlgGetAttribute(handle, &local.alg_sel,
                                               CUSPARSELT_MATMUL_ALG_CONFIG_ID, &alg,
                                               sizeof(alg)));
    JAXNM_CUDA(cudaStreamSynchronize(stream));  // `local` is destroyed below
    cusparseLtMatmulPlanDestroy(&local.plan);
    cusparseLtMatmulAlgSelectionDestroy(&local.alg_sel);
    cusparseLtMatDescriptorDestroy(&local.a);
    cusparseLtMatDescriptorDestroy(&local.b);
    cusparseLtMatDescriptorDestroy(&local.d);
    *found_alg = alg;
    return ffi::Error::Success();
  }
  JAXNM_CSLT(cusparseLtMatmul(handle, &plan->plan, &alpha, compressed.untyped_data(),
                              b.untyped_data(), &beta, d.untyped_data(), d.untyped_data(),
                              workspace, streams, 1));
  return ffi::Error::Success();
}

ffi::Error MatmulImpl(cudaStream_t stream, int32_t device, ffi::ScratchAllocator scratch,
                      ffi::AnyBuffer compressed, ffi::AnyBuffer b,
                      ffi::Result<ffi::AnyBuffer> d, int64_t rows, int64_t cols,
                      bool transpose_b, int64_t alg_id) {
  return RunMatmul(stream, device, scratch, compressed, b, *d, rows, cols, transpose_b, alg_id,
                   /*search=*/false, nullptr);
}

ffi::Error SearchImpl(cudaStream_t stream, int32_t device, ffi::ScratchAllocator scratch,
                      ffi::AnyBuffer compressed, ffi::AnyBuffer b,
                      ffi::Result<ffi::AnyBuffer> d, ffi::Result<ffi::Buffer<ffi::S32>> alg,
                      int64_t rows, int64_t cols, bool transpose_b) {
  int32_t found = -1;
  JAXNM_RETURN_IF_ERROR(RunMatmul(stream, device, scratch, compressed, b, *d, rows, cols,
                                  transpose_b, -1, /*search=*/true, &found));
  JAXNM_CUDA(cudaMemcpyAsync(alg->typed_data(), &found, sizeof(found), cudaMemcpyHostToDevice,
                             stream));
  JAXNM_CUDA(cudaStreamSynchronize(stream));  // `found` lives on this stack frame
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxnmCsltCompress, CompressImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::DeviceOrdinal>()
                                  .Ctx<ffi::ScratchAllocator>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<bool>("check"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxnmCsltMatmul, MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::DeviceOrdinal>()
                                  .Ctx<ffi::ScratchAllocator>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("rows")
                                  .Attr<int64_t>("cols")
                                  .Attr<bool>("transpose_b")
                                  .Attr<int64_t>("alg_id"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxnmCsltSearch, SearchImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::DeviceOrdinal>()
                                  .Ctx<ffi::ScratchAllocator>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<int64_t>("rows")
                                  .Attr<int64_t>("cols")
                                  .Attr<bool>("transpose_b"));

extern "C" {

// cuSPARSELt version of the loaded library (major*1000000 + minor*100 + patch, the 0.10
// header's encoding) or -1; needs no GPU.
int64_t jaxnm_cslt_version() {
  int major = 0, minor = 0, patch = 0;
  if (cusparseLtGetProperty(MAJOR_VERSION, &major) != CUSPARSE_STATUS_SUCCESS ||
      cusparseLtGetProperty(MINOR_VERSION, &minor) != CUSPARSE_STATUS_SUCCESS ||
      cusparseLtGetProperty(PATCH_LEVEL, &patch) != CUSPARSE_STATUS_SUCCESS) {
    return -1;
  }
  return int64_t{major} * 1000000 + int64_t{minor} * 100 + patch;
}

// Header version this file was compiled against.
int64_t jaxnm_cslt_header_version() { return CUSPARSELT_VERSION; }

// Compressed bytes of a row-major (rows, cols) sparse operand of `dtype_code` (a
// cudaDataType) on `device`; needs a GPU. Returns 0 on success, else a cusparseStatus_t or
// -1 (CUDA error) / -2 (GPU older than sm_80).
int jaxnm_cslt_compressed_size(int device, int64_t rows, int64_t cols, int dtype_code,
                               int64_t* size) {
  const cusparseLtHandle_t* handle = nullptr;
  ffi::Error err = GetHandle(device, &handle);
  if (!err.success()) return err.errc() == ffi::ErrorCode::kInvalidArgument ? -2 : -1;
  cusparseLtMatDescriptor_t descr;
  cusparseStatus_t status = cusparseLtStructuredDescriptorInit(
      handle, &descr, rows, cols, cols, kAlignment, static_cast<cudaDataType>(dtype_code),
      CUSPARSE_ORDER_ROW, CUSPARSELT_SPARSITY_50_PERCENT);
  if (status != CUSPARSE_STATUS_SUCCESS) return static_cast<int>(status);
  size_t bytes = 0, buffer = 0;
  status = cusparseLtSpMMACompressedSize2(handle, &descr, &bytes, &buffer);
  cusparseLtMatDescriptorDestroy(&descr);
  *size = static_cast<int64_t>(bytes);
  return static_cast<int>(status);
}

}  // extern "C"
