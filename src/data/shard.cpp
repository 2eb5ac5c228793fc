#include "data/shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cstring>
#include <fstream>
#include <utility>

#include "core/error.h"
#include "core/safe_io.h"
#include "data/hash.h"

namespace moba::data {

static_assert(std::endian::native == std::endian::little,
              "the shard format is little-endian and read by plain loads");

namespace {

constexpr char kShardMagic[8] = {'M', 'O', 'B', 'A', 'T', 'O', 'K', 'S'};
constexpr char kIndexMagic[8] = {'M', 'O', 'B', 'A', 'I', 'D', 'X', '1'};

template <typename T>
void put(unsigned char* h, size_t at, T v) { std::memcpy(h + at, &v, sizeof(T)); }
template <typename T>
T get(const unsigned char* h, size_t at) {
  T v;
  std::memcpy(&v, h + at, sizeof(T));
  return v;
}

void write_all(std::FILE* f, const void* p, size_t n, const std::string& path) {
  MOBA_CHECK(std::fwrite(p, 1, n, f) == n, path, ": write failed: ", std::strerror(errno));
}

bool all_zero(const unsigned char* p, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (p[i]) return false;
  return true;
}

}  // namespace

ShardWriter::ShardWriter(std::string bin_path, std::string idx_path, int dtype_bytes,
                         int64_t vocab_size)
    : bin_path_(std::move(bin_path)), idx_path_(std::move(idx_path)),
      dtype_bytes_(dtype_bytes), vocab_size_(vocab_size), checksum_(kFnvBasis) {
  MOBA_CHECK(dtype_bytes == 2 || dtype_bytes == 4, "shard dtype must be 2 or 4 bytes, got ",
             dtype_bytes);
  MOBA_CHECK(vocab_size >= 1 && vocab_size <= (dtype_bytes == 2 ? 65536 : INT32_MAX),
             "vocabulary size ", vocab_size, " does not fit ", dtype_bytes, "-byte ids");
  bin_ = std::fopen(bin_path_.c_str(), "wb");
  MOBA_CHECK(bin_, bin_path_, ": cannot create");
  const unsigned char zeros[kHeaderBytes] = {};
  write_all(bin_, zeros, kHeaderBytes, bin_path_);  // the header is written by finish()
}

ShardWriter::~ShardWriter() {
  if (bin_) std::fclose(bin_);
}

void ShardWriter::add_document(std::span<const int32_t> ids) {
  MOBA_CHECK(!ids.empty(), bin_path_, ": empty document");
  buf_.resize(ids.size() * static_cast<size_t>(dtype_bytes_));
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    MOBA_CHECK(id >= 0 && id < vocab_size_, bin_path_, ": token id ", id,
               " outside the vocabulary [0, ", vocab_size_, ")");
    if (dtype_bytes_ == 2) put(buf_.data(), 2 * i, static_cast<uint16_t>(id));
    else put(buf_.data(), 4 * i, static_cast<uint32_t>(id));
  }
  checksum_ = fnv1a64(buf_.data(), buf_.size(), checksum_);
  write_all(bin_, buf_.data(), buf_.size(), bin_path_);
  offsets_.push_back(offsets_.back() + ids.size());
}

void ShardWriter::finish() {
  MOBA_CHECK(bin_, bin_path_, ": finish() called twice");
  unsigned char h[kHeaderBytes] = {};
  std::memcpy(h, kShardMagic, 8);
  put<uint32_t>(h, 8, kFormatVersion);
  put<uint32_t>(h, 12, static_cast<uint32_t>(dtype_bytes_));
  put<uint32_t>(h, 16, static_cast<uint32_t>(vocab_size_));
  put<uint64_t>(h, 24, offsets_.back());
  put<uint64_t>(h, 32, fnv1a64(h, 32, checksum_));
  MOBA_CHECK(std::fseek(bin_, 0, SEEK_SET) == 0, bin_path_, ": seek failed");
  write_all(bin_, h, kHeaderBytes, bin_path_);
  MOBA_CHECK(std::fclose(bin_) == 0, bin_path_, ": close failed: ", std::strerror(errno));
  bin_ = nullptr;

  std::FILE* idx = std::fopen(idx_path_.c_str(), "wb");
  MOBA_CHECK(idx, idx_path_, ": cannot create");
  unsigned char ih[kHeaderBytes] = {};
  std::memcpy(ih, kIndexMagic, 8);
  put<uint32_t>(ih, 8, kFormatVersion);
  put<uint64_t>(ih, 16, offsets_.size() - 1);
  put<uint64_t>(ih, 24, offsets_.back());
  const size_t obytes = offsets_.size() * sizeof(uint64_t);
  put<uint64_t>(ih, 32, fnv1a64(ih, 32, fnv1a64(offsets_.data(), obytes)));
  write_all(idx, ih, kHeaderBytes, idx_path_);
  write_all(idx, offsets_.data(), obytes, idx_path_);
  MOBA_CHECK(std::fclose(idx) == 0, idx_path_, ": close failed: ", std::strerror(errno));
}

MappedShard& MappedShard::operator=(MappedShard&& o) noexcept {
  if (this != &o) {
    if (map_) munmap(map_, map_bytes_);
    bin_path_ = std::move(o.bin_path_);
    map_ = std::exchange(o.map_, nullptr);
    map_bytes_ = std::exchange(o.map_bytes_, 0);
    ids_ = std::exchange(o.ids_, nullptr);
    num_tokens_ = o.num_tokens_;
    vocab_size_ = o.vocab_size_;
    dtype_bytes_ = o.dtype_bytes_;
    offsets_ = std::move(o.offsets_);
  }
  return *this;
}

MappedShard::~MappedShard() {
  if (map_) munmap(map_, map_bytes_);
}

MappedShard MappedShard::open(const std::string& bin_path, const std::string& idx_path,
                              bool verify) {
  MappedShard s;
  s.bin_path_ = bin_path;
  // O_NONBLOCK and the fstat check: a FIFO or a device is refused instead of blocking.
  const int fd = ::open(bin_path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  MOBA_CHECK(fd >= 0, bin_path, ": cannot open shard (", std::strerror(errno), ")");
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    MOBA_CHECK(false, bin_path, ": shard must be a regular file");
  }
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size < kHeaderBytes) {
    ::close(fd);
    MOBA_CHECK(false, bin_path, ": truncated shard: ", size, " bytes, shorter than the ",
               kHeaderBytes, "-byte header");
  }
  void* map = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  MOBA_CHECK(map != MAP_FAILED, bin_path, ": mmap failed (", std::strerror(errno), ")");
  s.map_ = map;
  s.map_bytes_ = size;
  const auto* h = static_cast<const unsigned char*>(map);
  MOBA_CHECK(std::memcmp(h, kShardMagic, 8) == 0, bin_path,
             ": not a moba token shard (bad magic; the header is corrupt or the file is "
             "something else)");
  const auto version = get<uint32_t>(h, 8);
  MOBA_CHECK(version == kFormatVersion, bin_path, ": shard format version ", version,
             ", this build reads version ", kFormatVersion);
  s.dtype_bytes_ = static_cast<int>(get<uint32_t>(h, 12));
  MOBA_CHECK(s.dtype_bytes_ == 2 || s.dtype_bytes_ == 4, bin_path, ": corrupt header: dtype ",
             s.dtype_bytes_, " bytes per id (must be 2 or 4)");
  s.vocab_size_ = get<uint32_t>(h, 16);
  MOBA_CHECK(s.vocab_size_ >= 1, bin_path, ": corrupt header: vocabulary size 0");
  MOBA_CHECK(get<uint32_t>(h, 20) == 0 && all_zero(h + 40, kHeaderBytes - 40), bin_path,
             ": corrupt header: reserved bytes are not zero");
  const auto n = get<uint64_t>(h, 24);
  const uint64_t want = kHeaderBytes + n * static_cast<uint64_t>(s.dtype_bytes_);
  MOBA_CHECK(n <= (size - kHeaderBytes) / s.dtype_bytes_ && size == want, bin_path,
             size < want ? ": truncated shard: " : ": shard longer than its header says: ", size,
             " bytes, the header says ", kHeaderBytes, " + ", n, " ids x ", s.dtype_bytes_,
             " bytes");
  s.num_tokens_ = static_cast<int64_t>(n);
  s.ids_ = h + kHeaderBytes;
  if (verify) {
    const size_t bytes = n * static_cast<size_t>(s.dtype_bytes_);
    const uint64_t sum = fnv1a64(h, 32, fnv1a64(s.ids_, bytes));
    MOBA_CHECK(sum == get<uint64_t>(h, 32), bin_path,
               ": checksum mismatch (the file is corrupt): stored ", get<uint64_t>(h, 32),
               ", computed ", sum);
    uint32_t max_id = 0;
    for (size_t i = 0; i < n; ++i)
      max_id = std::max(max_id, s.dtype_bytes_ == 2 ? uint32_t{get<uint16_t>(s.ids_, 2 * i)}
                                                    : get<uint32_t>(s.ids_, 4 * i));
    MOBA_CHECK(n == 0 || max_id < s.vocab_size_, bin_path, ": token id ", max_id,
               " is not below the header's vocabulary size ", s.vocab_size_);
  }

  // The index is small: read it whole and check every offset.
  const std::string raw = read_regular_file(idx_path, "document index");
  const std::vector<unsigned char> bytes(raw.begin(), raw.end());
  MOBA_CHECK(bytes.size() >= kHeaderBytes, idx_path, ": truncated index: ", bytes.size(),
             " bytes, shorter than the header");
  const unsigned char* ih = bytes.data();
  MOBA_CHECK(std::memcmp(ih, kIndexMagic, 8) == 0, idx_path, ": not a moba document index "
             "(bad magic)");
  MOBA_CHECK(get<uint32_t>(ih, 8) == kFormatVersion, idx_path, ": index format version ",
             get<uint32_t>(ih, 8), ", this build reads version ", kFormatVersion);
  const auto docs = get<uint64_t>(ih, 16);
  const size_t obytes = bytes.size() - kHeaderBytes;
  MOBA_CHECK(obytes % 8 == 0 && obytes / 8 == docs + 1, idx_path, obytes / 8 < docs + 1
             ? ": truncated index: " : ": index longer than its header says: ", bytes.size(),
             " bytes for ", docs, " documents");
  MOBA_CHECK(get<uint64_t>(ih, 24) == n, idx_path, ": index is for ", get<uint64_t>(ih, 24),
             " tokens but ", bin_path, " holds ", n);
  const uint64_t isum = fnv1a64(ih, 32, fnv1a64(ih + kHeaderBytes, obytes));
  MOBA_CHECK(isum == get<uint64_t>(ih, 32), idx_path,
             ": checksum mismatch (the file is corrupt)");
  s.offsets_.resize(docs + 1);
  std::memcpy(s.offsets_.data(), ih + kHeaderBytes, obytes);
  MOBA_CHECK(s.offsets_.front() == 0 && s.offsets_.back() == n, idx_path,
             ": offsets do not span the shard");
  for (size_t i = 0; i < docs; ++i)
    MOBA_CHECK(s.offsets_[i] < s.offsets_[i + 1], idx_path, ": offsets not increasing at document ", i);
  return s;
}

void MappedShard::read(int64_t begin, std::span<int32_t> out) const {
  MOBA_CHECK(begin >= 0 && begin + static_cast<int64_t>(out.size()) <= num_tokens_, bin_path_,
             ": read of [", begin, ", ", begin + static_cast<int64_t>(out.size()),
             ") outside [0, ", num_tokens_, ")");
  if (dtype_bytes_ == 2) {
    for (size_t i = 0; i < out.size(); ++i) out[i] = get<uint16_t>(ids_, 2 * (begin + i));
  } else {
    for (size_t i = 0; i < out.size(); ++i)
      out[i] = static_cast<int32_t>(get<uint32_t>(ids_, 4 * (begin + i)));
  }
}

}  // namespace moba::data
