// The safetensors format (Hugging Face), float32 tensors (reading can also convert BF16 and
// F16 to float32, for Hugging Face checkpoints): an 8-byte little-endian
// header length N, N bytes of JSON {"name": {"dtype": "F32", "shape": [...],
// "data_offsets": [begin, end]}, ..., "__metadata__": {"key": "string"}}, padded with
// spaces to a multiple of 8, then the raw data (offsets relative to its start).
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace moba::train {

struct TensorView {
  std::string name;
  std::vector<int64_t> shape;
  std::span<const float> data;
};

struct LoadedTensor {
  std::vector<int64_t> shape;
  std::vector<float> data;
};

struct SafetensorsFile {
  std::map<std::string, LoadedTensor> tensors;
  std::map<std::string, std::string> metadata;
};

// Writes the file at `path` (not atomically: the checkpoint writes into a fresh folder)
// and flushes it to disk. Throws moba::Error naming the file.
void write_safetensors(const std::string& path, const std::vector<TensorView>& tensors,
                       const std::map<std::string, std::string>& metadata);

// Reads and checks a file: header size and JSON, dtype F32, shapes against byte ranges,
// ranges inside the file and not overlapping. Any problem: moba::Error naming the file.
// convert_half = true also reads BF16 and F16 tensors, converted to float32 exactly (every
// half value is a float); any other dtype is an error naming the tensor and the dtype.
SafetensorsFile read_safetensors(const std::string& path, bool convert_half = false);

}  // namespace moba::train
