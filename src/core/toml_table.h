// Parsing TOML (toml++) with errors that name the file and the line; the keys of the
// project's configurations are read through their schemas (core/schema_io.h). Header-only;
// a target that includes it links moba_tomlplusplus.
#pragma once

#include <toml++/toml.h>

#include <string>

#include "core/error.h"

namespace moba {

// Parses TOML text; a syntax error is a moba::Error "ORIGIN: TOML syntax error at line L,
// column C: ...".
inline toml::table parse_toml(const std::string& text, const std::string& origin) {
  try {
    return toml::parse(text, origin);
  } catch (const toml::parse_error& e) {
    MOBA_CHECK(false, origin, ": TOML syntax error at line ", e.source().begin.line, ", column ",
               e.source().begin.column, ": ", e.description());
  }
}

}  // namespace moba
