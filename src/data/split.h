// The train/validation split: a pure function of a document's name, so that the same
// document always lands on the same side (re-running `prepare`, adding documents, or
// moving the folder changes nothing for the documents already there) and no document is
// ever on both sides.
#pragma once

#include <cstdint>
#include <string_view>

#include "data/hash.h"

namespace moba::data {

enum class Split { train = 0, val = 1 };

inline const char* split_name(Split s) { return s == Split::val ? "val" : "train"; }

// h = splitmix64(fnv1a64(name)) of the document name (its path relative to the input
// folder, '/'-separated, or the file name for a file given directly).
inline uint64_t name_hash(std::string_view name) { return splitmix64(fnv1a64(name)); }

// Validation when the top 53 bits of the name hash, read as a number in [0, 1), are below
// `val_fraction`: each document is in validation with probability val_fraction,
// independently of the others.
inline Split split_of(std::string_view name, double val_fraction) {
  return unit_interval(name_hash(name)) < val_fraction ? Split::val : Split::train;
}

// Documents are written to the shards of their split in the order of this key (ties
// broken by name): a fixed shuffle, so that neighbours in the token stream (what packed
// batches join) are unrelated documents rather than the same author's next book.
inline uint64_t order_key(std::string_view name) { return splitmix64(name_hash(name) ^ 0x5bd1e995ULL); }

}  // namespace moba::data
