// Finding the documents: every regular file under the input folders (recursively) and
// every input file given directly, one document per file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moba::data {

struct Source {
  std::string path;  // where to read it
  std::string name;  // its identity: the path relative to the input folder ('/'-separated),
                     // or the file name of a file given directly; the split hashes this
  int64_t bytes = 0;
};

// Sorted by name. Files and folders whose name starts with '.' are skipped; symbolic
// links to files are followed, links to folders are not. Throws moba::Error for an input
// that does not exist, or two documents with the same name (both paths named).
std::vector<Source> collect_sources(const std::vector<std::string>& inputs);

}  // namespace moba::data
