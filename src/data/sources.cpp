#include "data/sources.h"

#include <algorithm>
#include <filesystem>

#include "core/error.h"
#include "data/text.h"

namespace moba::data {

namespace fs = std::filesystem;

std::vector<Source> collect_sources(const std::vector<std::string>& inputs) {
  std::vector<Source> out;
  for (const std::string& in : inputs) {
    std::error_code ec;
    const fs::path root(in);
    const auto st = fs::status(root, ec);
    MOBA_CHECK(!ec && fs::exists(st), "input '", in, "' does not exist");
    if (fs::is_regular_file(st)) {
      out.push_back({root.string(), root.filename().generic_string(),
                     static_cast<int64_t>(fs::file_size(root))});
      continue;
    }
    MOBA_CHECK(fs::is_directory(st), "input '", in, "' is neither a file nor a folder");
    for (auto it = fs::recursive_directory_iterator(root, ec); !ec && it != fs::end(it);
         it.increment(ec)) {
      const fs::path& p = it->path();
      if (p.filename().string().rfind('.', 0) == 0) {  // hidden: .git, .DS_Store, ...
        if (it->is_directory()) it.disable_recursion_pending();
        continue;
      }
      if (!it->is_regular_file()) continue;
      out.push_back({p.string(), fs::relative(p, root).generic_string(),
                     static_cast<int64_t>(it->file_size())});
    }
    MOBA_CHECK(!ec, "cannot list folder '", in, "': ", ec.message());
  }
  // Names go into manifest.json, which is JSON and so UTF-8: refuse a name that is not,
  // before any work (it once failed at the very end, as an internal error).
  for (const Source& s : out) {
    std::string shown;
    MOBA_CHECK(append_valid_utf8(s.path, shown) == 0, "input file name '", shown,
               "' is not valid UTF-8 (shown with U+FFFD for the invalid bytes); rename it, or "
               "move it out of the input");
  }
  std::sort(out.begin(), out.end(),
            [](const Source& a, const Source& b) { return a.name < b.name; });
  for (size_t i = 1; i < out.size(); ++i)
    MOBA_CHECK(out[i].name != out[i - 1].name, "two documents are named '", out[i].name,
               "': '", out[i - 1].path, "' and '", out[i].path,
               "' (names decide the split; give the folders separately)");
  return out;
}

}  // namespace moba::data
