#include "dist/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>
#include <thread>

#include "core/cuda_check.cuh"
#include "core/error.h"

namespace moba::dist {

namespace {

using Clock = std::chrono::steady_clock;

// Polling period while an operation is in flight: short next to a collective of
// megabytes, long enough not to keep a core busy.
constexpr auto kPoll = std::chrono::microseconds(50);

}  // namespace

NcclId nccl_unique_id() {
  static_assert(sizeof(ncclUniqueId) == sizeof(NcclId::bytes), "NCCL unique id size");
  ncclUniqueId id;
  const ncclResult_t r = ncclGetUniqueId(&id);
  MOBA_CHECK(r == ncclSuccess, "NCCL ncclGetUniqueId failed: ", ncclGetErrorString(r));
  NcclId out;
  std::memcpy(out.bytes.data(), &id, sizeof(id));
  return out;
}

NcclCommunicator::NcclCommunicator(const NcclId& id, int rank, int size, int device,
                                   std::chrono::milliseconds timeout)
    : rank_(rank), size_(size), device_(device), timeout_(timeout) {
  MOBA_CHECK(size >= 1 && rank >= 0 && rank < size, "NCCL communicator: rank ", rank,
             " outside a group of ", size);
  MOBA_CHECK(timeout.count() > 0, "NCCL communicator: the timeout must be > 0 ms");
  // A constructor that throws runs no destructor: free what was made (fail() has aborted
  // the NCCL communicator already).
  try {
    CUDA_CHECK(cudaSetDevice(device));
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    CUDA_CHECK(cudaMalloc(&scratch_, sizeof(float)));
    ncclUniqueId uid;
    std::memcpy(&uid, id.bytes.data(), sizeof(uid));
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;  // calls return ncclInProgress instead of blocking: settle() polls
    ncclComm_t comm = nullptr;
    const ncclResult_t r = ncclCommInitRankConfig(&comm, size, uid, rank, &config);
    comm_ = comm;
    if (r != ncclInProgress) check(r, "ncclCommInitRankConfig");
    settle("ncclCommInitRankConfig");
  } catch (...) {
    if (comm_) ncclCommAbort(comm_);
    if (scratch_) cudaFree(scratch_);
    if (stream_) cudaStreamDestroy(stream_);
    throw;
  }
}

NcclCommunicator::~NcclCommunicator() {
  // Destructors do not throw: results are ignored. A healthy communicator is finalized
  // (flushing what was issued) then destroyed; a broken one was aborted already.
  if (comm_ && broken_.empty()) {
    cudaSetDevice(device_);
    ncclCommFinalize(comm_);
    ncclResult_t state = ncclInProgress;
    const auto t0 = Clock::now();
    while (ncclCommGetAsyncError(comm_, &state) == ncclSuccess && state == ncclInProgress &&
           Clock::now() - t0 < timeout_)
      std::this_thread::sleep_for(kPoll);
    if (state == ncclSuccess) ncclCommDestroy(comm_);
    else ncclCommAbort(comm_);
  }
  if (scratch_) cudaFree(scratch_);
  if (stream_) cudaStreamDestroy(stream_);
}

void NcclCommunicator::fail(const std::string& why) {
  broken_ = why;
  if (comm_) ncclCommAbort(comm_);  // unblocks this rank's kernels stuck in the collective
  comm_ = nullptr;
  throw Error(broken_);
}

void NcclCommunicator::check(int result, const char* call) {
  const auto r = static_cast<ncclResult_t>(result);
  if (r == ncclSuccess || r == ncclInProgress) return;
  const char* last = comm_ ? ncclGetLastError(comm_) : nullptr;
  fail(std::string("NCCL ") + call + " failed on rank " + std::to_string(rank_) + " of " +
       std::to_string(size_) + ": " + ncclGetErrorString(r) +
       (last && *last ? std::string(" (") + last + ")" : std::string()));
}

void NcclCommunicator::settle(const char* call) {
  const auto t0 = Clock::now();
  for (;;) {
    ncclResult_t state = ncclSuccess;
    check(ncclCommGetAsyncError(comm_, &state), "ncclCommGetAsyncError");
    if (state == ncclSuccess) return;
    check(state, call);  // an error: throws
    if (Clock::now() - t0 > timeout_)
      fail(std::string("NCCL ") + call + " did not complete within " +
           std::to_string(timeout_.count()) + " ms on rank " + std::to_string(rank_) + " of " +
           std::to_string(size_) + " (a rank missing or hung); the communicator is aborted");
    std::this_thread::sleep_for(kPoll);
  }
}

void NcclCommunicator::wait(const char* call) {
  const auto t0 = Clock::now();
  for (;;) {
    const cudaError_t q = cudaStreamQuery(stream_);
    if (q == cudaSuccess) return;
    if (q != cudaErrorNotReady)
      fail(std::string("CUDA error ") + cudaGetErrorName(q) + " waiting for NCCL " + call +
           " on rank " + std::to_string(rank_));
    ncclResult_t state = ncclSuccess;
    check(ncclCommGetAsyncError(comm_, &state), "ncclCommGetAsyncError");
    check(state, call);
    if (Clock::now() - t0 > timeout_)
      fail(std::string("NCCL ") + call + " did not complete within " +
           std::to_string(timeout_.count()) + " ms on rank " + std::to_string(rank_) + " of " +
           std::to_string(size_) + " (a rank missing or hung); the communicator is aborted");
    std::this_thread::sleep_for(kPoll);
  }
}

int NcclCommunicator::broadcast_root(int root) const {
  MOBA_CHECK(root >= 0 && root < size_, "NCCL broadcast: root ", root, " outside a group of ",
             size_);
  return root;
}

void NcclCommunicator::collective(void* data, size_t count, int type, int root,
                                  const char* what) {
  MOBA_CHECK(broken_.empty(), broken_);
  CUDA_CHECK(cudaSetDevice(device_));
  const auto t = static_cast<ncclDataType_t>(type);
  check(root < 0 ? ncclAllReduce(data, data, count, t, ncclSum, comm_, stream_)
                 : ncclBroadcast(data, data, count, t, root, comm_, stream_),
        what);
  settle(what);
  wait(what);
}

void NcclCommunicator::all_reduce_sum(std::span<float> d) {
  collective(d.data(), d.size(), ncclFloat32, -1, "ncclAllReduce");
}
void NcclCommunicator::all_reduce_sum(std::span<double> d) {
  collective(d.data(), d.size(), ncclFloat64, -1, "ncclAllReduce");
}
void NcclCommunicator::broadcast(std::span<float> d, int root) {
  collective(d.data(), d.size(), ncclFloat32, broadcast_root(root), "ncclBroadcast");
}
void NcclCommunicator::broadcast(std::span<double> d, int root) {
  collective(d.data(), d.size(), ncclFloat64, broadcast_root(root), "ncclBroadcast");
}
// NCCL has no barrier: an all-reduce of one float is one (every rank must contribute).
void NcclCommunicator::barrier() { collective(scratch_, 1, ncclFloat32, -1, "barrier"); }

}  // namespace moba::dist
