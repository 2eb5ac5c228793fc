// Reading a whole file back as bytes, for the readers that need no more than that (a run's
// run.json, a tokenizer folder's files). safe_io.h's read_regular_file is the stricter one:
// it also refuses FIFOs and folders, and names the OS's reason.
#pragma once

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "core/error.h"

namespace moba {

// The content of `path`; moba::Error "cannot read 'PATH'" when it cannot be opened.
inline std::string read_text_file(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary);
  MOBA_CHECK(f.good(), "cannot read '", path.string(), "'");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace moba
