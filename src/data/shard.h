// The on-disk format of prepared data: token shards and their document indexes
// (docs/data.md, "Format"). All integers are little-endian.
//
// Shard `<split>-NNNNN.bin`: a 64-byte header, then num_tokens ids of dtype bytes each.
//   0  char[8] magic "MOBATOKS"     24 u64 num_tokens
//   8  u32 version (1)              32 u64 checksum: FNV-1a 64 of the id bytes, then
//   12 u32 dtype (bytes per id:            of header bytes [0, 32)
//          2 = uint16, 4 = uint32)  40..63 zero
//   16 u32 vocab_size (every id is < vocab_size)
//   20 u32 reserved (0)
// Index `<split>-NNNNN.idx`: a 64-byte header, then num_docs + 1 u64 token offsets
// (0 = o[0] < o[1] < ... < o[num_docs] = num_tokens; document i is [o[i], o[i+1])).
//   0  char[8] magic "MOBAIDX1"     24 u64 num_tokens (the shard's)
//   8  u32 version (1)              32 u64 checksum: FNV-1a 64 of the offset bytes,
//   12 u32 reserved (0)                    then of header bytes [0, 32)
//   16 u64 num_docs                 40..63 zero
// (The checksum hashes the payload first so that a writer can stream it.)
#pragma once

#include <cstdint>
#include <cstdio>
#include <span>
#include <string>
#include <vector>

#include "core/noncopyable.h"

namespace moba::data {

inline constexpr uint32_t kFormatVersion = 1;
inline constexpr size_t kHeaderBytes = 64;

// Writes one shard and its index as documents arrive; finish() completes the headers
// (count and checksum) so that a shard left behind by a crash fails every check.
class ShardWriter : NonCopyable {
 public:
  ShardWriter(std::string bin_path, std::string idx_path, int dtype_bytes, int64_t vocab_size);
  ~ShardWriter();

  void add_document(std::span<const int32_t> ids);  // ids in [0, vocab_size), non-empty
  void finish();
  int64_t tokens() const { return static_cast<int64_t>(offsets_.back()); }
  int64_t documents() const { return static_cast<int64_t>(offsets_.size()) - 1; }

 private:
  std::string bin_path_, idx_path_;
  int dtype_bytes_;
  int64_t vocab_size_;
  std::FILE* bin_ = nullptr;
  uint64_t checksum_ = 0;
  std::vector<uint64_t> offsets_{0};
  std::vector<unsigned char> buf_;
};

// A validated, memory-mapped shard with its index. Every failed check throws moba::Error
// naming the file: missing, truncated or longer than its header says, bad magic, version
// or dtype, checksum mismatch, an id >= vocab_size, offsets out of order.
class MappedShard {
 public:
  // `verify` recomputes the checksums and scans every id (a read of the whole file);
  // without it only the headers and sizes are checked.
  static MappedShard open(const std::string& bin_path, const std::string& idx_path, bool verify);
  MappedShard() = default;
  ~MappedShard();
  MappedShard(MappedShard&& o) noexcept { *this = std::move(o); }
  MappedShard& operator=(MappedShard&& o) noexcept;

  int64_t tokens() const { return num_tokens_; }
  int64_t vocab_size() const { return vocab_size_; }
  int dtype_bytes() const { return dtype_bytes_; }
  const std::vector<uint64_t>& offsets() const { return offsets_; }  // (documents + 1)
  const std::string& path() const { return bin_path_; }
  // Copies ids [begin, begin + out.size()) into out.
  void read(int64_t begin, std::span<int32_t> out) const;

 private:
  std::string bin_path_;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  const unsigned char* ids_ = nullptr;
  int64_t num_tokens_ = 0;
  int64_t vocab_size_ = 0;
  int dtype_bytes_ = 0;
  std::vector<uint64_t> offsets_;
};

}  // namespace moba::data
