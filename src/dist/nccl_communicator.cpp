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
  if (staging_) cudaFree(staging_);
  if (stream_) cudaStreamDestroy(stream_);
}

void NcclCommunicator::fail(const std::string& why, bool timed_out) {
  broken_ = why;
  if (comm_) ncclCommAbort(comm_);  // unblocks this rank's kernels stuck in the collective
  comm_ = nullptr;
  if (timed_out) throw CollectiveTimeout(broken_);
  throw Error(broken_);
}

void* NcclCommunicator::host_staging(size_t bytes) {
  if (bytes > staging_bytes_) {
    if (staging_) CUDA_CHECK(cudaFree(staging_));
    staging_ = nullptr;
    staging_bytes_ = 0;
    CUDA_CHECK(cudaMalloc(&staging_, bytes));
    staging_bytes_ = bytes;
  }
  return staging_;
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
           std::to_string(size_) + " (a rank missing or hung); the communicator is aborted",
           true);
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
           std::to_string(size_) + " (a rank missing or hung); the communicator is aborted",
           true);
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
void NcclCommunicator::gather(const void* send, size_t count, void* recv, size_t recv_count,
                              int type) {
  MOBA_CHECK(broken_.empty(), broken_);
  MOBA_CHECK(recv_count == count * static_cast<size_t>(size_), "NCCL all_gather on rank ",
             rank_, ": a receive buffer of ", recv_count, " elements for ", size_,
             " ranks x ", count);
  CUDA_CHECK(cudaSetDevice(device_));
  check(ncclAllGather(send, recv, count, static_cast<ncclDataType_t>(type), comm_, stream_),
        "ncclAllGather");
  settle("ncclAllGather");
  wait("ncclAllGather");
}

void NcclCommunicator::exchange(const void* send, size_t send_total,
                                std::span<const size_t> send_counts, void* recv,
                                size_t recv_total, std::span<const size_t> recv_counts,
                                int type, size_t elem_bytes) {
  MOBA_CHECK(broken_.empty(), broken_);
  const auto R = static_cast<size_t>(size_);
  MOBA_CHECK(send_counts.size() == R && recv_counts.size() == R, "NCCL all_to_all_v on rank ",
             rank_, ": ", send_counts.size(), " send and ", recv_counts.size(),
             " receive counts; it needs one of each per rank (", size_, ")");
  size_t sent = 0, received = 0;
  for (size_t p = 0; p < R; ++p) {
    sent += send_counts[p];
    received += recv_counts[p];
  }
  MOBA_CHECK(sent == send_total && received == recv_total, "NCCL all_to_all_v on rank ", rank_,
             ": send counts sum to ", sent, " for ", send_total,
             " elements, receive counts to ", received, " for ", recv_total);
  CUDA_CHECK(cudaSetDevice(device_));
  const auto t = static_cast<ncclDataType_t>(type);
  // One group: NCCL matches each send with its peer's receive and runs them together, so
  // the order of the calls below cannot deadlock.
  check(ncclGroupStart(), "ncclGroupStart");
  size_t s_at = 0, r_at = 0;
  for (size_t p = 0; p < R; ++p) {
    if (send_counts[p] > 0)
      check(ncclSend(static_cast<const char*>(send) + s_at * elem_bytes, send_counts[p], t,
                     static_cast<int>(p), comm_, stream_),
            "ncclSend");
    if (recv_counts[p] > 0)
      check(ncclRecv(static_cast<char*>(recv) + r_at * elem_bytes, recv_counts[p], t,
                     static_cast<int>(p), comm_, stream_),
            "ncclRecv");
    s_at += send_counts[p];
    r_at += recv_counts[p];
  }
  check(ncclGroupEnd(), "ncclGroupEnd");
  settle("all_to_all_v (ncclSend/ncclRecv)");
  wait("all_to_all_v (ncclSend/ncclRecv)");
}

void NcclCommunicator::all_gather(std::span<const float> s, std::span<float> r) {
  gather(s.data(), s.size(), r.data(), r.size(), ncclFloat32);
}
void NcclCommunicator::all_gather(std::span<const double> s, std::span<double> r) {
  gather(s.data(), s.size(), r.data(), r.size(), ncclFloat64);
}
void NcclCommunicator::all_gather(std::span<const int32_t> s, std::span<int32_t> r) {
  gather(s.data(), s.size(), r.data(), r.size(), ncclInt32);
}
void NcclCommunicator::all_to_all_v(std::span<const float> s, std::span<const size_t> sc,
                                    std::span<float> r, std::span<const size_t> rc) {
  exchange(s.data(), s.size(), sc, r.data(), r.size(), rc, ncclFloat32, sizeof(float));
}
void NcclCommunicator::all_to_all_v(std::span<const double> s, std::span<const size_t> sc,
                                    std::span<double> r, std::span<const size_t> rc) {
  exchange(s.data(), s.size(), sc, r.data(), r.size(), rc, ncclFloat64, sizeof(double));
}
void NcclCommunicator::all_to_all_v(std::span<const int32_t> s, std::span<const size_t> sc,
                                    std::span<int32_t> r, std::span<const size_t> rc) {
  exchange(s.data(), s.size(), sc, r.data(), r.size(), rc, ncclInt32, sizeof(int32_t));
}

void NcclCommunicator::all_reduce_sum_host(std::span<double> d) {
  MOBA_CHECK(broken_.empty(), broken_);
  if (d.empty()) return barrier();  // every rank still takes part
  CUDA_CHECK(cudaSetDevice(device_));
  auto* dev = static_cast<double*>(host_staging(d.size_bytes()));
  CUDA_CHECK(cudaMemcpy(dev, d.data(), d.size_bytes(), cudaMemcpyHostToDevice));
  all_reduce_sum(std::span<double>(dev, d.size()));
  CUDA_CHECK(cudaMemcpy(d.data(), dev, d.size_bytes(), cudaMemcpyDeviceToHost));
}

void NcclCommunicator::all_gather_host(std::span<const int32_t> s, std::span<int32_t> r) {
  MOBA_CHECK(broken_.empty(), broken_);
  MOBA_CHECK(r.size() == s.size() * static_cast<size_t>(size_), "NCCL all_gather on rank ",
             rank_, ": a receive buffer of ", r.size(), " elements for ", size_, " ranks x ",
             s.size());
  CUDA_CHECK(cudaSetDevice(device_));
  auto* dev = static_cast<int32_t*>(host_staging(s.size_bytes() + r.size_bytes()));
  CUDA_CHECK(cudaMemcpy(dev, s.data(), s.size_bytes(), cudaMemcpyHostToDevice));
  gather(dev, s.size(), dev + s.size(), r.size(), ncclInt32);
  CUDA_CHECK(cudaMemcpy(r.data(), dev + s.size(), r.size_bytes(), cudaMemcpyDeviceToHost));
}

void NcclCommunicator::all_reduce_sum_async(std::span<float> d, CUevent_st* after) {
  MOBA_CHECK(broken_.empty(), broken_);
  CUDA_CHECK(cudaSetDevice(device_));
  if (after) CUDA_CHECK(cudaStreamWaitEvent(stream_, after, 0));
  check(ncclAllReduce(d.data(), d.data(), d.size(), ncclFloat32, ncclSum, comm_, stream_),
        "ncclAllReduce");
  settle("ncclAllReduce");  // enqueued (a non-blocking communicator may still be issuing)
}

void NcclCommunicator::wait_pending() {
  MOBA_CHECK(broken_.empty(), broken_);
  CUDA_CHECK(cudaSetDevice(device_));
  wait("ncclAllReduce (gradient buckets)");
}

// NCCL has no barrier: an all-reduce of one float is one (every rank must contribute).
void NcclCommunicator::barrier() { collective(scratch_, 1, ncclFloat32, -1, "barrier"); }

}  // namespace moba::dist
