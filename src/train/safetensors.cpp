#include "train/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/safe_io.h"

namespace moba::train {
namespace {

static_assert(sizeof(float) == 4, "safetensors F32 is 4 bytes");

void put_u64_le(char* p, uint64_t x) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<char>((x >> (8 * i)) & 0xff);
}
uint64_t get_u64_le(const unsigned char* p) {
  uint64_t x = 0;
  for (int i = 7; i >= 0; --i) x = (x << 8) | p[i];
  return x;
}

// bfloat16: the high half of a float32.
float bf16_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// IEEE half: 1 sign, 5 exponent, 10 mantissa bits; subnormals, inf and NaN included.
float f16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf or NaN
  } else if (exp == 0) {
    if (mant == 0) {
      bits = sign;  // signed zero
    } else {        // subnormal: normalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400) == 0);
      bits = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((mant & 0x3ff) << 13);
    }
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

bool little_endian() {
  const uint16_t one = 1;
  unsigned char b;
  std::memcpy(&b, &one, 1);
  return b == 1;
}

}  // namespace

void write_safetensors(const std::string& path, const std::vector<TensorView>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  MOBA_CHECK(little_endian(), "safetensors writer: this machine is not little-endian");
  nlohmann::json header = nlohmann::json::object();
  uint64_t offset = 0;
  for (const TensorView& t : tensors) {
    size_t n = 1;
    for (int64_t s : t.shape) n *= static_cast<size_t>(s);
    MOBA_CHECK(n == t.data.size(), "safetensors: tensor ", t.name, " has ", t.data.size(),
               " elements, its shape needs ", n);
    const uint64_t bytes = t.data.size() * sizeof(float);
    header[t.name] = {
        {"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');

  // Created exclusively and removed on failure; the error carries the OS's reason.
  NewFile f(path);
  char len[8];
  put_u64_le(len, text.size());
  f.write(len, 8);
  f.write(text.data(), text.size());
  for (const TensorView& t : tensors) f.write(t.data.data(), t.data.size() * sizeof(float));
  f.close();
}

SafetensorsFile read_safetensors(const std::string& path, bool convert_half) {
  require_regular_file(path, "checkpoint file");
  std::ifstream f(path, std::ios::binary);
  MOBA_CHECK(f.good(), "cannot read checkpoint file '", path, "'");
  f.seekg(0, std::ios::end);
  const uint64_t size = static_cast<uint64_t>(f.tellg());
  f.seekg(0);
  MOBA_CHECK(size >= 8, "checkpoint file '", path, "' is truncated (", size, " bytes)");
  unsigned char len[8];
  f.read(reinterpret_cast<char*>(len), 8);
  const uint64_t n = get_u64_le(len);
  MOBA_CHECK(n >= 2 && n <= size - 8 && n < (100ULL << 20), "checkpoint file '", path,
             "' is corrupt or truncated: header length ", n, " in a file of ", size, " bytes");
  std::string text(n, '\0');
  f.read(text.data(), static_cast<std::streamsize>(n));
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    MOBA_CHECK(false, "checkpoint file '", path, "' is corrupt: its header is not JSON (", e.what(),
               ")");
  }
  MOBA_CHECK(header.is_object(), "checkpoint file '", path,
             "' is corrupt: header is not an object");
  const uint64_t data_bytes = size - 8 - n;
  SafetensorsFile out;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  try {
    for (auto& [name, desc] : header.items()) {
      if (name == "__metadata__") {
        for (auto& [k, v] : desc.items()) out.metadata[k] = v.get<std::string>();
        continue;
      }
      const std::string dtype = desc.at("dtype").get<std::string>();
      const bool half = convert_half && (dtype == "BF16" || dtype == "F16");
      MOBA_CHECK(dtype == "F32" || half, "checkpoint file '", path, "': tensor ", name,
                 " has dtype ", dtype,
                 convert_half ? ", only F32, BF16 and F16 are read" : ", only F32 is read");
      const uint64_t width = half ? 2 : sizeof(float);
      LoadedTensor t;
      t.shape = desc.at("shape").get<std::vector<int64_t>>();
      const auto off = desc.at("data_offsets").get<std::vector<uint64_t>>();
      uint64_t elems = 1;
      for (int64_t s : t.shape) {
        MOBA_CHECK(s >= 0, "checkpoint file '", path, "': tensor ", name, " has a negative dim");
        // A shape like [2^62 + 1] must not wrap around into a small, plausible size.
        MOBA_CHECK(!__builtin_mul_overflow(elems, static_cast<uint64_t>(s), &elems) &&
                       elems <= data_bytes / width,
                   "checkpoint file '", path, "' is corrupt: tensor ", name, " has shape ",
                   desc.at("shape").dump(), ", more values than the file's ", data_bytes,
                   " data bytes hold");
      }
      MOBA_CHECK(off.size() == 2 && off[0] <= off[1] && off[1] <= data_bytes &&
                     off[1] - off[0] == elems * width,
                 "checkpoint file '", path, "' is corrupt or truncated: tensor ", name,
                 " claims bytes [", off.size() == 2 ? off[0] : 0, ", ",
                 off.size() == 2 ? off[1] : 0, ") of ", data_bytes, " for ", elems, " ", dtype,
                 " values");
      t.data.resize(elems);
      f.seekg(static_cast<std::streamoff>(8 + n + off[0]));
      if (half) {
        std::vector<uint16_t> raw(elems);
        f.read(reinterpret_cast<char*>(raw.data()), static_cast<std::streamsize>(off[1] - off[0]));
        for (uint64_t i = 0; i < elems; ++i)
          t.data[i] = dtype == "BF16" ? bf16_to_float(raw[i]) : f16_to_float(raw[i]);
      } else {
        f.read(reinterpret_cast<char*>(t.data.data()),
               static_cast<std::streamsize>(off[1] - off[0]));
      }
      MOBA_CHECK(f.good(), "checkpoint file '", path, "': reading tensor ", name, " failed");
      ranges.emplace_back(off[0], off[1]);
      out.tensors.emplace(name, std::move(t));
    }
  } catch (const nlohmann::json::exception& e) {
    MOBA_CHECK(false, "checkpoint file '", path, "' is corrupt: bad header entry (", e.what(), ")");
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    MOBA_CHECK(ranges[i].first >= ranges[i - 1].second, "checkpoint file '", path,
               "' is corrupt: tensor byte ranges overlap");
  return out;
}

}  // namespace moba::train
