// Built when SentencePiece is not installed (e.g. a machine without apt): byte-level
// data still works, BPE is an error that says what to install.
#include "core/error.h"
#include "data/tokenizer.h"

namespace moba::data {
namespace {
[[noreturn]] void no_sentencepiece() {
  ::moba::detail::fail(__FILE__, __LINE__, "BPE needs SentencePiece, which this build "
                       "lacks: apt-get install libsentencepiece-dev and rebuild");
}
}  // namespace

bool have_sentencepiece() { return false; }
std::unique_ptr<Tokenizer> bpe_tokenizer(const std::string&, bool) { no_sentencepiece(); }
std::unique_ptr<Tokenizer> bpe_tokenizer_from_file(const std::string&) { no_sentencepiece(); }
std::string train_bpe(const std::function<bool(std::string&)>&, const BpeTrainOptions&) {
  no_sentencepiece();
}

}  // namespace moba::data
