// Builds without cairo: the passkey test writes its JSON table and skips the figure.
#include "infer/passkey.h"

namespace moba::infer {

std::vector<std::string> write_passkey_figure(const PasskeyTable&, const std::string&,
                                              const std::string&) {
  return {};
}

}  // namespace moba::infer
